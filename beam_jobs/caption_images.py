"""Caption job: image folders, lists and archives -> captions in Parquet, with every failure as an error row.

    python -m beam_jobs.caption_images --input 'photos/*.jpg' --input batch.tar.gz --input more.txt \
        --model_dir MODEL --output out/captions [--beam_width K] [--weights ...] [--skip_existing] [Beam options]

(also installed as ``imcap-caption``). Inputs are globs on any Beam filesystem; each matched file is an image, an
archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``; members streamed, never extracted) or a list of URIs
(`beam_jobs.sources`). Output (`schemas.tables`): ``PREFIX-SSSSS-of-NNNNN.parquet`` caption rows and
``PREFIX-errors-SSSSS-of-NNNNN.parquet`` error rows; every input image is in exactly one of them.

The pipeline::

    Match ─ Route ─┬─ images ───────────────────────────────┐
                   ├─ lists ── ReadLists ── Route ──────────┤
                   └─ archives ── Reshuffle ── Expand ──────┴─ SkipDoneAndDuplicates (CoGroupByKey; also the
                                                              shuffle that spreads archive members) ─ PrepareImages
        ─ RunInference(Xception features) ─ RunInference(caption decoder) ─ WriteCaptions
    errors of every step ─────────────────────────────────────────────────── WriteErrors

The features are those of the bundle (`bundle.json`: backbone, weights, image size) with the extract job's own
preprocessing (`schemas.images.prepare_image`); weights with another SHA-256 than the bundle's are refused.

Resume: while it runs, the job commits rows every ``--checkpoint_rows`` to ``PREFIX-checkpoint/``. A rerun with
``--skip_existing`` skips every image already in PREFIX's outputs or checkpoint, captions only the rest, writes its
shards as run ``rK`` (``PREFIX-rK-SSSSS-of-NNNNN.parquet``) together with the rows the interrupted run had
checkpointed, and removes the checkpoint -- so the union of all shards has each image once.
"""
import argparse
import hashlib
import logging
import posixpath
import sys
import typing

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import runtime, sources
from beam_jobs.image_transforms import ERRORS, ExtractFeatures, PrepareImages, add_feature_flags, check_feature_flags
from beam_jobs.inference import CaptionModelHandler, FeatureExtractorHandler, check_backend, load_feature_model
from beam_jobs.runtime import counter
from schemas import backbones, images, tables
from schemas.bundle import BundleKeys

ARCHIVES, LISTS = "archives", "lists"
DEFAULT_CHECKPOINT_ROWS = 500


