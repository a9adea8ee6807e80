"""The caption job's outputs under a prefix: shards, the running checkpoint, resume and overwrite.

    PREFIX-[rK-]SSSSS-of-NNNNN.parquet          caption rows of run K (run 1 has no tag)
    PREFIX-errors-[rK-]SSSSS-of-NNNNN.parquet   error rows of run K
    PREFIX-checkpoint/{captions,errors}-*.parquet  rows committed while a run is in progress

`existing_outputs` finds what an earlier run left; `delete_outputs` removes it (``--overwrite``). Both work on
filesystems where directories are only name prefixes (GCS, S3): they list and delete files, never a directory.

`WriteCaptionOutputs` writes a run: rows are committed to the checkpoint every ``checkpoint_rows`` while the run
goes; the sinks write the run's shards together with the rows an interrupted run had checkpointed (minus those
already in committed shards, so a run killed between its shards and its checkpoint's removal adds nothing twice);
then the checkpoint is removed.
"""
import glob
import hashlib
import logging
import os
import posixpath
import typing

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import sources
from beam_jobs.runtime import counter
from schemas import tables
from schemas.tables import CaptionRow

CAPTIONS, ERRORS = "captions", "errors"


class ExistingOutputs(typing.NamedTuple):
    committed: tuple  # (path, 'captions' | 'errors', run number) of committed shards
    checkpoint_parts: tuple  # checkpoint files of an interrupted run
    leftovers: tuple  # temporary files of killed sinks and incomplete checkpoint files

    @property
    def next_run(self) -> int:
        return max((run for _, _, run in self.committed), default=0) + 1

    def __bool__(self) -> bool:
        return bool(self.committed or self.checkpoint_parts)


def existing_outputs(prefix: str) -> ExistingOutputs:
    committed = []
    for path in sources.match_paths(tables.output_glob(prefix)):
        kind = tables.classify_output(prefix, path)
        if kind:
            committed.append((path, *kind))
    checkpoint_files = sources.match_paths(posixpath.join(tables.checkpoint_dir(prefix), "*"))
    parts = [path for path in checkpoint_files if path.endswith(tables.PARQUET_SUFFIX)]
    leftovers = [path for path in checkpoint_files if not path.endswith(tables.PARQUET_SUFFIX)]
    leftovers += [path for path in sources.match_paths(posixpath.join(tables.sink_temp_glob(prefix), "*"))
                  if tables.is_sink_temp_dir(prefix, posixpath.basename(posixpath.dirname(path)))]
    leftovers += _empty_local_temp_dirs(prefix)
    return ExistingOutputs(tuple(sorted(committed)), tuple(parts), tuple(leftovers))


def _empty_local_temp_dirs(prefix: str) -> list[str]:
    """Temporary directories of PREFIX's killed sinks that hold nothing (object stores have no empty directories)."""
    if "://" in prefix:
        return []
    return [path for path in glob.glob(tables.sink_temp_glob(prefix))
            if os.path.isdir(path) and not os.listdir(path)
            and tables.is_sink_temp_dir(prefix, os.path.basename(path))]


def _delete_files(paths) -> None:
    for path in paths:
        if "://" not in path and os.path.isdir(path):
            continue  # an empty directory: removed by _delete_directory_objects
        try:
            FileSystems.delete([path])
        except Exception as error:  # already gone (a concurrent cleanup), or a filesystem's own error
            if FileSystems.exists(path):
                raise OSError(f"cannot delete {path}: {error}") from error


def _delete_directory_objects(*directories: str) -> None:
    """Local filesystems have directories that stay behind empty; object stores have none (nothing to do)."""
    for directory in directories:
        try:
            if FileSystems.exists(directory) and not sources.match_paths(posixpath.join(directory, "*")):
                FileSystems.delete([directory])
        except Exception:  # not a directory object on this filesystem
            pass


def delete_outputs(prefix: str, existing: ExistingOutputs) -> None:
    """Removes every file of earlier runs (``--overwrite``): shards, checkpoint files, killed sinks' files."""
    delete_paths([path for path, _, _ in existing.committed] + list(existing.checkpoint_parts)
                 + list(existing.leftovers), tables.checkpoint_dir(prefix))


def delete_paths(paths, *directories: str) -> None:
    """Deletes files (and empty local directories among them), then the directories of killed sinks
    (``beam-temp-*``) that held some of them, and ``directories``, where they are left empty."""
    _delete_files(paths)
    temp_dirs = sorted({path if os.path.isdir(path) else posixpath.dirname(path) for path in paths
                        if "beam-temp-" in path})
    _delete_directory_objects(*directories, *temp_dirs)


def remove_checkpoint(directory: str, *committed) -> None:
    """Deletes the checkpoint's files, listed (object stores have no directory to delete); runs after the run's
    shards are committed (its side inputs are their file names)."""
    files = sources.match_paths(posixpath.join(directory, "*"))
    _delete_files(files)
    _delete_directory_objects(directory)
    if files:
        logging.info("removed %d checkpoint files in %s: their rows are in the committed shards", len(files),
                     directory)


@beam.typehints.with_output_types(str)
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
        digest = hashlib.sha256("\n".join(sorted(row.image_uri for row in rows)).encode("utf-8")).hexdigest()
        path = posixpath.join(self._directory, f"{self._kind}-{digest[:20]}{tables.PARQUET_SUFFIX}")
        temporary = path + ".incomplete"
        with FileSystems.create(temporary) as handle:
            pq.write_table(pa.Table.from_pylist([tables.as_record(row) for row in rows], schema=self._schema),
                           handle)
        FileSystems.rename([temporary], [path])
        yield path


