"""What the extract job writes in its output directory (formats in `schemas.records`):

    <split>-SSSSS-of-NNNNN.tfrecord   one tf.train.Example per image          WriteSplits
    errors.parquet                    one row per image that could not be used  WriteErrorTable
    vocab.txt, metadata.json          written once, after the records             WriteMetadata

Counts for metadata.json travel as `Tally` elements (images and captions per split, errors per class, dataset
statistics) and are summed by one CombineFn; metadata.json is written from that report, the vocabulary and the
names of the written shards, after every record is written.
"""
import posixpath
import typing

import apache_beam as beam
import numpy as np

from beam_jobs import runtime, sinks
from beam_jobs.elements import Tally
from beam_jobs.extract.reading import WorkItem
from beam_jobs.extract.vocabulary import VOCAB_SPLIT, SumCounts, VocabularyInfo
from beam_jobs.runtime import counter
from schemas import backbones, captions, fileio, records, tables
from schemas.records import DatasetKeys, MetadataKeys, SplitKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary
from trainer.features import FeatureSpec


def _example_class():
    import tensorflow as tf
    return tf.train.Example


class EncodeRecords(beam.DoFn):
    """(WorkItem, features) -> tf.train.Example on the output named after the item's split."""

    def __init__(self):
        self._vocabulary = None
        self._progress = None

    def setup(self):
        self._progress = runtime.ProgressLog("images featurized")

    def process(self, element, vocabulary: VocabularyInfo, total: int):
        item, features = element
        if self._vocabulary is None or self._vocabulary.tokens != vocabulary.tokens:
            self._vocabulary = Vocabulary(vocabulary.tokens)
        caption_ids = [self._vocabulary.encode(captions.with_boundaries(caption.split()))
                       for caption in item.captions]
        counter(f"records_{item.split}").inc()
        self._progress.add(total=total)
        for position, (name, caption_count) in enumerate(item.origins):
            yield beam.pvalue.TaggedOutput(DATASET_TALLIES, Tally(Tally.DATASET_IMAGES, name, 1))
            yield beam.pvalue.TaggedOutput(DATASET_TALLIES, Tally(Tally.DATASET_CAPTIONS, name, caption_count))
            if position:
                yield beam.pvalue.TaggedOutput(DATASET_TALLIES, Tally(Tally.DATASET_DUPLICATES, name, 1))
        yield beam.pvalue.TaggedOutput(item.split, records.encode_example(
            item.image_id, item.split, features, list(item.captions), caption_ids))


DATASET_TALLIES = "dataset tallies"  # not a split name (no spaces in those)


class _Written(typing.NamedTuple):
    files: beam.PCollection  # str: the record shards written
    tallies: beam.PCollection  # Tally: images and captions per split


@beam.ptransform_fn
@beam.typehints.with_input_types(typing.Tuple[WorkItem, typing.Any])
def WriteSplits(featured, vocabulary, total, output_dir: str, splits: list, num_shards: int):  # pylint: disable=invalid-name
    """(WorkItem, features or `records.SpatialFeatures`) -> TFRecord shards per split, given the vocabulary (one
    `VocabularyInfo`) and the number of items (for progress)."""
    encoded = featured | "EncodeRecords" >> beam.ParDo(
        EncodeRecords(), beam.pvalue.AsSingleton(vocabulary), beam.pvalue.AsSingleton(total)).with_outputs(
            DATASET_TALLIES, *splits)
    files, tallies = [], [encoded[DATASET_TALLIES]]
    for split in splits:
        examples = encoded[split]
        files.append(examples | f"Write[{split}]" >> sinks.WriteTFRecordShards(
            records.shard_prefix(output_dir, split), beam.coders.ProtoCoder(_example_class()),
            records.RECORD_SUFFIX, num_shards))
        tallies.append(examples | f"Tally[{split}]" >> beam.FlatMap(_split_tallies, split))
    return _Written(files=tuple(files) | "Files" >> beam.Flatten(),
                    tallies=tuple(tallies) | "Tallies" >> beam.Flatten())


def _split_tallies(example, split: str):
    yield Tally(Tally.SPLIT_IMAGES, split, 1)
    yield Tally(Tally.SPLIT_CAPTIONS, split, len(example.features.feature[records.CAPTIONS].bytes_list.value))


@beam.ptransform_fn
def WriteErrorTable(errors, path: str):  # pylint: disable=invalid-name
    """Error rows -> one Parquet file at ``path``; returns their tallies (one per error class)."""
    _ = (errors
         | "Records" >> beam.Map(tables.as_record)
         | "Parquet" >> sinks.WriteParquetShards(path, tables.ERROR_SCHEMA, num_shards=1, shard_name_template=""))
    return errors | "Tallies" >> beam.Map(lambda row: Tally(Tally.ERROR, row.error, 1))


class SumTallies(SumCounts):
    """Tallies -> {(kind, name): total}."""

    def counts_of(self, tally: Tally):
        return (((tally.kind, tally.name), tally.value),)


class MetadataSettings(typing.NamedTuple):
    """What metadata.json records about how the features were made."""
    output_dir: str
    splits: tuple
    features: FeatureSpec  # the extractor (its weights_sha256 is the one the launcher found)
    feature_dim: int
    min_word_count: int
    vocab_from_file: bool
    max_caption_words: int = captions.DEFAULT_MAX_CAPTION_WORDS  # longer captions were left out
    int8_model: typing.Optional[dict] = None  # openvino-int8: the model's quantization.json
    datasets: tuple = ()  # (name, layout, images_dir) per dataset, in order

    @property
    def grid_shape(self) -> typing.Optional[tuple]:
        """(g, g, D) when the records hold grids."""
        return (self.features.grid, self.features.grid, self.feature_dim) if self.features.grid else None