class CaptionConfig(typing.NamedTuple):
    inputs: tuple
    output: str
    model_dir: str
    model_id: str
    backbone: str
    weights: str
    weights_sha256: str
    image_size: int
    beam_width: int
    length_penalty: float
    min_batch_size: int
    max_batch_size: int
    decode_batch_size: int
    max_image_pixels: int
    max_member_bytes: int
    num_shards: int
    run_number: int
    done_files: tuple  # committed outputs whose images are skipped (--skip_existing)
    checkpoint_parts: tuple  # rows an interrupted run committed: skipped and carried into this run's shards
    checkpoint_rows: int
    inference_backend: str


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="imcap-caption", description=__doc__.split("\n\n")[0],
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner, --direct_running_mode, --project).")
    parser.add_argument("--input", action="append", required=True, metavar="PATTERN",
                        help="glob of images, archives or list files; repeatable")
    parser.add_argument("--model_dir", required=True, help="a model bundle written by trainer.task")
    parser.add_argument("--output", required=True, metavar="PREFIX", help="output prefix, e.g. out/captions")
    parser.add_argument("--beam_width", type=runtime.positive_int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--length_penalty", type=float, help="default: the bundle's")
    parser.add_argument("--weights", help="feature weights (default: the bundle's; a path when it was a file)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="caption only images not yet in PREFIX's outputs (resume or add to a run)")
    parser.add_argument("--overwrite", action="store_true", help="delete PREFIX's outputs first")
    parser.add_argument("--max_member_bytes", type=runtime.positive_int, default=sources.DEFAULT_MAX_MEMBER_BYTES,
                        help="archive members above this size are reported as too_large")
    add_feature_flags(parser)
    parser.add_argument("--decode_batch_size", type=runtime.positive_int, default=128, help="caption batch bound")
    parser.add_argument("--num_shards", type=runtime.non_negative_int, default=0,
                        help="Parquet shards of caption rows (0: the runner decides)")
    parser.add_argument("--checkpoint_rows", type=runtime.positive_int, default=DEFAULT_CHECKPOINT_ROWS,
                        help="rows per checkpoint file committed while the job runs")
    args, beam_args = parser.parse_known_args(argv)
    if args.skip_existing and args.overwrite:
        parser.error("--skip_existing and --overwrite contradict each other")
    check_feature_flags(parser, args)
    return args, beam_args


def _match(pattern: str) -> list[str]:
    try:
        return [metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # BeamIOError when nothing matches on some filesystems
        return []


def _existing_outputs(prefix: str) -> tuple[list[tuple[str, str, int]], list[str]]:
    committed = []
    for path in _match(tables.output_glob(prefix)):
        kind = tables.classify_output(prefix, path)
        if kind:
            committed.append((path, *kind))
    parts = _match(posixpath.join(tables.checkpoint_dir(prefix), "*" + tables.PARQUET_SUFFIX))
    return sorted(committed), sorted(parts)


def prepare(args: argparse.Namespace) -> CaptionConfig:
    """Checks everything on the launching machine; raises ValueError/FileNotFoundError with what to fix."""
    from trainer.bundle import Bundle, check_feature_weights, feature_weights_for

    bundle = Bundle(args.model_dir)
    config = bundle.config
    weights = feature_weights_for(config, args.weights)
    backbone = backbones.get_backbone(config[BundleKeys.BACKBONE])
    backbones.check_weights_spec(weights)
    check_backend(args.inference_backend)
    extractor, digest = load_feature_model(backbone, weights, config[BundleKeys.IMAGE_SIZE])
    check_feature_weights(config, digest, weights)
    del extractor

    for pattern in args.input:
        if not _match(pattern):
            raise FileNotFoundError(f"--input {pattern}: matches no file")
    committed, parts = _existing_outputs(args.output)
    if (committed or parts) and not (args.skip_existing or args.overwrite):
        raise ValueError(f"--output {args.output} already has outputs ({len(committed)} shards, {len(parts)} "
                         "checkpoint files); pass --skip_existing to caption only the images not in them, "
                         "or --overwrite to replace them")
    if args.overwrite:
        for path, _, _ in committed:
            FileSystems.delete([path])
        if parts:
            FileSystems.delete([tables.checkpoint_dir(args.output)])
        committed, parts = [], []
    run_number = max((run for _, _, run in committed), default=0) + 1
    decoding = bundle.decoding
    return CaptionConfig(
        inputs=tuple(args.input), output=args.output, model_dir=args.model_dir, model_id=bundle.model_id,
        backbone=backbone.name, weights=weights, weights_sha256=digest, image_size=config[BundleKeys.IMAGE_SIZE],
        beam_width=args.beam_width or decoding["beam_width"],
        length_penalty=decoding["length_penalty"] if args.length_penalty is None else args.length_penalty,
        min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
        decode_batch_size=args.decode_batch_size, max_image_pixels=args.max_image_pixels,
        max_member_bytes=args.max_member_bytes, num_shards=args.num_shards, run_number=run_number,
        done_files=tuple(path for path, _, _ in committed), checkpoint_parts=tuple(parts),
        checkpoint_rows=args.checkpoint_rows, inference_backend=args.inference_backend)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


class RouteInputs(beam.DoFn):
    """A matched or listed URI -> image (main), archive, list, or an error row for anything else."""

    def __init__(self, follow_lists: bool = True):
        self._follow_lists = follow_lists

    def process(self, uri: str):
        kind = sources.kind_of(uri)
        if kind == sources.IMAGE:
            counter("image_files").inc()
            yield uri
        elif kind == sources.ARCHIVE:
            counter("archives").inc()
            yield beam.pvalue.TaggedOutput(ARCHIVES, uri)
        elif kind == sources.LIST and self._follow_lists:
            counter("list_files").inc()
            yield beam.pvalue.TaggedOutput(LISTS, uri)
        else:
            what = "a list file inside a list file" if kind == sources.LIST else \
                "neither an image, an archive nor a list file (by its name)"
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(uri, images.NOT_AN_IMAGE, f"{what}; skipped"))


class ReadListFiles(beam.DoFn):
    """A list file -> the URIs it names; a file that names no image or archive at all is one error row."""

    def process(self, list_uri: str):
        try:
            with sources.open_raw(list_uri) as handle:
                text = handle.read().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                list_uri, images.NOT_AN_IMAGE, f"not a UTF-8 list of image URIs ({error.reason}); skipped"))
            return
        except Exception as error:
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                list_uri, images.READ_ERROR, f"cannot read the list file: {type(error).__name__}: {error}"))
            return
        entries = [uri for uri in (sources.resolve_listed(list_uri, line) for line in text.splitlines()) if uri]
        if not any(sources.kind_of(uri) in (sources.IMAGE, sources.ARCHIVE) for uri in entries):
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                list_uri, images.NOT_AN_IMAGE, "a .txt/.lst/.list input that names no image or archive; skipped"))
            return
        counter("listed_uris").inc(len(entries))
        yield from entries


