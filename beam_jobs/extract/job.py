"""Extract job: captioned image datasets (Flickr8k, COCO, Karpathy or table layouts) -> Xception features +
tokenized captions.

    imcap-extract --dataset_dir [NAME=]DIR [--dataset_dir ...] --output_dir OUT \
        [--weights imagenet|none|PATH] [--image_size 299] [--min_word_count 5] [Beam options]

(or ``python -m beam_jobs.extract_features``). Writes, per split, sharded TFRecords with one tf.train.Example per image,
plus ``vocab.txt``, ``metadata.json`` and ``errors.parquet`` (see `schemas.records`).

The pipeline, one composite per concern::

    ReadDataset ──items──┬─ BuildVocabulary (train captions; longest caption) ─────────────┐ (side inputs)
    (reading:            ├─ FeaturesOfItems (reading, features: read, decode, Xception) ─── WriteSplits ─┐
     captions, splits,   └─ CountItems ───────────────────────────────── (progress: n of N, ETA) ┘       │
     files, joined)  errors ── WriteErrorTable ──────── tallies ──── WriteMetadata (after the records) ◀─┘
                                                                      (writing: vocab.txt, metadata.json)

The layouts and how several datasets combine are described in `beam_jobs.extract.discovery` and
`beam_jobs.extract.datasets` (ReadDataset parses, joins and, for several datasets, finds duplicate images by content).
The vocabulary is counted inside the pipeline from the train split only (a CombineFn), so it scales with the data and
never sees dev/test words. Counts for metadata.json travel as `Tally` elements and are summed once.

Runner: `beam_jobs.runtime.LocalRunner` unless ``--runner`` says otherwise; every Beam option passes through.
"""
import argparse
import glob
import logging
import os
import posixpath
import re
import sys
import typing

import apache_beam as beam

from beam_jobs import runtime
from beam_jobs.extract import datasets as datasets_lib
from beam_jobs.extract import discovery
from beam_jobs.extract.reading import FeaturesOfItems, ReadDataset
from beam_jobs.extract.vocabulary import VOCAB_SPLIT, BuildVocabulary
from beam_jobs.extract.writing import MetadataSettings, WriteErrorTable, WriteMetadata, WriteSplits
from beam_jobs.features import add_feature_flags, check_feature_flags
from beam_jobs.models import MODELS, Models
from schemas import backbones, fileio, records
from schemas import int8_model as int8_schema
from schemas.bundle import INT8_DIR
from schemas.captions import DEFAULT_MAX_CAPTION_WORDS
from schemas.records import DatasetKeys, MetadataKeys, SplitKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary
from trainer import cli, quantization
from trainer.features import AUTO_BACKEND, INT8_BACKEND, FeatureSpec, check_backend, check_int8_model

DEFAULT_MIN_WORD_COUNT = 5