def _int8_summary(info: dict) -> dict:
    """What metadata.json keeps of an int8 model's quantization.json: the model's digest and how it was calibrated
    (not the names of the calibration photos)."""
    calibration = {key: value for key, value in info.get("calibration", {}).items() if key not in ("names", "skipped")}
    return {"bin_sha256": info.get("bin_sha256"), "weights_sha256": info.get("weights_sha256"),
            "calibration": calibration, "nncf_version": info.get("nncf_version"),
            "openvino_version": info.get("openvino_version")}


def metadata_from(settings: MetadataSettings, totals: dict, vocabulary: VocabularyInfo, written_files) -> dict:
    """metadata.json's content (`schemas.records.MetadataKeys`)."""
    splits = {split: {SplitKeys.IMAGES: totals.get((Tally.SPLIT_IMAGES, split), 0),
                      SplitKeys.CAPTIONS: totals.get((Tally.SPLIT_CAPTIONS, split), 0),
                      SplitKeys.FILES: posixpath.basename(records.split_pattern(settings.output_dir, split))}
              for split in settings.splits}
    errors_by_class = {name: value for (kind, name), value in sorted(totals.items()) if kind == Tally.ERROR}
    return {
        MetadataKeys.FORMAT_VERSION: records.FORMAT_VERSION,
        MetadataKeys.SPLITS: splits,
        MetadataKeys.IMAGES_FAILED: sum(errors_by_class.values()),
        MetadataKeys.ERRORS_BY_CLASS: errors_by_class,
        **{key: totals.get((Tally.STAT, key), 0) for key in (MetadataKeys.CAPTIONS_WITHOUT_IMAGE,
                                                             MetadataKeys.IMAGES_WITHOUT_SPLIT,
                                                             MetadataKeys.CAPTIONS_EMPTY,
                                                             MetadataKeys.CAPTIONS_TOO_LONG,
                                                             MetadataKeys.TRAIN_DUPLICATES_LEFT_OUT)},
        MetadataKeys.DATASETS: {name: {DatasetKeys.ORDER: order, DatasetKeys.LAYOUT: layout,
                                       DatasetKeys.IMAGES_DIR: images_dir,
                                       DatasetKeys.IMAGES: totals.get((Tally.DATASET_IMAGES, name), 0),
                                       DatasetKeys.CAPTIONS: totals.get((Tally.DATASET_CAPTIONS, name), 0),
                                       DatasetKeys.DUPLICATES: totals.get((Tally.DATASET_DUPLICATES, name), 0),
                                       DatasetKeys.LEFT_OUT_OF_TRAIN: totals.get((Tally.DATASET_LEFT_OUT, name), 0)}
                                for order, (name, layout, images_dir) in enumerate(settings.datasets)},
        MetadataKeys.VOCAB_SIZE: len(vocabulary.tokens),
        MetadataKeys.MIN_WORD_COUNT: settings.min_word_count,
        MetadataKeys.VOCAB_SOURCE: "vocab_file" if settings.vocab_from_file else f"{VOCAB_SPLIT} split",
        MetadataKeys.MAX_LENGTH: int(vocabulary.max_length),
        MetadataKeys.MAX_CAPTION_WORDS: settings.max_caption_words,
        MetadataKeys.FEATURE_DIM: settings.feature_dim,
        MetadataKeys.GRID_SHAPE: list(settings.grid_shape) if settings.grid_shape else None,
        MetadataKeys.GRID_BYTES_PER_IMAGE: int(np.prod(settings.grid_shape)) * records.GRID_DTYPE.itemsize
        if settings.grid_shape else 0,
        MetadataKeys.BACKBONE: settings.features.backbone,
        MetadataKeys.WEIGHTS: backbones.describe_weights(settings.features.weights),
        MetadataKeys.WEIGHTS_SHA256: settings.features.weights_sha256,
        MetadataKeys.IMAGE_SIZE: settings.features.image_size,
        MetadataKeys.PREPROCESSING: backbones.get_backbone(settings.features.backbone).preprocessing,
        MetadataKeys.INFERENCE_BACKEND: settings.features.backend,
        **({MetadataKeys.INT8_MODEL: _int8_summary(settings.int8_model)} if settings.int8_model else {}),
        MetadataKeys.RECORD_FILES: sorted(posixpath.basename(path) for path in written_files),
    }


def write_metadata(settings: MetadataSettings, totals: dict, vocabulary: VocabularyInfo, written_files) -> dict:
    """Writes vocab.txt and metadata.json (runs once, after the records are written)."""
    metadata = metadata_from(settings, totals, vocabulary, written_files)
    Vocabulary(vocabulary.tokens).save(fileio.join(settings.output_dir, VOCAB_FILE))
    fileio.write_json(fileio.join(settings.output_dir, records.METADATA_FILE), metadata)
    return metadata


@beam.ptransform_fn
def WriteMetadata(tallies, vocabulary, written_files, settings: MetadataSettings):  # pylint: disable=invalid-name
    """(tallies of every kind, one VocabularyInfo, written shard names) -> vocab.txt and metadata.json."""
    totals = tallies | "SumTallies" >> beam.CombineGlobally(SumTallies())
    return (totals
            | "Write" >> beam.Map(lambda report, vocabulary, files: write_metadata(settings, report, vocabulary, files),
                                  beam.pvalue.AsSingleton(vocabulary), beam.pvalue.AsList(written_files)))