class ExpandArchives(beam.DoFn):
    """An archive URI -> (member URI, member bytes) per image member; other members and damage -> error rows."""

    def __init__(self, max_member_bytes: int):
        self._max_member_bytes = max_member_bytes

    def process(self, archive_uri: str):
        for item in sources.iter_archive(archive_uri, self._max_member_bytes):
            if item[0] == "image":
                counter("archive_members").inc()
                yield item[1], item[2]
            else:
                _, uri, error_class, message = item
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(uri, error_class, message))


class SelectNewImages(beam.DoFn):
    """After the join of candidates with done URIs: each URI once, and none that is done.

    Candidates are ("image", bytes or None) for images to caption and ("error", row) for inputs that already
    failed (not an image, damaged archive, ...); both are skipped when done, so a rerun repeats neither.
    """

    def process(self, element):
        uri, joined = element
        candidates = list(joined["todo"])
        if not candidates:
            return
        if joined["done"]:
            counter("skipped_existing").inc()
            return
        if len(candidates) > 1:
            counter("duplicate_inputs").inc(len(candidates) - 1)
        kind, value = candidates[0]
        if kind == "error":
            yield beam.pvalue.TaggedOutput(ERRORS, value)
        else:
            yield uri, uri, value


# ---------------------------------------------------------------------------------------------------------------
# Outputs


class CountRows(beam.DoFn):
    def __init__(self, what: str):
        self._what = what

    def process(self, row):
        if self._what == "captioned":
            counter("images_captioned").inc()
        else:
            counter(f"errors_{row[tables.ERROR]}").inc()
        yield row


class CheckpointRows(beam.DoFn):
    """Commits rows to Parquet files in PREFIX-checkpoint/ every `every_rows` rows and at each bundle's end.

    A file is written under a temporary name and renamed, so a file that exists is complete; its name comes from
    its rows, so a retried bundle rewrites the same file. Emits the committed paths.
    """

    def __init__(self, directory: str, kind: str, schema: pa.Schema, every_rows: int):
        self._directory, self._kind, self._schema, self._every_rows = directory, kind, schema, every_rows
        self._rows = []

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self._every_rows:
            yield from self._commit()

    def finish_bundle(self):
        for path in self._commit():
            yield WindowedValue(path, MIN_TIMESTAMP, [GlobalWindow()])

    def _commit(self):
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        digest = hashlib.sha256("\n".join(sorted(r[tables.IMAGE_URI] for r in rows)).encode("utf-8")).hexdigest()
        path = posixpath.join(self._directory, f"{self._kind}-{digest[:20]}{tables.PARQUET_SUFFIX}")
        temporary = path + ".incomplete"
        with FileSystems.create(temporary) as handle:
            pq.write_table(pa.Table.from_pylist(rows, schema=self._schema), handle)
        FileSystems.rename([temporary], [path])
        yield path


def remove_checkpoint(directory: str, *committed) -> None:
    """Runs after this run's shards are committed (its side inputs are their file names)."""
    if FileSystems.exists(directory):
        FileSystems.delete([directory])
        logging.info("removed %s: its rows are in the committed shards", directory)


def _first_row(element):
    uri, rows = element
    rows = list(rows)
    if len(rows) > 1:
        counter("checkpoint_duplicates").inc(len(rows) - 1)
    return rows[0]


