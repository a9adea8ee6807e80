"""The caption job on a folder, a tar, a tar.gz, a zip and a list file with broken inputs among them."""
import os
import subprocess
import sys
import tarfile

import pyarrow.parquet as pq
import pytest

from beam_jobs import runtime
from beam_jobs.caption import job as caption_job
from beam_jobs.tools import gallery
from schemas import fileio, tables
from schemas.bundle import BundleKeys
from tests.conftest import REPO_ROOT, local_test_pipeline
from tests.support.builders import (
    argv,
    build_inputs,
    check_every_input_once,
    crash_on_third_caption_batch,
    read_outputs,
    shard_paths,
)
from tests.support.fakes import FAKE_MODELS


@pytest.fixture(scope="module")
def inputs(sample_dataset, tmp_path_factory):
    return build_inputs(str(tmp_path_factory.mktemp("inputs")), sample_dataset)


@pytest.fixture(scope="module")
def captioned(inputs, fake_bundle, tmp_path_factory):
    patterns, _ = inputs
    prefix = os.path.join(str(tmp_path_factory.mktemp("captioned")), "captions")
    result = caption_job.run(argv(patterns, fake_bundle, prefix), test_pipeline=local_test_pipeline(),
                                models=FAKE_MODELS)
    return prefix, runtime.metric_counters(result)


def test_every_input_is_captioned_or_an_error(inputs, captioned, fake_bundle):
    _, expected = inputs
    prefix, counters = captioned
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, expected)
    model_id = fileio.read_json(os.path.join(fake_bundle, "bundle.json"))[BundleKeys.MODEL_ID]
    for row in captions:
        assert row[tables.MODEL_ID] == model_id
        assert (row[tables.WIDTH], row[tables.HEIGHT]) == (96, 96)
        assert row[tables.LOG_PROB] < 0
    assert all(row[tables.MESSAGE] for row in errors)
    assert counters["images_captioned"] == len(captions) == 12
    assert len({row[tables.CAPTION] for row in captions}) == 12  # 12 photos, 12 pixel-dependent (fake) captions
    assert counters["errors_not_an_image"] == 2 and counters["archive_members"] == 6
    assert not os.path.exists(tables.checkpoint_dir(prefix))  # removed once the shards were committed


@pytest.mark.integration
def test_multi_processing_command_gives_the_same_rows(inputs, captioned, fake_bundle, tmp_path):
    patterns, _ = inputs
    prefix = str(tmp_path / "captions")
    done = subprocess.run([sys.executable, "-m", "tests.support.fakes", "caption",
                           *argv(patterns, fake_bundle, prefix, "--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2")], check=True, cwd=REPO_ROOT, capture_output=True,
                          text=True)
    mine, my_errors = read_outputs(prefix)
    assert f"captioned {len(mine):,}; failed {len(my_errors):,}" in done.stderr  # the summary reaches the user
    theirs, their_errors = read_outputs(captioned[0])
    key = lambda row: row[tables.IMAGE_URI]  # noqa: E731
    assert [(r[tables.IMAGE_URI], r[tables.CAPTION]) for r in sorted(mine, key=key)] == \
        [(r[tables.IMAGE_URI], r[tables.CAPTION]) for r in sorted(theirs, key=key)]
    for a, b in zip(sorted(mine, key=key), sorted(theirs, key=key)):
        assert a[tables.LOG_PROB] == pytest.approx(b[tables.LOG_PROB], abs=1e-3)
    assert sorted(my_errors, key=key) == sorted(their_errors, key=key)


def test_job_logging_survives_a_library_configuring_logging_first():
    """Beam's GCP modules log a warning at import time when google-apitools is absent, which configures the root
    logger at WARNING; the jobs' INFO summaries must still be shown."""
    script = ("import logging; logging.warning('a library speaks first'); from beam_jobs import runtime; "
              "runtime.setup_logging(); logging.info('the job summary')")
    done = subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT, capture_output=True, text=True)
    assert "INFO the job summary" in done.stderr


