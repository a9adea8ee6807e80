"""Resume that is exact: runs killed with SIGKILL at three moments, then rerun with --skip_existing, leave each input
in exactly one row; checkpoint removal and --overwrite work where directories are only name prefixes (GCS, S3)."""
import io
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

from beam_jobs.caption import job as caption_job
from beam_jobs.caption import outputs
from schemas import tables
from tests.conftest import REPO_ROOT, local_test_pipeline
from tests.support import prefixfs
from tests.support.builders import (
    argv,
    build_inputs,
    check_every_input_once,
    crash_on_third_caption_batch,
    read_outputs,
)
from tests.support.fakes import FAKE_MODELS

SMALL_BATCHES = ["--decode_batch_size", "2", "--checkpoint_rows", "1", "--min_batch_size", "1",
                 "--max_batch_size", "2"]


@pytest.fixture(scope="module")
def inputs(sample_dataset, tmp_path_factory):
    return build_inputs(str(tmp_path_factory.mktemp("inputs")), sample_dataset)


def _files_under(directory):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names)


@pytest.mark.parametrize("moment", ["expansion", "captioning", "final_write"])
def test_killed_runs_resume_to_each_input_once(moment, inputs, fake_bundle, tmp_path):
    patterns, expected = inputs
    prefix = str(tmp_path / "out" / "captions")
    args = argv(patterns, fake_bundle, prefix, *SMALL_BATCHES)
    killed = subprocess.run([sys.executable, os.path.join("tests", "support", "kill_during.py"), moment, *args],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = _files_under(tmp_path / "out")
    checkpoint = tables.checkpoint_dir(prefix)
    if moment == "captioning":
        assert any(path.startswith(checkpoint + "/") for path in left)  # rows committed before the kill
    if moment == "final_write":
        assert any(tables.shard_run(os.path.basename(path)) for path in left)  # one shard made it...
        assert any(path.startswith(checkpoint + "/") for path in left)  # ...and the checkpoint is still there

    caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, expected)
    assert not os.path.exists(tables.checkpoint_dir(prefix))
    assert not [path for path in _files_under(tmp_path / "out") if "beam-temp" in path]


def _parquet_bytes(rows, schema):
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def test_checkpoint_removal_and_overwrite_without_directories(inputs, fake_bundle, monkeypatch):
    patterns, expected = inputs
    prefixfs.clear()
    prefix = "prefixfs://bucket/out/captions"
    checkpoint = tables.checkpoint_dir(prefix)
    args = argv(patterns, fake_bundle, prefix, *SMALL_BATCHES)

    crash_on_third_caption_batch(monkeypatch)
    with pytest.raises(Exception, match="simulated worker loss"):
        caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    parts = prefixfs.paths(checkpoint + "/")
    assert parts and not FileSystems.exists(checkpoint)  # rows were committed; the "directory" is no object
    assert not read_outputs(prefix)[0]

    monkeypatch.undo()
    caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert prefixfs.paths(checkpoint) == []  # adopted into the shards, then every object removed
    check_every_input_once(*read_outputs(prefix), expected)

    # Stale objects an earlier run could leave: a checkpoint part naming an image no input has, a killed sink's
    # temporary file. --overwrite must remove them, and every shard, before the new run writes anything.
    prefixfs.put(f"{checkpoint}/{tables.checkpoint_part_name('captions', 'f' * 64)}", _parquet_bytes(
        [tables.as_record(tables.caption_row("prefixfs://bucket/elsewhere.jpg", "a stale caption", -1.0, "old", 1,
                                             1))], tables.CAPTION_SCHEMA))
    prefixfs.put(f"{prefix}/{tables.sink_temp_name('captions', 2, '0123abcd' * 4)}/part", b"partial")
    prefixfs.put(f"prefixfs://bucket/out/beam-temp-captions-other--{'0123abcd' * 4}/part", b"another prefix's")
    seen_when_the_run_starts = []
    original_build = caption_job.build_pipeline

    def build(pipeline, config):
        seen_when_the_run_starts.extend(prefixfs.paths())
        original_build(pipeline, config)
    monkeypatch.setattr(caption_job.JOB, "build_pipeline", build)
    caption_job.run(args + ["--overwrite"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    other = f"prefixfs://bucket/out/beam-temp-captions-other--{'0123abcd' * 4}/part"
    assert seen_when_the_run_starts == [other]  # all of this prefix's files gone; another prefix's untouched
    prefixfs.delete_object(other)
    written = prefixfs.paths()
    assert written and all(tables.shard_run(path.rsplit("/", 1)[1]) == 1 for path in written)  # run 1 again, alone
    check_every_input_once(*read_outputs(prefix), expected)


def test_rows_of_a_checkpoint_already_in_committed_shards_are_not_written_twice(inputs, fake_bundle, tmp_path):
    """A run killed between committing its shards and removing its checkpoint: the rerun adopts nothing twice."""
    patterns, expected = inputs
    prefix = str(tmp_path / "captions")
    args = argv(patterns, fake_bundle, prefix)
    caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    os.makedirs(tables.checkpoint_dir(prefix))
    for kind, rows, schema in (("captions", captions, tables.CAPTION_SCHEMA), ("errors", errors, tables.ERROR_SCHEMA)):
        with open(os.path.join(tables.checkpoint_dir(prefix), tables.checkpoint_part_name(kind, "a" * 64)),
                  "wb") as handle:
            handle.write(_parquet_bytes(rows, schema))
    existing = outputs.existing_outputs(prefix)
    assert len(existing.checkpoint_parts) == 2
    caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(prefix), expected)
    assert not os.path.exists(tables.checkpoint_dir(prefix))
