"""The caption job's outputs in its output directory: shards, the running checkpoint, resume and overwrite.

    OUT/captions/runK-SSSSS-of-NNNNN.parquet        caption rows of run K
    OUT/errors/runK-SSSSS-of-NNNNN.parquet          error rows of run K
    OUT/checkpoint/{captions,errors}-<hex>.parquet  rows committed while a run is in progress

`existing_outputs` finds what an earlier run left (by these exact names: anything else in these folders is not
the job's, and the job refuses to write beside it); `delete_outputs` removes it (``--overwrite``), with
`fileio.delete_owned`: the job's own files only, never through a symbolic link. Both work on filesystems where
directories are only name prefixes (GCS, S3): they list and delete files, never a directory.

`WriteCaptionOutputs` writes a run: rows are committed to the checkpoint every ``checkpoint_rows`` while the run
goes; the sinks write the run's shards together with the rows an interrupted run had checkpointed (minus those
already in committed shards, so a run killed between its shards and its checkpoint's removal adds nothing twice);
then the checkpoint is removed, and so is an empty table of a run after the first (a rerun with nothing new to
caption leaves no empty shards behind).
"""
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

from beam_jobs import sinks
from beam_jobs.caption.archives import units
from beam_jobs.runtime import counter
from schemas import fileio, tables
from schemas.tables import CAPTIONS_TABLE, ERRORS_TABLE, CaptionRow

CAPTIONS, ERRORS = CAPTIONS_TABLE, ERRORS_TABLE


class ExistingOutputs(typing.NamedTuple):
    committed: tuple  # (path, 'captions' | 'errors', run number) of committed shards
    checkpoint_parts: tuple  # checkpoint files of an interrupted run
    leftovers: tuple  # temporary files of killed sinks and incomplete checkpoint files
    legacy: tuple = ()  # shards of an earlier imcap's layout beside the directory (read as done, never deleted)

    @property
    def next_run(self) -> int:
        return max((run for _, _, run in self.committed), default=0) + 1

    def __bool__(self) -> bool:
        return bool(self.committed or self.checkpoint_parts or self.legacy)


class ForeignFiles(ValueError):
    """Files in a folder of the job's own that the job did not write."""


def _listing(directory: str) -> list[str]:
    """The files directly in a folder, any Beam filesystem (none when it does not exist). Locally, symbolic links
    and other non-directories are listed too (so that they are seen), and nothing is listed below the folder."""
    local = fileio.local_path(directory)
    if local is None:  # a "folder" placeholder object (DIR/, as consoles and gcsfuse make) is no file
        return [path for path in fileio.glob(posixpath.join(directory, "*"))
                if posixpath.dirname(path) == directory.rstrip("/") and not path.endswith("/")]
    if os.path.islink(local) or not os.path.isdir(local):
        return []
    return [posixpath.join(directory, name) for name in sorted(os.listdir(local))
            if os.path.islink(os.path.join(local, name)) or not os.path.isdir(os.path.join(local, name))]


def _regular(path: str) -> bool:
    """Whether a listed path is a file the job could have written (locally: a regular file, not a link)."""
    local = fileio.local_path(path)
    return local is None or (os.path.isfile(local) and not os.path.islink(local))


def _nested(directory: str) -> list[str]:
    """What lies below a folder's own files: local subfolders (not through a link), or on an object store the
    objects whose names go on below it (readers such as pyarrow read those as part of the table)."""
    local = fileio.local_path(directory)
    if local is None:
        return [path for path in fileio.glob(posixpath.join(directory, "**"))
                if posixpath.dirname(path) != directory.rstrip("/") and not path.endswith("/")]
    return _local_subfolders(directory)


def _local_subfolders(directory: str) -> list[str]:
    """Folders directly in a local folder (not through a link); none on object stores, which have no folders."""
    local = fileio.local_path(directory)
    if local is None or os.path.islink(local) or not os.path.isdir(local):
        return []
    return [posixpath.join(directory, name) for name in sorted(os.listdir(local))
            if os.path.isdir(os.path.join(local, name)) and not os.path.islink(os.path.join(local, name))]