@pytest.mark.integration
def test_resume_captions_only_new_images(inputs, fake_bundle, tmp_path):
    patterns, expected = inputs
    prefix = str(tmp_path / "captions")
    caption_job.run(argv(patterns[:1], fake_bundle, prefix), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    first, _ = read_outputs(prefix)
    with pytest.raises(ValueError, match="already has outputs.*--skip_existing"):
        caption_job.run(argv(patterns, fake_bundle, prefix), models=FAKE_MODELS)
    result = caption_job.run(argv(patterns, fake_bundle, prefix, "--skip_existing"),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    counters = runtime.metric_counters(result)
    assert counters["skipped_existing"] == 8  # the folder's 4 images and 4 error rows
    assert counters["images_captioned"] == 12 - len(first)
    for table in (tables.CAPTIONS_TABLE, tables.ERRORS_TABLE):
        runs = sorted(tables.shard_run(os.path.basename(p)) for p in shard_paths(prefix, table))
        assert runs[0] == 1 and runs[-1] == 2, (table, runs)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, expected)

    # A third run with nothing new writes no shards at all (no empty run-3 files), and loses nothing.
    before = {table: shard_paths(prefix, table) for table in (tables.CAPTIONS_TABLE, tables.ERRORS_TABLE)}
    result = caption_job.run(argv(patterns, fake_bundle, prefix, "--skip_existing"),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert runtime.metric_counters(result)["skipped_existing"] == len(expected)
    assert {table: shard_paths(prefix, table) for table in before} == before
    check_every_input_once(*read_outputs(prefix), expected)


@pytest.mark.integration
def test_rerun_after_an_interruption_does_only_the_rest(inputs, fake_bundle, tmp_path, monkeypatch):
    patterns, expected = inputs
    prefix = str(tmp_path / "captions")
    calls = crash_on_third_caption_batch(monkeypatch)
    args = argv(patterns, fake_bundle, prefix, "--decode_batch_size", "2", "--checkpoint_rows", "1",
                "--min_batch_size", "1")
    with pytest.raises(Exception, match="simulated worker loss"):
        caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert not shard_paths(prefix, tables.CAPTIONS_TABLE) and not shard_paths(prefix, tables.ERRORS_TABLE)
    parts = fileio.glob(os.path.join(tables.checkpoint_dir(prefix), "*.parquet"))  # nothing committed by the sinks...
    checkpointed = sum(pq.read_table(p).num_rows for p in parts if os.path.basename(p).startswith("captions-"))
    assert checkpointed == sum(calls[:2]) > 0  # ...but the rows of the two finished batches are kept

    monkeypatch.undo()
    result = caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    counters = runtime.metric_counters(result)
    assert counters["images_captioned"] == 12 - checkpointed
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, expected)
    assert not os.path.exists(tables.checkpoint_dir(prefix))


def test_bundle_weights_are_enforced(inputs, sample_bundle, other_weights, tmp_path):
    other = other_weights
    with pytest.raises(ValueError, match="captions would be meaningless"):
        caption_job.run(argv(inputs[0], sample_bundle, str(tmp_path / "c"), "--weights", other))


def test_the_real_models_caption_what_the_decoder_says_of_the_extract_jobs_features(sample_dataset, sample_features,
                                                                                    sample_bundle, tmp_path):
    """Xception and the bundle's decoder on the workers: each photo, loose or in an archive, gets the caption the
    bundle's decoder gives to that photo's features in the extract job's records (same network, same pixels)."""
    import numpy as np

    from schemas import records
    from trainer.bundle import Bundle
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    dev = records.read_records(sample_features, "dev")
    paths = [os.path.join(source, record[records.IMAGE_ID]) for record in dev]
    tar_path = str(tmp_path / "dev.tar")
    with tarfile.open(tar_path, "w") as archive:
        for index, path in enumerate(paths):
            archive.add(path, arcname=f"m{index}.jpg")
    prefix = str(tmp_path / "captions")
    caption_job.run(argv([*paths, tar_path], sample_bundle, prefix, "--beam_width", "2"),
                       test_pipeline=local_test_pipeline())
    captions, errors = read_outputs(prefix)
    assert not errors and len(captions) == 2 * len(paths) == 4
    got = {row[tables.IMAGE_URI]: (row[tables.CAPTION], row[tables.LOG_PROB]) for row in captions}
    bundle = Bundle(sample_bundle)  # the job decodes with the bundle's n-gram blocking
    expected = bundle.decoder.caption(np.stack([r[records.IMAGE_FEATURES] for r in dev]), 2,
                                      no_repeat_ngram_size=bundle.decoding_for().no_repeat_ngram_size)
    for index, (path, (text, log_prob)) in enumerate(zip(paths, expected)):
        for uri in (path, f"{tar_path}!m{index}.jpg"):
            assert got[uri][0] == text and text
            assert got[uri][1] == pytest.approx(log_prob, abs=1e-3)


def test_inputs_that_match_nothing_fail_fast(fake_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*nothing.*matches no file"):
        caption_job.run(argv([str(tmp_path / "nothing" / "*.jpg")], fake_bundle, str(tmp_path / "c")),
                           models=FAKE_MODELS)


def test_gallery_shows_every_caption_and_error(inputs, captioned, tmp_path):
    prefix, _ = captioned
    output = str(tmp_path / "gallery.html")
    captions, errors = read_outputs(prefix)
    for given in (prefix, prefix + "/", os.path.join(prefix, "*", "*.parquet")):  # the directory, or a glob
        assert gallery.main(["--captions", given, "--output", output]) == 0
        page = open(output, encoding="utf-8").read()
        assert page.count("data:image/jpeg;base64,") == len(captions)  # archive members included
        for row in captions:
            assert row[tables.IMAGE_URI] in page
        for row in errors:
            assert row[tables.IMAGE_URI] in page and row[tables.ERROR] in page
    assert gallery.main(["--captions", str(tmp_path / "none-*.parquet"), "--output", output]) == 2  # one line
    assert gallery.main(["--captions", str(tmp_path), "--output", output]) == 2  # a folder of no tables


@pytest.mark.parametrize("output", ["out/*", "out/[ab]", "out/c{1,2}", " "])
def test_output_directories_with_glob_characters_are_refused(output, capsys):
    with pytest.raises(SystemExit):
        caption_job.parse_args(["--input", "x.jpg", "--model_dir", "m", "--output_dir", output])
    assert "--output_dir" in capsys.readouterr().err



def test_progress_says_how_many_of_how_many_and_when_it_ends(caplog):
    progress = runtime.ProgressLog("inputs read", interval_s=0.0)
    with caplog.at_level("INFO"):
        progress.add(total=4000)
        progress.add(total=4000)
    assert "inputs read: 2 of 4,000 (this worker)" in caplog.text and "ETA" in caplog.text
    caplog.clear()
    early = runtime.ProgressLog("images featurized", interval_s=30.0, first_s=0.0)  # a short job still says it
    with caplog.at_level("INFO"):
        for _ in range(5):
            early.add(total=300)
    messages = [record.getMessage().split(",")[0] for record in caplog.records]
    assert messages == ["images featurized: 1 of 300 (this worker)"]
