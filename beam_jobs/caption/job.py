"""Caption job: image folders, lists and archives -> captions in Parquet, with every failure as an error row.

    imcap-caption --input 'photos/*.jpg' --input batch.tar.gz --input more.txt \
        --model_dir MODEL --output_dir out/captions [--beam_width K] [--weights ...] [--skip_existing] [Beam options]

(or ``python -m beam_jobs.caption_images``). Inputs are globs on any Beam filesystem; each matched file is an image, an
archive (``.tar``, ``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``, ``.zip``; streamed, never extracted) or a list of
URIs (`beam_jobs.naming`). Output (`beam_jobs.caption.outputs`, `schemas.tables`): two tables, each a folder of Parquet
shards, ``OUT/captions/`` (caption rows) and ``OUT/errors/`` (error rows); every input image -- every archive
member, damaged or not -- is in exactly one of them, and no input can stop the run.

The pipeline, one composite per concern::

    Patterns ─ ResolveInputs ─ SelectInputs ─ ReadImages ─ Features ─ Captions ─ Write
               (inputs: match,   (inputs: one    (reading, archives: (features, decoding:  (outputs: checkpoint,
               route, lists)     join on URIs    archives cut into   RunInference x2)     shards, resume)
                                 with done URIs) work units, spread,
                                                 read and decoded)

Only URIs go through the one shuffle (the join that drops duplicates and what earlier runs did); image bytes are
read after it and never leave the step that decodes them, so memory does not grow with the size of the inputs.

The features are those of the bundle (`bundle.json`: backbone, weights, image size) with the extract job's own
preprocessing (`schemas.images.prepare_image`); weights with another SHA-256 than the bundle's are refused.

Resume: while it runs, the job commits rows every ``--checkpoint_rows`` to ``OUT/checkpoint/``. A rerun with
``--skip_existing`` skips every input already in OUT's tables or checkpoint, captions only the rest, writes its
shards as run K (``OUT/captions/runK-SSSSS-of-NNNNN.parquet``) together with the checkpointed rows that no shard
holds yet, and removes the checkpoint -- so the union of all shards has each input once.
"""
import argparse
import logging
import posixpath
import sys
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs import naming, runtime
from beam_jobs.caption import archives, outputs
from beam_jobs.caption.archives import units
from beam_jobs.caption.decoding import GenerateCaptions
from beam_jobs.caption.inputs import ResolveInputs, SelectInputs, matches_anything
from beam_jobs.caption.outputs import ReadDoneUris, WriteCaptionOutputs
from beam_jobs.caption.reading import DEFAULT_READ_THREADS, ReadImages
from beam_jobs.features import FeaturesOfImages, add_feature_flags, check_feature_flags
from beam_jobs.models import MODELS, Models
from schemas import backbones, tables
from schemas.bundle import BundleKeys
from trainer import cli
from trainer.bundle import check_feature_weights, feature_weights_for
from trainer.features import FeatureSpec, backend_for_bundle, check_int8_model

DEFAULT_CHECKPOINT_ROWS = 500