def check_own_folders(output_dir: str) -> None:
    """Refuses an output directory whose table or checkpoint folders are symbolic links or hold files the job did
    not write: the job would mix its rows with them, or delete inside a folder that is someone else's."""
    local = fileio.local_path(output_dir)
    if local is not None and os.path.exists(local) and not os.path.isdir(local):
        raise ForeignFiles(f"--output_dir {output_dir} is a file, not a directory: the job writes a folder of "
                           "tables there; choose another --output_dir")
    for folder in (tables.table_dir(output_dir, CAPTIONS), tables.table_dir(output_dir, ERRORS),
                   tables.checkpoint_dir(output_dir)):
        if local is not None and os.path.islink(fileio.local_path(folder).rstrip("/")):
            raise ForeignFiles(f"--output_dir {output_dir}: {folder} is a symbolic link; the job writes and deletes "
                               "only in folders of its own: remove the link or choose another --output_dir")
        is_checkpoint = folder == tables.checkpoint_dir(output_dir)
        foreign = [path for path in _listing(folder) if not _regular(path) or
                   (tables.checkpoint_part_table(posixpath.basename(path)) if is_checkpoint
                    else tables.shard_run(posixpath.basename(path))) is None]
        foreign += _nested(folder)
        if foreign:
            shown = ", ".join(posixpath.basename(path) for path in foreign[:3])
            more = f" and {len(foreign) - 3:,} more" if len(foreign) > 3 else ""
            raise ForeignFiles(f"--output_dir {output_dir}: {folder} holds files the caption job did not write "
                               f"({shown}{more}); its folders captions/, errors/ and checkpoint/ are its own: "
                               "choose another --output_dir or move those files")


def existing_outputs(output_dir: str) -> ExistingOutputs:
    """What earlier runs left in the output directory, by the job's own file names; `check_own_folders` first."""
    committed = []
    for table in (CAPTIONS, ERRORS):
        for path in _listing(tables.table_dir(output_dir, table)):
            run = tables.shard_run(posixpath.basename(path))
            if run is not None:
                committed.append((path, table, run))
    parts, leftovers = [], []
    for path in _listing(tables.checkpoint_dir(output_dir)):
        name = posixpath.basename(path)
        if tables.checkpoint_part_table(name):
            (leftovers if name.endswith(tables.INCOMPLETE_SUFFIX) else parts).append(path)
    if fileio.local_path(output_dir) is None:  # object stores: the temporary folders are name prefixes
        leftovers += [path for path in fileio.glob(posixpath.join(output_dir, "beam-temp-*", "*"))
                      if _is_temporary(path)]
    for folder in _local_subfolders(output_dir):
        if tables.is_sink_temp_name(posixpath.basename(folder)) or tables.is_spill_dir_name(posixpath.basename(folder)):
            files = [path for path in _listing(folder) if _is_temporary(path)]
            leftovers += files or [folder]  # a killed run's files, or its empty folder
    legacy = tuple(path for path in fileio.glob(tables.legacy_outputs_glob(output_dir))
                   if tables.legacy_output_table(output_dir, path))
    return ExistingOutputs(tuple(sorted(committed)), tuple(sorted(parts)), tuple(sorted(leftovers)), legacy)


def _is_temporary(path: str) -> bool:
    """A killed run's temporary file: any file in a sink's temporary folder (named by Beam), a spill segment."""
    folder = posixpath.basename(posixpath.dirname(path))
    return tables.is_sink_temp_name(folder) or (tables.is_spill_dir_name(folder)
                                                and units.is_spill_name(posixpath.basename(path)))


def delete_outputs(output_dir: str, existing: ExistingOutputs) -> None:
    """Removes the files of earlier runs (``--overwrite``) or the leftovers of a killed one: shards, checkpoint
    files, the sinks' temporary files; then their folders where they are left empty. Legacy shards beside the
    directory are not this layout's: they are left alone."""
    paths = [path for path, _, _ in existing.committed] + list(existing.checkpoint_parts) + list(existing.leftovers)

    def temporary_folder(name: str) -> bool:
        return tables.is_sink_temp_name(name) or tables.is_spill_dir_name(name)

    temp_folders = [path for path in existing.leftovers if temporary_folder(posixpath.basename(path))]
    files = [path for path in paths if path not in temp_folders]
    folders = {posixpath.dirname(path) for path in files
               if temporary_folder(posixpath.basename(posixpath.dirname(path)))} | set(temp_folders)
    refused = fileio.undeletable(output_dir, files)
    if not refused:
        refused = fileio.delete_owned(output_dir, files, sorted(folders) + [tables.checkpoint_dir(output_dir)])
    if refused:
        raise ValueError(f"--output_dir {output_dir}: not deleting {', '.join(refused[:3])}: symbolic links or not "
                         "regular files where the job's own files should be; remove them yourself")


def remove_checkpoint(directory: str, *committed) -> None:
    """Deletes the checkpoint's parts, listed (object stores have no directory to delete); runs after the run's
    shards are committed (its side inputs are their file names). Files that are not checkpoint parts stay."""
    files = [path for path in _listing(directory)
             if tables.checkpoint_part_table(posixpath.basename(path))]
    fileio.delete_owned(posixpath.dirname(directory.rstrip("/")), files, [directory])
    if files:
        logging.info("removed %d checkpoint files in %s: their rows are in the committed shards", len(files),
                     directory)


