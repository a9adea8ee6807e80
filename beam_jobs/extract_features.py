"""Extract job: a captioned image dataset (Flickr8k layout) -> Xception features + tokenized captions.

    python -m beam_jobs.extract_features --dataset_dir DIR --output_dir OUT \
        [--weights imagenet|none|PATH] [--image_size 299] [--min_word_count 5] [Beam options]

(also installed as ``imcap-extract``). Writes, per split, sharded TFRecords with one tf.train.Example per image,
plus ``vocab.txt``, ``metadata.json`` and ``errors.parquet`` (see `schemas.records`).

The pipeline::

    captions file ─ReadCaptions─┐
    split lists ───ReadSplits───┼─CoGroupByKey─ClassifyImages─Reshuffle─PrepareImages─RunInference─EncodeRecords─Write[split]
    images dir ────ListImages───┘        │                  └─(train captions)─CountWords─Vocabulary ──┘ (side input)
                                          └─ errors (missing files, no captions) + PrepareImages errors ─WriteErrors

The vocabulary is counted inside the pipeline from the train split only (a CombineFn), so it scales with the
data and never sees dev/test words. Counts (images and captions per split, failures by class, captions whose
image is missing, images in no split) are computed by the pipeline and written to metadata.json after the
records are finalized; the launcher prints them with Beam's counters at the end.

Runner: `beam_jobs.runtime.LocalRunner` unless ``--runner`` says otherwise; every Beam option passes through.
"""
import argparse
import logging
import posixpath
import sys
import typing

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from beam_jobs import dataset, runtime
from beam_jobs.image_transforms import ERRORS, ExtractFeatures, PrepareImages, add_feature_flags, check_feature_flags
from beam_jobs.inference import FeatureExtractorHandler, check_backend, load_feature_model
from beam_jobs.runtime import counter
from schemas import backbones, captions, fileio as schema_fileio, images, records, tables
from schemas.records import MetadataKeys, SplitKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary

DEFAULT_MIN_WORD_COUNT = 5
VOCAB_SPLIT = "train"


class WorkItem(typing.NamedTuple):
    """One image to featurize: its id (file name), split, location and cleaned captions."""
    image_id: str
    split: str
    uri: str
    captions: tuple


class ExtractConfig(typing.NamedTuple):
    layout: dataset.DatasetLayout
    output_dir: str
    backbone: str
    weights: str
    weights_sha256: str
    image_size: int
    feature_dim: int
    min_batch_size: int
    max_batch_size: int
    min_word_count: int
    vocab_tokens: typing.Optional[tuple]  # from --vocab_file, else None (built from the train split)
    num_shards: int
    max_image_pixels: int
    inference_backend: str


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="imcap-extract", description=__doc__.split("\n\n")[0],
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner, --direct_running_mode, --project).")
    parser.add_argument("--dataset_dir", help="dataset in the Flickr8k layout (images dir, captions, split lists)")
    parser.add_argument("--images_dir", help="directory of the images (default: found in --dataset_dir)")
    parser.add_argument("--captions_file", help="Flickr8k.token.txt or Kaggle captions.txt (default: found)")
    parser.add_argument("--split_file", action="append", type=runtime.parse_key_value, metavar="NAME=PATH",
                        help="a split list, repeatable (default: Flickr_8k.{train,dev,test}Images.txt found)")
    parser.add_argument("--output_dir", required=True, help="where records, vocab.txt and metadata.json go")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the records, vocabulary, metadata and errors of an earlier run in --output_dir")
    parser.add_argument("--weights", default=backbones.IMAGENET,
                        help="imagenet (Keras download), none (random init, tests) or a Keras weights file")
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=sorted(backbones.BACKBONES))
    parser.add_argument("--image_size", type=runtime.positive_int, default=None,
                        help="backbone input size in pixels (default 299 for xception; at least 71)")
    add_feature_flags(parser)
    parser.add_argument("--min_word_count", type=runtime.positive_int, default=DEFAULT_MIN_WORD_COUNT,
                        help="words seen fewer times in the train captions map to <unk>")
    parser.add_argument("--vocab_file", help="use this vocab.txt instead of building one from the train split")
    parser.add_argument("--num_shards", type=runtime.non_negative_int, default=0,
                        help="TFRecord shards per split (0: the runner decides)")
    args, beam_args = parser.parse_known_args(argv)
    check_feature_flags(parser, args)
    split_files = dict(args.split_file) if args.split_file else None
    if args.split_file and len(split_files) != len(args.split_file):
        parser.error("--split_file: a split name is given twice")
    args.split_files = split_files
    return args, beam_args