class ExtractConfig(typing.NamedTuple):
    datasets: tuple  # `datasets.Dataset`s
    splits: tuple  # the records' splits (`datasets.output_splits`)
    output_dir: str
    features: FeatureSpec  # the extractor, with the weights' digest found at launch
    feature_dim: int
    min_batch_size: int
    max_batch_size: int
    min_word_count: int
    vocab_tokens: typing.Optional[tuple]  # from --vocab_file, else None (built from the train split)
    num_shards: int
    max_image_pixels: int
    int8_info: typing.Optional[dict] = None  # its quantization.json
    models: Models = MODELS  # the handlers' factory (tests pass fakes)
    dedupe: bool = False  # hash the images and merge the items of the same content
    max_caption_words: int = DEFAULT_MAX_CAPTION_WORDS  # longer captions are left out


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(
        prog="imcap-extract", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner, --direct_running_mode, --project).",
        stray_hint="an unquoted glob the shell expanded? --dataset_dir takes several directories (to combine "
                   "datasets), other flags one value each")
    parser.add_argument("--dataset_dir", action="extend", nargs="+", metavar="[NAME=]DIR",
                        help="a dataset in the Flickr8k, COCO, Karpathy or table layout (found from its files); "
                             "several (after one flag, or repeated) combine datasets into one set of records (NAME: "
                             "how its ids and splits are prefixed, default the directory's name)")
    parser.add_argument("--images_dir", help="directory the images' paths are relative to (default: found)")
    parser.add_argument("--captions_file",
                        help="the captions: Flickr8k.token.txt, a CSV or JSON Lines table, a COCO captions JSON or "
                             "Karpathy's dataset_*.json (default: found in --dataset_dir)")
    parser.add_argument("--split_file", action="append", type=runtime.parse_key_value, metavar="NAME=PATH",
                        help="a split list, repeatable (default: Flickr_8k.{train,dev,test}Images.txt found)")
    parser.add_argument("--karpathy_restval", default=discovery.RESTVAL_TO_TRAIN, choices=("train", "restval"),
                        help="Karpathy's restval images: in train (default, as in the literature) or a split of "
                             "their own")
    parser.add_argument("--dedupe", default="auto", choices=("auto", "yes", "no"),
                        help="find images of the same content (SHA-256 of the file) and make each one record with "
                             "all its captions; auto (default): yes when there are several --dataset_dir")
    parser.add_argument("--output_dir", required=True, help="where records, vocab.txt and metadata.json go")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the records, vocabulary, metadata and errors of an earlier run in --output_dir")
    parser.add_argument("--weights", default=backbones.IMAGENET,
                        help="imagenet (Keras download), none (random init, tests) or a Keras weights file")
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=sorted(backbones.BACKBONES),
                        help="the image feature network")
    parser.add_argument("--image_size", type=runtime.positive_int, default=None,
                        help="backbone input size in pixels (default 299 for xception; at least 71)")
    add_feature_flags(parser, "auto (default): openvino-int8 where NNCF and OpenVINO are installed, the int8 model "
                      "calibrated at launch on --calibration_images photos of the train split and written to "
                      "OUTPUT_DIR/extractor_int8 (bundles trained on these records carry it), else keras",
                      "; without it the int8 model is made at launch (see auto)")
    parser.add_argument("--calibration_images", "--int8_calibration_images", dest="calibration_images",
                        type=runtime.positive_int, metavar="N",
                        default=quantization.DEFAULT_CALIBRATION_IMAGES,
                        help="train photos the int8 model is calibrated on when this job makes it (default "
                             f"{quantization.DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--spatial_grid", type=_grid_flag, default="none", metavar="none|full|N",
                        help="also store the backbone's last convolutional map per image, as float16, for attention "
                             "decoders: full (10x10x2048 at 299 px: 400 KB per image), N (average pooled to NxN, "
                             "e.g. 5: 100 KB) or none (default: the pooled vector only, 8 KB)")
    parser.add_argument("--min_word_count", type=runtime.positive_int, default=DEFAULT_MIN_WORD_COUNT,
                        help="words seen fewer times in the train captions map to <unk>")
    parser.add_argument("--max_caption_words", type=runtime.positive_int, default=DEFAULT_MAX_CAPTION_WORDS,
                        help="captions with more words (after normalization) are left out and counted in "
                             f"metadata.json's captions_too_long (default {DEFAULT_MAX_CAPTION_WORDS}: Flickr8k's "
                             "longest caption has 38, COCO's 49)")
    parser.add_argument("--vocab_file", help="use this vocab.txt instead of building one from the train split")
    parser.add_argument("--num_shards", type=runtime.non_negative_int, default=0,
                        help="TFRecord shards per split (0: the runner decides)")
    args, beam_args = runtime.parse_job_args(parser, argv)
    check_feature_flags(parser, args)
    split_files = dict(args.split_file) if args.split_file else None
    if args.split_file and len(split_files) != len(args.split_file):
        parser.error("--split_file: a split name is given twice")
    args.split_files = split_files
    return args, beam_args


FULL_GRID = "full"


def _grid_flag(text: str) -> str | int:
    if text in ("none", FULL_GRID):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected none, full or a grid size of at least 1, got {text!r}")
    return value


def _same_path(first: str, second: str) -> bool:
    if "://" in first or "://" in second:
        return first.rstrip("/") == second.rstrip("/")
    return os.path.realpath(first) == os.path.realpath(second)