@beam.typehints.with_output_types(str)
class CheckpointRows(beam.DoFn):
    """Commits rows to Parquet files in OUT/checkpoint/ every `every_rows` rows and at each bundle's end.

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
        path = posixpath.join(self._directory, tables.checkpoint_part_name(self._kind, digest))
        temporary = path + tables.INCOMPLETE_SUFFIX
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
def _WriteShards(row_collections, output_dir: str, table: str, run_number: int, schema: pa.Schema,  # pylint: disable=invalid-name
                 num_shards: int):
    """Rows (several PCollections) -> Parquet shards ``OUT/<table>/runK-SSSSS-of-NNNNN.parquet``; their names.
    The sink's temporary folder is beside the table's, never in it."""
    return (row_collections
            | "AllRows" >> beam.Flatten()
            | "Records" >> beam.Map(tables.as_record)
            | "Parquet" >> sinks.WriteParquetShards(
                tables.shard_prefix(output_dir, table, run_number), schema, num_shards,
                temp_parent=output_dir, temp_label=f"{table}-run{run_number}"))


def finish_run(checkpoint: str, output_dir: str, run_number: int, written_captions, written_errors,
               caption_count: int, error_count: int, *checkpointed) -> None:
    """After the run's shards are committed (the side inputs are their names and row counts): removes the
    checkpoint and the spill files of compressed archives, and a table's shards of a run after the first when they
    hold no row (a rerun that found nothing new to caption adds no empty files; run 1 keeps its shards, empty or
    not, so that both tables exist)."""
    remove_checkpoint(checkpoint)
    spill_dir = tables.spill_dir(output_dir, run_number)  # this run's own folder: its segments, listed
    fileio.delete_owned(output_dir, [path for path in _listing(spill_dir) if units.is_spill_name(
        posixpath.basename(path))], [spill_dir])
    if run_number > 1:
        empty = (list(written_captions) if not caption_count else []) + (list(written_errors) if not error_count
                                                                         else [])
        fileio.delete_owned(output_dir, empty)


class WriteCaptionOutputs(beam.PTransform):
    """(caption rows, error rows) of this run -> checkpoint while running, then the run's shards, then the
    checkpoint and the run's spill files removed; returns the written shard names."""

    def __init__(self, output_dir: str, run_number: int, num_shards: int, checkpoint_rows: int,
                 existing: ExistingOutputs):
        super().__init__()
        self._output_dir, self._run, self._num_shards = output_dir, run_number, num_shards
        self._checkpoint_rows, self._existing = checkpoint_rows, existing

    def expand(self, rows):
        captions, errors = rows
        pipeline = captions.pipeline
        captions = captions | "CountCaptions" >> beam.ParDo(CountRows())
        errors = errors | "CountErrors" >> beam.ParDo(CountRows())
        checkpoint = tables.checkpoint_dir(self._output_dir)
        checkpointed = (
            captions | "CheckpointCaptions" >> beam.ParDo(CheckpointRows(
                checkpoint, CAPTIONS, tables.CAPTION_SCHEMA, self._checkpoint_rows)),
            errors | "CheckpointErrors" >> beam.ParDo(CheckpointRows(
                checkpoint, ERRORS, tables.ERROR_SCHEMA, self._checkpoint_rows)))
        adopted = pipeline | "AdoptCheckpoint" >> AdoptCheckpoint(
            self._existing.checkpoint_parts,
            tuple(path for path, _, _ in self._existing.committed) + self._existing.legacy)
        all_captions = (captions, adopted.captions) | "RunCaptions" >> beam.Flatten()
        all_errors = (errors, adopted.errors) | "RunErrors" >> beam.Flatten()
        written_captions = (all_captions,) | "WriteCaptions" >> _WriteShards(
            self._output_dir, CAPTIONS, self._run, tables.CAPTION_SCHEMA, self._num_shards)
        written_errors = (all_errors,) | "WriteErrors" >> _WriteShards(
            self._output_dir, ERRORS, self._run, tables.ERROR_SCHEMA, 1)
        caption_count = all_captions | "CaptionCount" >> beam.combiners.Count.Globally()
        error_count = all_errors | "ErrorCount" >> beam.combiners.Count.Globally()
        _ = (pipeline
             | "CheckpointDir" >> beam.Create([checkpoint])
             | "FinishRun" >> beam.Map(
                 finish_run, self._output_dir, self._run,
                 beam.pvalue.AsList(written_captions), beam.pvalue.AsList(written_errors),
                 beam.pvalue.AsSingleton(caption_count), beam.pvalue.AsSingleton(error_count),
                 beam.pvalue.AsList(checkpointed[0]), beam.pvalue.AsList(checkpointed[1])))
        return written_captions, written_errors