class CaptionConfig(typing.NamedTuple):
    inputs: tuple
    output_dir: str
    model_dirs: tuple  # one bundle, or the bundles of an ensemble
    model_id: str
    features: FeatureSpec  # the bundle's extractor; a grid for a bundle that reads the feature map (attention)
    attention_maps: bool  # rows carry the attention weights per word
    beam_width: int
    length_penalty: float
    no_repeat_ngram_size: int
    min_batch_size: int
    max_batch_size: int
    decode_batch_size: int
    max_image_pixels: int
    limits: archives.Limits
    read_threads: int
    unit_members: int  # archive members per work unit
    num_shards: int
    checkpoint_rows: int
    existing: outputs.ExistingOutputs  # what earlier runs left in --output_dir (--skip_existing resumes from it)
    models: Models = MODELS  # the handlers' factory (tests pass fakes)

    @property
    def run_number(self) -> int:
        return self.existing.next_run

    @property
    def done_files(self) -> tuple:
        """Committed shards and checkpoint parts: the images in them are not captioned again."""
        return (tuple(path for path, _, _ in self.existing.committed) + self.existing.checkpoint_parts
                + self.existing.legacy)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(
        prog="imcap-caption", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner, --direct_running_mode, --project).",
        stray_hint="an unquoted glob the shell expanded? --input takes several paths (--input photos/*.jpg works "
                   "unquoted), or quote the glob: --input 'photos/*.jpg'")
    parser.add_argument("--input", action="extend", nargs="+", required=True, metavar="PATTERN",
                        help="globs, directories, images, archives or list files; takes several (an unquoted glob "
                             "the shell expanded) and repeats")
    parser.add_argument("--model_dir", required=True, action="append",
                        help="a model bundle written by trainer.task; repeat it to caption with the ensemble of "
                             "several bundles trained on the same records (model_id names the ensemble)")
    parser.add_argument("--output_dir", "--output", required=True, metavar="DIR",
                        help="the job's output directory, e.g. out/captions: tables captions/ and errors/ (folders of "
                             "Parquet shards), checkpoint/ while it runs; other files there are left alone")
    parser.add_argument("--beam_width", type=runtime.positive_int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--length_penalty", type=float, help="default: the bundle's")
    parser.add_argument("--no_repeat_ngram_size", type=runtime.non_negative_int, metavar="N",
                        help="never repeat an n-gram of N words in a caption; 0: no blocking (default: the bundle's)")
    parser.add_argument("--weights", help="feature weights (default: the bundle's; a path when it was a file)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="caption only images not yet in --output_dir's tables (resume or add to a run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the job's earlier outputs in --output_dir first (nothing else there)")
    parser.add_argument("--max_image_bytes", "--max_member_bytes", dest="max_image_bytes", type=runtime.positive_int,
                        default=naming.DEFAULT_MAX_IMAGE_BYTES,
                        help="image files and archive members above this size are too_large (default 256 MiB)")
    parser.add_argument("--max_archive_bytes", type=runtime.positive_int, default=archives.DEFAULT_MAX_ARCHIVE_BYTES,
                        help="decompressed bytes one compressed archive may produce (default 64 GiB); the rest is "
                             "an expansion_limit row")
    parser.add_argument("--max_compression_ratio", type=_positive_float,
                        default=archives.DEFAULT_MAX_COMPRESSION_RATIO,
                        help="decompressed/stored bytes above which an archive is a bomb, judged past 64 MiB "
                             "(default 200; photos are about 1)")
    parser.add_argument("--read_threads", type=runtime.positive_int, default=DEFAULT_READ_THREADS,
                        help="threads per worker that read and decode images while the model runs")
    parser.add_argument("--archive_unit_members", type=runtime.positive_int, default=units.DEFAULT_UNIT_MEMBERS,
                        help="archive members per work unit: an archive is cut into units that spread over the "
                             f"workers (default {units.DEFAULT_UNIT_MEMBERS}, about 2 s of one vCPU's work; at most "
                             f"{units.DEFAULT_UNIT_BYTES // 2**20} MiB of members per unit)")
    add_feature_flags(parser, "auto (default): the backend of the features the bundle was trained on: openvino-int8 "
                      "with the bundle's own int8 model (extractor_int8/) for bundles trained on int8 records, "
                      "keras for bundles trained on keras records",
                      "; default: the bundle's extractor_int8/")
    parser.add_argument("--attention_maps", action="store_true",
                        help="attention bundles: store each caption's attention weights per word over the grid in the "
                             "rows' attention column (about 5 KB per image at 10x10), for imcap-gallery's pictures")
    parser.add_argument("--decode_batch_size", type=runtime.positive_int, default=128,
                        help="images per decoding batch (the last of a bundle may be smaller); larger batches decode "
                             "faster per image (BENCHMARKS.md, feature backends)")
    parser.add_argument("--num_shards", type=runtime.non_negative_int, default=0,
                        help="Parquet shards of caption rows (0: the runner decides)")
    parser.add_argument("--checkpoint_rows", type=runtime.positive_int, default=DEFAULT_CHECKPOINT_ROWS,
                        help="rows per checkpoint file committed while the job runs")
    args, beam_args = runtime.parse_job_args(parser, argv)
    if args.skip_existing and args.overwrite:
        parser.error("--skip_existing and --overwrite contradict each other")
    if naming.has_glob_characters(args.output_dir):
        parser.error(f"--output_dir {args.output_dir}: a directory name cannot hold glob characters "
                     "(* ? [ ] { }): the job finds its earlier outputs by listing it")
    if not args.output_dir.strip():
        parser.error("--output_dir: give a directory such as out/captions")
    args.output_dir = args.output_dir.rstrip("/") or args.output_dir
    check_feature_flags(parser, args)
    return args, beam_args


def _check_filesystem(flag: str, path: str) -> None:
    try:
        FileSystems.get_filesystem(path)
    except ValueError as error:
        scheme = path.partition("://")[0]
        hint = " (install imcap[gcp] for gs:// paths)" if scheme == "gs" else ""
        raise ValueError(f"{flag} {path}: no Beam filesystem for '{scheme}://'{hint}: {error}") from None


def _matches_something(pattern: str) -> bool:
    _check_filesystem("--input", pattern)
    return matches_anything(pattern)


def prepare(args: argparse.Namespace, models: Models = MODELS) -> CaptionConfig:
    """Checks everything on the launching machine; raises ValueError/FileNotFoundError with what to fix."""

    bundle = models.open_bundle(args.model_dir)  # one --model_dir, or an ensemble's
    config = bundle.config
    weights = feature_weights_for(config, args.weights)
    backbone = backbones.get_backbone(config[BundleKeys.BACKBONE])
    backbones.check_weights_spec(weights)
    backend, int8_model = backend_for_bundle(bundle, args.inference_backend, args.int8_model)
    extractor = models.feature_weights(backbone, weights, config[BundleKeys.IMAGE_SIZE])
    digest = extractor.weights_sha256
    check_feature_weights(config, digest, weights)
    if int8_model:
        check_int8_model(int8_model, backbone.name, config[BundleKeys.IMAGE_SIZE], digest)
    grid = bundle.grid_shape[0] if bundle.grid_shape else 0
    if args.attention_maps and not grid:
        raise ValueError("--attention_maps needs an attention bundle (trainer.task --decoder attention); "
                         f"{', '.join(args.model_dir)} decodes from pooled vectors")
    if grid > extractor.map_size:
        raise ValueError(f"{', '.join(args.model_dir)} decode from a {grid}x{grid} grid, but {backbone.name} at "
                         f"{config[BundleKeys.IMAGE_SIZE]} px has a {extractor.map_size}x{extractor.map_size} map")

    _check_filesystem("--output_dir", args.output_dir)
    for pattern in args.input:
        if not _matches_something(pattern):
            raise FileNotFoundError(f"--input {pattern}: matches no file")
    outputs.check_own_folders(args.output_dir)
    existing = outputs.existing_outputs(args.output_dir)
    if existing and not (args.skip_existing or args.overwrite):
        legacy = (f" and {len(existing.legacy)} shards of an earlier imcap beside it "
                  f"({posixpath.basename(existing.legacy[0])}, ...)" if existing.legacy else "")
        raise ValueError(f"--output_dir {args.output_dir} already has outputs ({len(existing.committed)} shards, "
                         f"{len(existing.checkpoint_parts)} checkpoint files{legacy}); pass --skip_existing to "
                         "caption only the images not in them, or --overwrite to replace them")
    if args.overwrite:
        outputs.delete_outputs(args.output_dir, existing)
        if existing.legacy:
            logging.warning("--overwrite leaves %d shards of an earlier imcap beside %s (%s, ...): they are not in "
                            "this version's layout; delete them yourself if you no longer need them",
                            len(existing.legacy), args.output_dir, existing.legacy[0])
        existing = outputs.ExistingOutputs((), (), ())
    elif existing.leftovers:
        outputs.delete_outputs(args.output_dir, outputs.ExistingOutputs((), (), existing.leftovers))
        logging.info("removed %d temporary files of an interrupted run", len(existing.leftovers))
        existing = existing._replace(leftovers=())
    if existing:
        logging.info("skipping inputs already in %d output shards and %d checkpoint files of %s%s",
                     len(existing.committed), len(existing.checkpoint_parts), args.output_dir,
                     f" (and {len(existing.legacy)} shards of an earlier imcap's layout beside it)"
                     if existing.legacy else "")
    decoding = bundle.decoding_for(args.beam_width, args.length_penalty, args.no_repeat_ngram_size)
    return CaptionConfig(
        inputs=tuple(args.input), output_dir=args.output_dir, model_dirs=tuple(args.model_dir),
        model_id=bundle.model_id,
        features=FeatureSpec(backbone.name, weights, config[BundleKeys.IMAGE_SIZE], digest, backend, grid, int8_model),
        attention_maps=args.attention_maps,
        beam_width=decoding.beam_width, length_penalty=decoding.length_penalty,
        no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
        decode_batch_size=args.decode_batch_size, max_image_pixels=args.max_image_pixels,
        limits=archives.Limits(max_member_bytes=args.max_image_bytes, max_archive_bytes=args.max_archive_bytes,
                               max_ratio=args.max_compression_ratio),
        read_threads=args.read_threads, unit_members=args.archive_unit_members, num_shards=args.num_shards,
        checkpoint_rows=args.checkpoint_rows,
        existing=existing, models=models)


def build_pipeline(pipeline: beam.Pipeline, config: CaptionConfig) -> None:
    done_uris = pipeline | "DoneUris" >> ReadDoneUris(config.done_files)
    selected = (pipeline
                | "Patterns" >> beam.Create([pattern.encode("utf-8", "surrogateescape") for pattern in config.inputs])
                | "ResolveInputs" >> ResolveInputs()
                | "SelectInputs" >> SelectInputs(done_uris))
    prepared = selected.refs | "ReadImages" >> ReadImages(
        config.features.image_size, config.max_image_pixels, config.limits, tables.spill_dir(config.output_dir,
                                                                                     config.run_number),
        config.read_threads, depth=config.max_batch_size, unit_members=config.unit_members)
    captions = (prepared.images
                | "Features" >> FeaturesOfImages(config.models.feature_handler(
                    config.features, min_batch_size=config.min_batch_size, max_batch_size=config.max_batch_size))
                | "Captions" >> GenerateCaptions(config.models.caption_handler(
                    config.model_dirs, config.beam_width, config.length_penalty,
                    min_batch_size=config.decode_batch_size, max_batch_size=config.decode_batch_size,
                    attention_maps=config.attention_maps, no_repeat_ngram_size=config.no_repeat_ngram_size),
                    config.model_id))
    errors = (selected.errors, prepared.errors) | "AllErrors" >> beam.Flatten()
    _ = (captions, errors) | "Write" >> WriteCaptionOutputs(
        config.output_dir, config.run_number, config.num_shards, config.checkpoint_rows, config.existing)


def summarize(counters: dict, config: CaptionConfig) -> str:
    captioned = counters.get("images_captioned", 0)
    errors = {name[len("errors_"):]: value for name, value in counters.items() if name.startswith("errors_")}
    adopted = counters.get("checkpoint_rows_adopted", 0)
    lines = [f"caption job finished (model {config.model_id}, beam width {config.beam_width}):",
             f"  captioned {captioned:,}; failed {sum(errors.values()):,} {errors or ''}".rstrip(),
             f"  inputs: {counters.get('image_files', 0):,} image files, {counters.get('archives', 0):,} archives "
             f"({counters.get('archive_members', 0):,} image members read), {counters.get('list_files', 0):,} lists "
             f"({counters.get('listed_uris', 0):,} entries)",
             f"  skipped: {counters.get('skipped_existing', 0):,} already in the outputs, "
             f"{counters.get('duplicate_inputs', 0):,} duplicate inputs"]
    if adopted:
        lines.append(f"  carried over from the interrupted run's checkpoint: {adopted:,} rows")
    if counters.get("errors_internal_error"):
        lines.append(f"  internal errors: {counters['errors_internal_error']:,} (see the error rows of class "
                     "internal_error; please report them)")
    if counters.get("internal_errors_without_row"):
        lines.append(f"  internal errors after an archive's own row: {counters['internal_errors_without_row']:,} "
                     "(in the log; please report them)")
    lines.append(f"  output: {tables.table_dir(config.output_dir, tables.CAPTIONS_TABLE)}/ and "
                 f"{tables.table_dir(config.output_dir, tables.ERRORS_TABLE)}/ (this run: "
                 f"run{config.run_number}-*.parquet; read each folder as one table)")
    return "\n".join(lines)


JOB = runtime.Job("caption job", parse_args, prepare, build_pipeline, summarize)
run, main = JOB.run, JOB.main  # run(argv, test_pipeline=None, models=None) -> PipelineResult; main(argv) -> exit status


if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: the pipeline's classes must pickle by their
    # importable names for worker processes (multi_processing, portable and remote runners).
    from beam_jobs.caption.job import main as package_main
    sys.exit(package_main())