def _existing_outputs(output_dir: str, splits, keep: str | None = None) -> list[str]:
    """The files an earlier run of this job wrote in ``output_dir``: record shards of these splits (by their exact
    name pattern), metadata.json, vocab.txt, errors.parquet, extractor_int8/, and what the sinks of a killed run
    left in their ``beam-temp-<name>-<uuid>`` directories. Nothing else there is touched."""
    stems = "|".join(re.escape(records.split_file_stem(split)) for split in splits)
    shard = re.compile(rf"(?:{stems})-\d{{5}}-of-\d{{5}}" + re.escape(records.RECORD_SUFFIX))
    sink_temp = re.compile(rf"beam-temp-(?:{stems}|{re.escape(records.ERRORS_FILE)})-[0-9a-f]{{32}}")
    found = [path for path in fileio.glob(fileio.join(output_dir, f"*{records.RECORD_SUFFIX}"))
             if shard.fullmatch(posixpath.basename(path))]
    found.extend(path for path in fileio.glob(posixpath.join(output_dir, "beam-temp-*", "*"))
                 if sink_temp.fullmatch(posixpath.basename(posixpath.dirname(path))))
    if "://" not in output_dir:  # a killed sink's empty directory (object stores have none)
        found.extend(path for path in glob.glob(os.path.join(glob.escape(output_dir), "beam-temp-*"))
                     if os.path.isdir(path) and not os.listdir(path) and sink_temp.fullmatch(posixpath.basename(path)))
    for name in (records.METADATA_FILE, VOCAB_FILE, records.ERRORS_FILE):
        found.extend(fileio.glob(fileio.join(output_dir, name)))
    if not (keep and _same_path(keep, fileio.join(output_dir, INT8_DIR))):  # --int8_model there: an input
        for name in (int8_schema.MODEL_XML, int8_schema.MODEL_BIN, int8_schema.INFO_FILE):
            found.extend(fileio.glob(fileio.join(output_dir, INT8_DIR, name)))
    return found


def _delete_existing(output_dir: str, existing: list[str]) -> None:
    """Removes an earlier run's files (`_existing_outputs`: the job's own names only), never through a symbolic
    link, then the sinks' temporary folders and extractor_int8/ where they are left empty."""
    empty_folders = [path for path in existing if fileio.local_path(path) is not None
                     and os.path.isdir(fileio.local_path(path)) and not os.path.islink(fileio.local_path(path))]
    files = [path for path in existing if path not in empty_folders]
    temp_folders = {posixpath.dirname(path) for path in files
                    if posixpath.basename(posixpath.dirname(path)).startswith("beam-temp-")}
    refused = fileio.undeletable(output_dir, files)
    if not refused:
        refused = fileio.delete_owned(output_dir, files, sorted(temp_folders | set(empty_folders))
                                     + [fileio.join(output_dir, INT8_DIR)])
    if refused:
        raise ValueError(f"--output_dir {output_dir}: not deleting {', '.join(refused[:3])}: symbolic links or not "
                      "regular files where the job's own outputs should be; remove them yourself")