def _existing_outputs(output_dir: str) -> list[str]:
    patterns = [schema_fileio.join(output_dir, f"*{records.RECORD_SUFFIX}"),
                schema_fileio.join(output_dir, records.METADATA_FILE),
                schema_fileio.join(output_dir, VOCAB_FILE), schema_fileio.join(output_dir, records.ERRORS_FILE)]
    found = []
    for pattern in patterns:
        found.extend(schema_fileio.glob(pattern))
    return found


def prepare(args: argparse.Namespace) -> ExtractConfig:
    """Everything checked on the launching machine before a worker starts; raises ValueError with what to fix."""
    layout = dataset.resolve_layout(args.dataset_dir, args.images_dir, args.captions_file, args.split_files)
    summary = dataset.validate_layout(layout)
    logging.info("dataset: images in %s; %d captions of %d images in %s (%s format); splits %s", layout.images_dir,
                 summary.caption_lines, summary.captioned_images, layout.captions_file, layout.caption_format,
                 summary.split_sizes)
    vocab_tokens = None
    if args.vocab_file:
        vocab_tokens = Vocabulary.load(args.vocab_file).tokens
    elif VOCAB_SPLIT not in layout.split_files:
        raise ValueError(f"the vocabulary is built from the '{VOCAB_SPLIT}' split, and there is none (splits: "
                         f"{', '.join(layout.split_files)}); add --split_file {VOCAB_SPLIT}=PATH or pass --vocab_file")

    existing = _existing_outputs(args.output_dir)
    if existing and not args.overwrite:
        raise ValueError(f"--output_dir {args.output_dir} already holds the output of a run ({len(existing)} files, "
                         f"e.g. {posixpath.basename(existing[0])}); pass --overwrite to replace it or pick another")
    for path in existing:
        FileSystems.delete([path])

    backbone = backbones.get_backbone(args.backbone)
    image_size = args.image_size or backbone.default_image_size
    backbones.check_image_size(backbone, image_size)
    backbones.check_weights_spec(args.weights)
    check_backend(args.inference_backend)
    model, digest = load_feature_model(backbone, args.weights, image_size)
    feature_dim = int(model.output_shape[-1])
    del model
    logging.info("feature extractor: %s, weights %s (sha256 %s), %dx%d input, %d features", backbone.name,
                 args.weights, digest[:12], image_size, image_size, feature_dim)
    return ExtractConfig(layout=layout, output_dir=args.output_dir, backbone=backbone.name, weights=args.weights,
                         weights_sha256=digest, image_size=image_size, feature_dim=feature_dim,
                         min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
                         min_word_count=args.min_word_count, vocab_tokens=vocab_tokens, num_shards=args.num_shards,
                         max_image_pixels=args.max_image_pixels, inference_backend=args.inference_backend)


# ---------------------------------------------------------------------------------------------------------------
# Reading the dataset


def _parse_caption(line: str, caption_format: str):
    parsed = dataset.parse_caption_line(line, caption_format)
    if parsed is not None:
        yield parsed.image, (parsed.index, parsed.caption)


@beam.ptransform_fn
def ReadCaptions(pbegin, layout: dataset.DatasetLayout):  # pylint: disable=invalid-name
    """-> (image name, (index or None, raw caption))"""
    skip = 1 if layout.caption_format == dataset.CSV_FORMAT else 0
    return (pbegin
            | "ReadLines" >> beam.io.ReadFromText(layout.captions_file, skip_header_lines=skip,
                                                  strip_trailing_newlines=True)
            | "Parse" >> beam.FlatMap(_parse_caption, layout.caption_format))


@beam.ptransform_fn
def ReadSplits(pbegin, split_files: dict):  # pylint: disable=invalid-name
    """-> (image name, split)"""
    per_split = []
    for split, path in split_files.items():
        per_split.append(
            pbegin
            | f"Read[{split}]" >> beam.io.ReadFromText(path)
            | f"Names[{split}]" >> beam.Map(str.strip)
            | f"NonBlank[{split}]" >> beam.Filter(bool)
            | f"Tag[{split}]" >> beam.Map(lambda name, split=split: (name, split)))
    return per_split | "Flatten" >> beam.Flatten()


