"""How both jobs write shards: no file they did not write is ever touched.

    records | WriteTFRecordShards(prefix, coder, suffix, num_shards)       # the extract job's splits
    rows | WriteParquetShards(prefix, schema, num_shards, temp_parent=...)  # Parquet tables of both jobs

Beam's file sinks, before renaming their temporary files, delete every existing file that matches
``PREFIX*-of-NNNNN<suffix>``: a sink writing ``out/val-`` deletes ``out/val-hard-00000-of-00004.tfrecord`` of
another split, and a prefix deletes a neighbouring prefix's shards. The sinks here do not: the jobs choose shard
names no other output has (the caption job's tables each have a folder of their own; the extract job's splits have
distinct ``<split>-SSSSS-of-NNNNN`` names), and a file with a name this run writes can only be left by an earlier
attempt of the same write, which the rename replaces.
(Deleting follows the same rule: `schemas.fileio.delete_owned`.)
"""
import os
import uuid

import apache_beam as beam
from apache_beam.io import parquetio, tfrecordio
from apache_beam.io.filesystems import FileSystems

from schemas.fileio import local_path

PARQUET_SUFFIX = ".parquet"


class _OwnFilesOnly:
    """Mixed into Beam's file sinks: no glob deletion before finalizing; an optional folder for temporary files."""

    temp_parent = None  # where the temporary folder goes (default: beside the prefix, as Beam does)
    temp_label = None  # its name: beam-temp-<label>-<uuid>

    def pre_finalize(self, init_result, writer_results):
        """Beam deletes every file matching ``PREFIX*-of-NNNNN<suffix>`` here; nothing is deleted instead. A
        destination that exists is an earlier attempt of this same write: the rename replaces it."""

    def pre_finalize_windowed(self, init_result, writer_results, window=None):
        """As `pre_finalize`, for windowed writes."""

    def initialize_write(self):
        temporary = super().initialize_write()
        if self.temp_parent:  # the shards' own folder: Beam's temporary folder, beside them, would have made it
            try:
                FileSystems.mkdirs(FileSystems.split(self.file_path_prefix.get())[0])
            except IOError:  # it exists
                pass
        return temporary

    def _create_temp_dir(self, file_path_prefix):
        # FileBasedSink's own hook (initialize_write and open_writer call it): the temporary folder may be kept out
        # of the folder readers list, so that a killed run leaves nothing a reader of that folder would take in.
        if not self.temp_parent:
            return super()._create_temp_dir(file_path_prefix)
        parent = self.temp_parent
        if local_path(parent) is not None:  # absolute, as Beam's own: finalizing matches the files by their paths
            parent = os.path.abspath(local_path(parent))
        return FileSystems.join(parent, f"beam-temp-{self.temp_label}-{uuid.uuid1().hex}")


class ParquetShardSink(_OwnFilesOnly, parquetio._ParquetSink):  # pylint: disable=protected-access
    pass


class TFRecordShardSink(_OwnFilesOnly, tfrecordio._TFRecordSink):  # pylint: disable=protected-access
    pass


_OWN_SINKS = {parquetio._ParquetSink: ParquetShardSink, tfrecordio._TFRecordSink: TFRecordShardSink}  # pylint: disable=protected-access


def _own_files_only(write: beam.PTransform, temp_parent: str | None = None, temp_label: str | None = None):
    """Beam's WriteToParquet/WriteToTFRecord with its sink made one of the classes above: the same object state, a
    class that adds only the three methods of `_OwnFilesOnly` (Beam builds the sink in the transform's
    constructor, with no hook to choose its class)."""
    sink = write._sink  # pylint: disable=protected-access
    sink.__class__ = _OWN_SINKS[type(sink)]
    sink.temp_parent, sink.temp_label = temp_parent, temp_label
    return write


def WriteParquetShards(prefix: str, schema, num_shards: int = 0, shard_name_template: str = "SSSSS-of-NNNNN",  # pylint: disable=invalid-name
                       temp_parent: str | None = None, temp_label: str | None = None) -> beam.PTransform:
    """Dicts -> Parquet shards ``<prefix>SSSSS-of-NNNNN.parquet``; a PCollection of the written file names."""
    return _own_files_only(beam.io.WriteToParquet(
        prefix, schema=schema, file_name_suffix=PARQUET_SUFFIX if shard_name_template else "",
        num_shards=num_shards, shard_name_template=shard_name_template), temp_parent, temp_label)


def WriteTFRecordShards(prefix: str, coder, file_name_suffix: str, num_shards: int = 0) -> beam.PTransform:  # pylint: disable=invalid-name
    """Encoded elements -> TFRecord shards ``<prefix>SSSSS-of-NNNNN<suffix>``; the written file names."""
    return _own_files_only(beam.io.WriteToTFRecord(prefix, coder=coder, file_name_suffix=file_name_suffix,
                                                   num_shards=num_shards))