@beam.ptransform_fn
def ReadCheckpointRows(pbegin, paths, label):  # pylint: disable=invalid-name
    """Rows of an interrupted run's checkpoint files, each URI once (retried bundles may have written twice)."""
    if not paths:
        return pbegin | f"No{label}" >> beam.Create([])
    return (pbegin
            | f"{label}Files" >> beam.Create(paths)
            | f"Read{label}" >> beam.io.ReadAllFromParquet()
            | f"Key{label}" >> beam.Map(lambda row: (row[tables.IMAGE_URI], row))
            | f"Group{label}" >> beam.GroupByKey()
            | f"First{label}" >> beam.Map(_first_row))


def build_pipeline(pipeline: beam.Pipeline, config: CaptionConfig) -> None:
    matched = (pipeline
               | "Inputs" >> beam.Create(config.inputs)
               | "Match" >> fileio.MatchAll()
               | "Paths" >> beam.Map(lambda metadata: metadata.path))
    routed = matched | "Route" >> beam.ParDo(RouteInputs()).with_outputs(ARCHIVES, LISTS, ERRORS, main="images")
    listed = routed[LISTS] | "ReadLists" >> beam.ParDo(ReadListFiles()).with_outputs(ERRORS, main="uris")
    listed_routed = listed.uris | "RouteListed" >> beam.ParDo(RouteInputs(follow_lists=False)).with_outputs(
        ARCHIVES, LISTS, ERRORS, main="images")
    expanded = (
        (routed[ARCHIVES], listed_routed[ARCHIVES])
        | "AllArchives" >> beam.Flatten()
        | "SpreadArchives" >> beam.Reshuffle()
        | "ExpandArchives" >> beam.ParDo(ExpandArchives(config.max_member_bytes)).with_outputs(ERRORS, main="members"))
    loose = ((routed.images, listed_routed.images)
             | "AllImageFiles" >> beam.Flatten()
             | "ToRead" >> beam.Map(lambda uri: (uri, None)))
    early_errors = ((routed[ERRORS], listed[ERRORS], listed_routed[ERRORS], expanded[ERRORS])
                    | "EarlyErrors" >> beam.Flatten()
                    | "KeyEarlyErrors" >> beam.Map(lambda row: (row[tables.IMAGE_URI], ("error", row))))
    images_to_read = ((loose, expanded.members)
                      | "AllImages" >> beam.Flatten()
                      | "TagImages" >> beam.Map(lambda kv: (kv[0], ("image", kv[1]))))
    candidates = (images_to_read, early_errors) | "AllCandidates" >> beam.Flatten()

    done_files = config.done_files + config.checkpoint_parts
    done = ((pipeline | "DoneFiles" >> beam.Create(done_files)
             | "ReadDone" >> beam.io.ReadAllFromParquet(columns=[tables.IMAGE_URI])
             | "DoneUris" >> beam.Map(lambda row: (row[tables.IMAGE_URI], None))) if done_files
            else pipeline | "NothingDone" >> beam.Create([]))
    todo = ({"todo": candidates, "done": done}
            | "SkipDoneAndDuplicates" >> beam.CoGroupByKey()
            | "SelectNewImages" >> beam.ParDo(SelectNewImages()).with_outputs(ERRORS, main="images"))

    prepared = todo.images | "PrepareImages" >> beam.ParDo(
        PrepareImages(config.image_size, config.max_image_pixels)).with_outputs(ERRORS, main="pixels")
    features = (prepared.pixels
                | "KeyBySize" >> beam.Map(lambda kv: ((kv[0], *kv[1][1]), kv[1][0]))
                | "ExtractFeatures" >> ExtractFeatures(FeatureExtractorHandler(
                    config.backbone, config.weights, config.image_size, min_batch_size=config.min_batch_size,
                    max_batch_size=config.max_batch_size, expected_weights_sha256=config.weights_sha256,
                    backend=config.inference_backend)))
    rows = (features
            | "Caption" >> RunInference(KeyedModelHandler(CaptionModelHandler(
                config.model_dir, config.beam_width, config.length_penalty,
                max_batch_size=config.decode_batch_size)))
            | "CaptionRows" >> beam.Map(lambda kv, model_id: tables.caption_row(
                kv[0][0], kv[1][0], kv[1][1], model_id, kv[0][1], kv[0][2]), config.model_id)
            | "CountCaptioned" >> beam.ParDo(CountRows("captioned")))
    errors = ((todo[ERRORS], prepared[ERRORS])
              | "AllErrors" >> beam.Flatten()
              | "CountErrors" >> beam.ParDo(CountRows("errors")))

    checkpoint = tables.checkpoint_dir(config.output)
    checkpointed = (
        rows | "CheckpointCaptions" >> beam.ParDo(CheckpointRows(
            checkpoint, "captions", tables.CAPTION_SCHEMA, config.checkpoint_rows)),
        errors | "CheckpointErrors" >> beam.ParDo(CheckpointRows(
            checkpoint, "errors", tables.ERROR_SCHEMA, config.checkpoint_rows)))
    parts = config.checkpoint_parts
    adopted_rows = pipeline | "AdoptCaptions" >> ReadCheckpointRows(
        [p for p in parts if posixpath.basename(p).startswith("captions-")], "AdoptedCaptions")
    adopted_errors = pipeline | "AdoptErrors" >> ReadCheckpointRows(
        [p for p in parts if posixpath.basename(p).startswith("errors-")], "AdoptedErrors")

    written_rows = ((rows, adopted_rows)
                    | "CaptionRowsToWrite" >> beam.Flatten()
                    | "WriteCaptions" >> beam.io.WriteToParquet(
                        tables.caption_shard_prefix(config.output, config.run_number), schema=tables.CAPTION_SCHEMA,
                        file_name_suffix=tables.PARQUET_SUFFIX, num_shards=config.num_shards,
                        shard_name_template="SSSSS-of-NNNNN"))
    written_errors = ((errors, adopted_errors)
                      | "ErrorRowsToWrite" >> beam.Flatten()
                      | "WriteErrors" >> beam.io.WriteToParquet(
                          tables.error_shard_prefix(config.output, config.run_number), schema=tables.ERROR_SCHEMA,
                          file_name_suffix=tables.PARQUET_SUFFIX, num_shards=1, shard_name_template="SSSSS-of-NNNNN"))
    _ = (pipeline
         | "CheckpointDir" >> beam.Create([checkpoint])
         | "RemoveCheckpoint" >> beam.Map(
             remove_checkpoint, beam.pvalue.AsList(written_rows), beam.pvalue.AsList(written_errors),
             beam.pvalue.AsList(checkpointed[0]), beam.pvalue.AsList(checkpointed[1])))