@beam.ptransform_fn
def ListImages(pbegin, images_dir: str):  # pylint: disable=invalid-name
    """-> (image name, uri) for every file in the images directory."""
    return (pbegin
            | "Match" >> fileio.MatchFiles(posixpath.join(images_dir, "*"))
            | "ByName" >> beam.Map(lambda metadata: (posixpath.basename(metadata.path), metadata.path)))


class ClassifyImages(beam.DoFn):
    """Joins captions, splits and files per image name and decides what becomes of each name.

    Main output: `WorkItem`s. ``errors``: images listed in a split that cannot be used (no file, no caption).
    ``stats``: (name, count) for what is reported but is not an error of an input image.
    """
    STATS = "stats"

    def __init__(self, images_dir: str):
        self._images_dir = images_dir

    def _stat(self, name: str, value: int):
        counter(name).inc(value)
        return beam.pvalue.TaggedOutput(self.STATS, (name, value))

    def process(self, element):
        name, joined = element
        raw_captions = sorted(joined["captions"], key=lambda c: (-1 if c[0] is None else c[0], c[1]))
        splits, files = sorted(joined["splits"]), sorted(joined["files"])
        if not files:
            if raw_captions:
                yield self._stat("captions_without_image", len(raw_captions))
            for split in splits:
                counter("images_missing").inc()
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    posixpath.join(self._images_dir, name), images.MISSING_FILE,
                    f"{name} is listed in the {split} split but there is no such file in {self._images_dir}"))
            return
        if not splits:
            yield self._stat("images_without_split", 1)
            return
        cleaned = [captions.normalize_caption(caption) for _, caption in raw_captions]
        kept = tuple(caption for caption in cleaned if caption)
        if len(kept) < len(cleaned):
            yield self._stat("captions_empty_after_normalization", len(cleaned) - len(kept))
        if not kept:
            counter("images_without_captions").inc()
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                files[0], images.NO_CAPTIONS,
                f"{name} is in the {splits[0]} split but has no usable caption in the captions file"))
            return
        yield WorkItem(image_id=name, split=splits[0], uri=files[0], captions=kept)


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and records


class CountWords(beam.CombineFn):
    """Word counts of cleaned captions (a dict), merged across workers."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, caption_text):
        for word in caption_text.split():
            accumulator[word] = accumulator.get(word, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for word, count in accumulator.items():
                merged[word] = merged.get(word, 0) + count
        return merged

    def extract_output(self, accumulator):
        return accumulator


class EncodeRecords(beam.DoFn):
    """(WorkItem, features) -> tf.train.Example on the output named after the item's split."""

    def __init__(self):
        self._vocabulary = None
        self._progress = None

    def setup(self):
        self._progress = runtime.ProgressLog("images featurized")

    def process(self, element, vocab_tokens):
        item, features = element
        if self._vocabulary is None or self._vocabulary.tokens != vocab_tokens:
            self._vocabulary = Vocabulary(vocab_tokens)
        caption_ids = [self._vocabulary.encode(captions.with_boundaries(caption.split()))
                       for caption in item.captions]
        counter(f"records_{item.split}").inc()
        self._progress.add()
        yield beam.pvalue.TaggedOutput(item.split, records.encode_example(
            item.image_id, item.split, features, list(item.captions), caption_ids))


def _split_counts(tagged):
    split, example = tagged
    yield ("split", split, SplitKeys.IMAGES), 1
    yield ("split", split, SplitKeys.CAPTIONS), len(example.features.feature[records.CAPTIONS].bytes_list.value)