def prepare(args: argparse.Namespace, models: Models = MODELS) -> ExtractConfig:
    """Everything checked on the launching machine before a worker starts; raises ValueError with what to fix."""
    datasets = datasets_lib.load_datasets(args.dataset_dir, args.images_dir, args.captions_file, args.split_files,
                                          args.karpathy_restval)
    splits = datasets_lib.output_splits(datasets)
    vocab_tokens = None
    if args.vocab_file:
        vocab_tokens = Vocabulary.load(args.vocab_file).tokens
    elif VOCAB_SPLIT not in splits:
        raise ValueError(f"the vocabulary is built from the '{VOCAB_SPLIT}' split, and there is none (splits: "
                         f"{', '.join(splits)}); add --split_file {VOCAB_SPLIT}=PATH or pass --vocab_file")

    existing = _existing_outputs(args.output_dir, splits, keep=args.int8_model)
    if existing and not args.overwrite:
        raise ValueError(f"--output_dir {args.output_dir} already holds the output of a run ({len(existing)} files, "
                         f"e.g. {posixpath.basename(existing[0])}); pass --overwrite to replace it or pick another")

    backbone = backbones.get_backbone(args.backbone)
    image_size = args.image_size or backbone.default_image_size
    backbones.check_image_size(backbone, image_size)
    backbones.check_weights_spec(args.weights)
    backend = args.inference_backend
    if backend == AUTO_BACKEND and args.int8_model:
        backend = INT8_BACKEND  # a given int8 model needs OpenVINO only
    if backend == AUTO_BACKEND:
        backend = models.auto_backend()
        logging.info("--inference_backend auto: %s", backend if backend != INT8_BACKEND else
                     f"{backend} (int8 model {'from --int8_model' if args.int8_model else 'calibrated now'})")
    check_backend(backend, args.int8_model)
    digest, feature_dim, map_size = models.feature_weights(backbone, args.weights, image_size)
    if args.int8_model:
        check_int8_model(args.int8_model, backbone.name, image_size, digest)
    grid = {"none": 0, FULL_GRID: map_size}.get(args.spatial_grid, args.spatial_grid)
    if grid > map_size:
        raise ValueError(f"--spatial_grid {grid}: {backbone.name} at {image_size} px has a {map_size}x{map_size} "
                         f"feature map, so the grid can be at most {map_size} (or full)")
    logging.info("feature extractor: %s, weights %s (sha256 %s), %dx%d input, %d features%s", backbone.name,
                 args.weights, digest[:12], image_size, image_size, feature_dim,
                 f", and a {grid}x{grid} grid of its {map_size}x{map_size} map "
                 f"({grid * grid * feature_dim * 2:,} bytes per image)" if grid else "")
    int8_model = int8_info = None
    calibrate = backend == INT8_BACKEND and not args.int8_model
    if calibrate:
        if VOCAB_SPLIT not in splits:  # never calibrate on photos a model is evaluated on
            raise ValueError(f"there is no {VOCAB_SPLIT} split to calibrate the int8 model on: pass --int8_model "
                             "(the extractor_int8/ of the records the model was trained on) or --inference_backend "
                             "keras")
        if not quantization.available():
            raise ValueError("--inference_backend openvino-int8 without --int8_model calibrates an int8 model, which "
                             "needs NNCF: pip install nncf (or pass --int8_model)")
    int8_target = fileio.join(args.output_dir, INT8_DIR)
    reusing = bool(args.int8_model) and _same_path(args.int8_model, int8_target)
    # only now that every check has passed (an --int8_model in OUTPUT_DIR is not among them)
    _delete_existing(args.output_dir, existing)
    if backend == INT8_BACKEND:  # the records directory carries the int8 model its features came from
        int8_model = int8_target
        if args.int8_model and not reusing:
            from trainer.bundle import copy_int8_model
            copy_int8_model(args.int8_model, int8_model)
        elif calibrate:
            models.quantize(int8_model, backbone, args.weights, image_size,
                            datasets_lib.split_image_uris(datasets, VOCAB_SPLIT),
                            f"{VOCAB_SPLIT} split of the dataset", args.calibration_images)
        int8_info = check_int8_model(int8_model, backbone.name, image_size, digest)
    dedupe = args.dedupe == "yes" or (args.dedupe == "auto" and len(datasets) > 1)
    return ExtractConfig(datasets=tuple(datasets), splits=tuple(splits), dedupe=dedupe, output_dir=args.output_dir,
                         features=FeatureSpec(backbone.name, args.weights, image_size, digest, backend, grid,
                                              int8_model), feature_dim=feature_dim,
                         min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
                         min_word_count=args.min_word_count, vocab_tokens=vocab_tokens, num_shards=args.num_shards,
                         max_image_pixels=args.max_image_pixels, int8_info=int8_info, models=models,
                         max_caption_words=args.max_caption_words)


def build_pipeline(pipeline: beam.Pipeline, config: ExtractConfig) -> None:
    splits = list(config.splits)
    data = pipeline | "ReadDataset" >> ReadDataset(config.datasets, config.dedupe, config.max_caption_words)
    vocabulary = data.items | "BuildVocabulary" >> BuildVocabulary(config.min_word_count, config.vocab_tokens)
    total = data.items | "CountItems" >> beam.combiners.Count.Globally()
    featured = data.items | "Features" >> FeaturesOfItems(
        config.models.feature_handler(config.features, min_batch_size=config.min_batch_size,
                                      max_batch_size=config.max_batch_size),
        config.features.image_size, config.max_image_pixels)
    written = featured.features | "WriteSplits" >> WriteSplits(
        vocabulary, total, config.output_dir, splits, config.num_shards)
    error_tallies = ((data.errors, featured.errors)
                     | "AllErrors" >> beam.Flatten()
                     | "WriteErrors" >> WriteErrorTable(fileio.join(config.output_dir, records.ERRORS_FILE)))
    _ = ((data.tallies, written.tallies, error_tallies)
         | "AllTallies" >> beam.Flatten()
         | "WriteMetadata" >> WriteMetadata(vocabulary, written.files, MetadataSettings(
             output_dir=config.output_dir, splits=tuple(splits), features=config.features,
             feature_dim=config.feature_dim, min_word_count=config.min_word_count,
             vocab_from_file=bool(config.vocab_tokens), max_caption_words=config.max_caption_words,
             int8_model=config.int8_info,
             datasets=tuple((d.name, d.layout.caption_format, d.summary.images_dir) for d in config.datasets))))