def summarize(counters: dict, config: CaptionConfig) -> str:
    captioned = counters.get("images_captioned", 0)
    errors = {name[len("errors_"):]: value for name, value in counters.items() if name.startswith("errors_")}
    lines = [f"caption job finished (model {config.model_id}, beam width {config.beam_width}):",
             f"  captioned {captioned:,}; failed {sum(errors.values()):,} {errors or ''}".rstrip(),
             f"  inputs: {counters.get('image_files', 0):,} image files, {counters.get('archives', 0):,} archives "
             f"({counters.get('archive_members', 0):,} image members), {counters.get('list_files', 0):,} lists",
             f"  skipped: {counters.get('skipped_existing', 0):,} already captioned, "
             f"{counters.get('duplicate_inputs', 0):,} duplicate inputs",
             f"  output: {tables.caption_shard_prefix(config.output, config.run_number)}*.parquet and "
             f"{tables.error_shard_prefix(config.output, config.run_number)}*.parquet"]
    return "\n".join(lines)


def run(argv=None, test_pipeline=None):
    """Runs the job; returns the PipelineResult. Tests pass a TestPipeline."""
    args, beam_args = parse_args(argv)
    config = prepare(args)
    if config.done_files or config.checkpoint_parts:
        logging.info("skipping images already in %d output shards and %d checkpoint files of %s",
                     len(config.done_files), len(config.checkpoint_parts), config.output)
    pipeline = test_pipeline or beam.Pipeline(options=runtime.pipeline_options(beam_args))
    build_pipeline(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    counters = runtime.log_counters(result, "caption job")
    logging.info("%s", summarize(counters, config))
    return result


def main(argv=None) -> int:
    return runtime.job_main(run, argv)


if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: the pipeline's classes must pickle by their
    # importable names for worker processes (multi_processing, portable and remote runners).
    from beam_jobs.caption_images import main as package_main
    sys.exit(package_main())