def write_metadata(output_dir: str, report, vocab_tokens, max_length: int, written_files,
                   config: ExtractConfig) -> dict:
    """Writes vocab.txt and metadata.json from the pipeline's counts (runs once, after the records are written)."""
    totals = dict(report)
    splits = {}
    for split in config.layout.split_files:
        splits[split] = {SplitKeys.IMAGES: totals.get(("split", split, SplitKeys.IMAGES), 0),
                         SplitKeys.CAPTIONS: totals.get(("split", split, SplitKeys.CAPTIONS), 0),
                         SplitKeys.FILES: posixpath.basename(records.split_pattern(output_dir, split))}
    errors_by_class = {key[1]: value for key, value in sorted(totals.items()) if key[0] == "error"}
    vocabulary = Vocabulary(vocab_tokens)
    metadata = {
        MetadataKeys.FORMAT_VERSION: records.FORMAT_VERSION,
        MetadataKeys.SPLITS: splits,
        MetadataKeys.IMAGES_FAILED: sum(errors_by_class.values()),
        MetadataKeys.ERRORS_BY_CLASS: errors_by_class,
        MetadataKeys.CAPTIONS_WITHOUT_IMAGE: totals.get(("stat", "captions_without_image"), 0),
        MetadataKeys.IMAGES_WITHOUT_SPLIT: totals.get(("stat", "images_without_split"), 0),
        MetadataKeys.CAPTIONS_EMPTY: totals.get(("stat", "captions_empty_after_normalization"), 0),
        MetadataKeys.VOCAB_SIZE: len(vocabulary),
        MetadataKeys.MIN_WORD_COUNT: config.min_word_count,
        MetadataKeys.VOCAB_SOURCE: "vocab_file" if config.vocab_tokens else f"{VOCAB_SPLIT} split",
        MetadataKeys.MAX_LENGTH: int(max_length),
        MetadataKeys.FEATURE_DIM: config.feature_dim,
        MetadataKeys.BACKBONE: config.backbone,
        MetadataKeys.WEIGHTS: backbones.describe_weights(config.weights),
        MetadataKeys.WEIGHTS_SHA256: config.weights_sha256,
        MetadataKeys.IMAGE_SIZE: config.image_size,
        MetadataKeys.PREPROCESSING: backbones.get_backbone(config.backbone).preprocessing,
        MetadataKeys.INFERENCE_BACKEND: config.inference_backend,
        MetadataKeys.RECORD_FILES: sorted(posixpath.basename(path) for path in written_files),
    }
    vocabulary.save(schema_fileio.join(output_dir, VOCAB_FILE))
    schema_fileio.write_json(schema_fileio.join(output_dir, records.METADATA_FILE), metadata)
    return metadata


def build_pipeline(pipeline: beam.Pipeline, config: ExtractConfig) -> None:
    layout = config.layout
    captions_by_image = pipeline | "ReadCaptions" >> ReadCaptions(layout)
    split_by_image = pipeline | "ReadSplits" >> ReadSplits(layout.split_files)
    files_by_image = pipeline | "ListImages" >> ListImages(layout.images_dir)

    classified = (
        {"captions": captions_by_image, "splits": split_by_image, "files": files_by_image}
        | "JoinByImage" >> beam.CoGroupByKey()
        | "ClassifyImages" >> beam.ParDo(ClassifyImages(layout.images_dir)).with_outputs(
            ERRORS, ClassifyImages.STATS, main="items"))
    items = classified.items

    if config.vocab_tokens:
        vocab_tokens = pipeline | "VocabFromFile" >> beam.Create([config.vocab_tokens])
    else:
        vocab_tokens = (
            items
            | "TrainItems" >> beam.Filter(lambda item: item.split == VOCAB_SPLIT)
            | "TrainCaptions" >> beam.FlatMap(lambda item: item.captions)
            | "CountWords" >> beam.CombineGlobally(CountWords())
            | "Vocabulary" >> beam.Map(lambda counts: Vocabulary.from_word_counts(
                counts, config.min_word_count).tokens))
    max_length = (items
                  | "CaptionLengths" >> beam.Map(lambda item: 2 + max(len(c.split()) for c in item.captions))
                  | "MaxLength" >> beam.CombineGlobally(lambda lengths: max(lengths, default=0)))

    handler = FeatureExtractorHandler(config.backbone, config.weights, config.image_size,
                                      min_batch_size=config.min_batch_size, max_batch_size=config.max_batch_size,
                                      expected_weights_sha256=config.weights_sha256,
                                      backend=config.inference_backend)
    prepared = (
        items
        | "Reshuffle" >> beam.Reshuffle()
        | "WithUri" >> beam.Map(lambda item: (item, item.uri, None))
        | "PrepareImages" >> beam.ParDo(PrepareImages(config.image_size, config.max_image_pixels)).with_outputs(
            ERRORS, main="pixels"))
    splits = list(layout.split_files)
    encoded = (
        prepared.pixels
        | "DropSize" >> beam.Map(lambda keyed: (keyed[0], keyed[1][0]))
        | "ExtractFeatures" >> ExtractFeatures(handler)
        | "EncodeRecords" >> beam.ParDo(EncodeRecords(), beam.pvalue.AsSingleton(vocab_tokens)).with_outputs(*splits))

    written = []
    counts = []
    for split in splits:
        examples = encoded[split]
        written.append(
            examples
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                records.shard_prefix(config.output_dir, split), coder=beam.coders.ProtoCoder(_example_class()),
                file_name_suffix=records.RECORD_SUFFIX, num_shards=config.num_shards))
        counts.append(examples
                      | f"Tag[{split}]" >> beam.Map(lambda example, split=split: (split, example))
                      | f"Count[{split}]" >> beam.FlatMap(_split_counts))

    errors = (classified[ERRORS], prepared[ERRORS]) | "AllErrors" >> beam.Flatten()
    _ = errors | "ErrorRecords" >> beam.Map(tables.as_record) | "WriteErrors" >> beam.io.WriteToParquet(
        schema_fileio.join(config.output_dir, records.ERRORS_FILE), schema=tables.ERROR_SCHEMA, num_shards=1,
        shard_name_template="")
    counts.append(errors | "ErrorClasses" >> beam.Map(lambda row: (("error", row.error), 1)))
    counts.append(classified[ClassifyImages.STATS] | "StatKeys" >> beam.Map(lambda kv: (("stat", kv[0]), kv[1])))
    report = tuple(counts) | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    written_files = tuple(written) | "WrittenFiles" >> beam.Flatten()

    _ = (pipeline
         | "MetadataTrigger" >> beam.Create([config.output_dir])
         | "WriteMetadata" >> beam.Map(
             write_metadata, report=beam.pvalue.AsList(report), vocab_tokens=beam.pvalue.AsSingleton(vocab_tokens),
             max_length=beam.pvalue.AsSingleton(max_length), written_files=beam.pvalue.AsList(written_files),
             config=config))