def summarize(metadata: dict) -> str:
    lines = ["extract job finished:"]
    width = max([6] + [len(split) for split in metadata[MetadataKeys.SPLITS]])
    for split, counts in metadata[MetadataKeys.SPLITS].items():
        lines.append(f"  {split:<{width}} {counts[SplitKeys.IMAGES]:>8,} images "
                     f"{counts[SplitKeys.CAPTIONS]:>9,} captions")
    sources = metadata.get(MetadataKeys.DATASETS) or {}
    if len(sources) > 1 or any(counts[DatasetKeys.DUPLICATES] for counts in sources.values()):
        for name, counts in sorted(sources.items(), key=lambda item: item[1].get(DatasetKeys.ORDER, 0)):
            lines.append(f"  from {name} ({counts[DatasetKeys.LAYOUT]}): {counts[DatasetKeys.IMAGES]:,} images, "
                         f"{counts[DatasetKeys.CAPTIONS]:,} captions; {counts[DatasetKeys.DUPLICATES]:,} of its "
                         f"images share a record with a copy named earlier, {counts[DatasetKeys.LEFT_OUT_OF_TRAIN]:,} "
                         "train images left out (a copy is in an evaluation split)")
    lines.append(f"  images failed: {metadata[MetadataKeys.IMAGES_FAILED]:,} "
                 f"{metadata[MetadataKeys.ERRORS_BY_CLASS] or ''}".rstrip())
    lines.append(f"  captions without image: {metadata[MetadataKeys.CAPTIONS_WITHOUT_IMAGE]:,}; images in no split: "
                 f"{metadata[MetadataKeys.IMAGES_WITHOUT_SPLIT]:,}; captions empty after normalization: "
                 f"{metadata[MetadataKeys.CAPTIONS_EMPTY]:,}; captions longer than "
                 f"{metadata.get(MetadataKeys.MAX_CAPTION_WORDS, '?')} words, left out: "
                 f"{metadata.get(MetadataKeys.CAPTIONS_TOO_LONG, 0):,}")
    lines.append(f"  vocabulary: {metadata[MetadataKeys.VOCAB_SIZE]:,} tokens; max length "
                 f"{metadata[MetadataKeys.MAX_LENGTH]}; features: {metadata[MetadataKeys.BACKBONE]} "
                 f"{metadata[MetadataKeys.FEATURE_DIM]}-d at {metadata[MetadataKeys.IMAGE_SIZE]}px, weights "
                 f"{metadata[MetadataKeys.WEIGHTS]}")
    grid = records.grid_shape(metadata)
    if grid:
        images = sum(counts[SplitKeys.IMAGES] for counts in metadata[MetadataKeys.SPLITS].values())
        per_image = metadata[MetadataKeys.GRID_BYTES_PER_IMAGE]
        lines.append(f"  spatial grid: {grid[0]}x{grid[1]}x{grid[2]} float16, {per_image / 1024:,.0f} KiB per image, "
                     f"{per_image * images / 1024 ** 3:,.2f} GiB in all")
    return "\n".join(lines)


def summarize_run(counters: dict, config: ExtractConfig) -> str:
    metadata_path = fileio.join(config.output_dir, records.METADATA_FILE)
    if not fileio.exists(metadata_path):
        return f"extract job finished without metadata in {config.output_dir} (see the errors above)"
    return f"{summarize(fileio.read_json(metadata_path))}\n  output: {config.output_dir}"


JOB = runtime.Job("extract job", parse_args, prepare, build_pipeline, summarize_run)
run, main = JOB.run, JOB.main  # run(argv, test_pipeline=None, models=None) -> PipelineResult; main(argv) -> exit status


if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: the pipeline's classes must pickle by their
    # importable names for worker processes (multi_processing, portable and remote runners).
    from beam_jobs.extract.job import main as package_main
    sys.exit(package_main())