class AdoptRows(beam.DoFn):
    """After the join of checkpointed rows with committed URIs: each URI's row once, none that is committed.

    A URI checkpointed twice (a retried bundle) keeps one row; a caption wins over an error row (a transient read
    error that a retry overcame)."""

    def process(self, element):
        _, joined = element
        rows = list(joined["rows"])
        if not rows:
            return
        if list(joined["committed"]):
            counter("checkpoint_rows_already_committed").inc(len(rows))
            return
        if len(rows) > 1:
            counter("checkpoint_duplicates").inc(len(rows) - 1)
        counter("checkpoint_rows_adopted").inc()
        captions = sorted(row for row in rows if isinstance(row, CaptionRow))
        if captions:
            yield captions[0]
        else:
            yield beam.pvalue.TaggedOutput(ERRORS, sorted(rows)[0])


class _Adopted(typing.NamedTuple):
    captions: beam.PCollection
    errors: beam.PCollection


@beam.ptransform_fn
def AdoptCheckpoint(pbegin, parts: tuple, committed_files: tuple):  # pylint: disable=invalid-name
    """The rows an interrupted run checkpointed that no committed shard holds -> (captions, errors)."""
    if not parts:
        return _Adopted(pbegin | "NoCaptions" >> beam.Create([]), pbegin | "NoErrors" >> beam.Create([]))
    rows = (pbegin
            | "Parts" >> beam.Create(parts)
            | "ReadParts" >> beam.io.ReadAllFromParquet()
            | "AsRows" >> beam.Map(tables.row_from_record)
            | "KeyRows" >> beam.Map(lambda row: (row.image_uri, row)))
    committed = (pbegin
                 | "CommittedUris" >> ReadDoneUris(committed_files)
                 | "KeyCommitted" >> beam.Map(lambda uri: (uri, None)))
    adopted = ({"rows": rows, "committed": committed}
               | "JoinWithCommitted" >> beam.CoGroupByKey()
               | "Adopt" >> beam.ParDo(AdoptRows()).with_outputs(ERRORS, main=CAPTIONS))
    return _Adopted(adopted[CAPTIONS], adopted[ERRORS])


@beam.ptransform_fn
def ReadDoneUris(pbegin, paths: tuple):  # pylint: disable=invalid-name
    """The ``image_uri`` of every row in the given output files (committed shards and checkpoint parts)."""
    if not paths:
        return pbegin | "NothingDone" >> beam.Create([])
    return (pbegin
            | "DoneFiles" >> beam.Create(paths)
            | "ReadDone" >> beam.io.ReadAllFromParquet(columns=[tables.IMAGE_URI])
            | "DoneUris" >> beam.Map(lambda record: record[tables.IMAGE_URI]))


class CountRows(beam.DoFn):
    def process(self, row):
        if isinstance(row, CaptionRow):
            counter("images_captioned").inc()
        else:
            counter(f"errors_{row.error}").inc()
        yield row


@beam.ptransform_fn
def _WriteShards(row_collections, shard_prefix: str, schema: pa.Schema, num_shards: int):  # pylint: disable=invalid-name
    """Rows (several PCollections) -> Parquet shards ``<shard_prefix>SSSSS-of-NNNNN.parquet``; their names."""
    return (row_collections
            | "AllRows" >> beam.Flatten()
            | "Records" >> beam.Map(tables.as_record)
            | "Parquet" >> beam.io.WriteToParquet(shard_prefix, schema=schema, file_name_suffix=tables.PARQUET_SUFFIX,
                                                   num_shards=num_shards, shard_name_template="SSSSS-of-NNNNN"))


class WriteCaptionOutputs(beam.PTransform):
    """(caption rows, error rows) of this run -> checkpoint while running, then the run's shards; returns the
    written shard names."""

    def __init__(self, prefix: str, run_number: int, num_shards: int, checkpoint_rows: int,
                 existing: ExistingOutputs):
        super().__init__()
        self._prefix, self._run, self._num_shards = prefix, run_number, num_shards
        self._checkpoint_rows, self._existing = checkpoint_rows, existing

    def expand(self, rows):
        captions, errors = rows
        pipeline = captions.pipeline
        captions = captions | "CountCaptions" >> beam.ParDo(CountRows())
        errors = errors | "CountErrors" >> beam.ParDo(CountRows())
        checkpoint = tables.checkpoint_dir(self._prefix)
        checkpointed = (
            captions | "CheckpointCaptions" >> beam.ParDo(CheckpointRows(
                checkpoint, CAPTIONS, tables.CAPTION_SCHEMA, self._checkpoint_rows)),
            errors | "CheckpointErrors" >> beam.ParDo(CheckpointRows(
                checkpoint, ERRORS, tables.ERROR_SCHEMA, self._checkpoint_rows)))
        adopted = pipeline | "AdoptCheckpoint" >> AdoptCheckpoint(
            self._existing.checkpoint_parts, tuple(path for path, _, _ in self._existing.committed))
        written_captions = (captions, adopted.captions) | "WriteCaptions" >> _WriteShards(
            tables.caption_shard_prefix(self._prefix, self._run), tables.CAPTION_SCHEMA, self._num_shards)
        written_errors = (errors, adopted.errors) | "WriteErrors" >> _WriteShards(
            tables.error_shard_prefix(self._prefix, self._run), tables.ERROR_SCHEMA, 1)
        _ = (pipeline
             | "CheckpointDir" >> beam.Create([checkpoint])
             | "RemoveCheckpoint" >> beam.Map(
                 remove_checkpoint, beam.pvalue.AsList(written_captions), beam.pvalue.AsList(written_errors),
                 beam.pvalue.AsList(checkpointed[0]), beam.pvalue.AsList(checkpointed[1])))
        return written_captions, written_errors