def _example_class():
    import tensorflow as tf
    return tf.train.Example


def summarize(metadata: dict) -> str:
    lines = ["extract job finished:"]
    for split, counts in metadata[MetadataKeys.SPLITS].items():
        lines.append(f"  {split:<6} {counts[SplitKeys.IMAGES]:>8,} images {counts[SplitKeys.CAPTIONS]:>9,} captions")
    lines.append(f"  images failed: {metadata[MetadataKeys.IMAGES_FAILED]:,} "
                 f"{metadata[MetadataKeys.ERRORS_BY_CLASS] or ''}".rstrip())
    lines.append(f"  captions without image: {metadata[MetadataKeys.CAPTIONS_WITHOUT_IMAGE]:,}; images in no split: "
                 f"{metadata[MetadataKeys.IMAGES_WITHOUT_SPLIT]:,}; captions empty after normalization: "
                 f"{metadata[MetadataKeys.CAPTIONS_EMPTY]:,}")
    lines.append(f"  vocabulary: {metadata[MetadataKeys.VOCAB_SIZE]:,} tokens; max length "
                 f"{metadata[MetadataKeys.MAX_LENGTH]}; features: {metadata[MetadataKeys.BACKBONE]} "
                 f"{metadata[MetadataKeys.FEATURE_DIM]}-d at {metadata[MetadataKeys.IMAGE_SIZE]}px, weights "
                 f"{metadata[MetadataKeys.WEIGHTS]}")
    return "\n".join(lines)


def summarize_run(counters: dict, config: ExtractConfig) -> str:
    metadata_path = schema_fileio.join(config.output_dir, records.METADATA_FILE)
    if not schema_fileio.exists(metadata_path):
        return f"extract job finished without metadata in {config.output_dir} (see the errors above)"
    return f"{summarize(schema_fileio.read_json(metadata_path))}\n  output: {config.output_dir}"


def run(argv=None, test_pipeline=None):
    """Runs the job; returns the PipelineResult. Tests pass a TestPipeline."""
    return runtime.run_job("extract job", argv, test_pipeline, parse_args=parse_args, prepare=prepare,
                           build_pipeline=build_pipeline, summarize=summarize_run)


def main(argv=None) -> int:
    return runtime.job_main(run, argv)


if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: the pipeline's classes must pickle by their
    # importable names for worker processes (multi_processing, portable and remote runners).
    from beam_jobs.extract_features import main as package_main
    sys.exit(package_main())
