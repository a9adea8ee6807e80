"""The caption job on a folder, a tar, a tar.gz, a zip and a list file with broken inputs among them."""
import os
import subprocess
import sys
import shutil
import tarfile
import zipfile

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import caption_images, gallery, runtime
from beam_jobs.inference import CaptionModelHandler
from schemas import images, tables
from schemas.bundle import BundleKeys
from schemas import fileio
from tests.conftest import REPO_ROOT, local_test_pipeline


@pytest.fixture(scope="module")
def inputs(sample_dataset, tmp_path_factory):
    """Input files and what must become of each: {uri: None (a caption) or error class}."""
    root = str(tmp_path_factory.mktemp("inputs"))
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    names = sorted(os.listdir(source))
    expected = {}

    folder = os.path.join(root, "folder")
    os.makedirs(folder)
    for name in names[0:4]:
        shutil.copy(os.path.join(source, name), folder)
        expected[os.path.join(folder, name)] = None
    open(os.path.join(folder, "zero.jpg"), "wb").close()
    expected[os.path.join(folder, "zero.jpg")] = images.EMPTY_FILE
    data = open(os.path.join(source, names[0]), "rb").read()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as handle:
        handle.write(data[: len(data) // 3])
    expected[os.path.join(folder, "truncated.jpg")] = images.DECODE_ERROR
    with open(os.path.join(folder, "text.jpg"), "w") as handle:
        handle.write("plain text wearing a .jpg name")
    expected[os.path.join(folder, "text.jpg")] = images.UNSUPPORTED_FORMAT
    with open(os.path.join(folder, "readme.md"), "w") as handle:
        handle.write("# photos\n")
    expected[os.path.join(folder, "readme.md")] = images.NOT_AN_IMAGE

    tar_path = os.path.join(root, "batch.tar")
    with tarfile.open(tar_path, "w") as archive:
        for name in names[4:6]:
            archive.add(os.path.join(source, name), arcname=f"pics/{name}")
            expected[f"{tar_path}!pics/{name}"] = None
        notes = os.path.join(root, "notes.txt")
        with open(notes, "w") as handle:
            handle.write("not an image")
        archive.add(notes, arcname="pics/notes.txt")
        expected[f"{tar_path}!pics/notes.txt"] = images.NOT_AN_IMAGE
    tgz_path = os.path.join(root, "batch.tar.gz")
    with tarfile.open(tgz_path, "w:gz") as archive:
        for name in names[6:8]:
            archive.add(os.path.join(source, name), arcname=name)
            expected[f"{tgz_path}!{name}"] = None
    zip_path = os.path.join(root, "batch.zip")
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in names[8:10]:
            archive.write(os.path.join(source, name), arcname=f"dir/{name}")
            expected[f"{zip_path}!dir/{name}"] = None
    corrupt = os.path.join(root, "corrupt.tar.gz")
    with open(corrupt, "wb") as handle:
        handle.write(b"\x1f\x8b\x08" + os.urandom(500))
    expected[corrupt] = images.CORRUPT_ARCHIVE

    listed_dir = os.path.join(root, "listed")
    os.makedirs(listed_dir)
    shutil.copy(os.path.join(source, names[11]), listed_dir)
    with open(os.path.join(root, "list.txt"), "w") as handle:
        handle.write(f"# images to caption\n{os.path.join(source, names[10])}\nlisted/{names[11]}\nlisted/gone.jpg\n")
    expected[os.path.join(source, names[10])] = None
    expected[os.path.join(listed_dir, names[11])] = None
    expected[os.path.join(listed_dir, "gone.jpg")] = images.MISSING_FILE

    patterns = [os.path.join(folder, "*"), tar_path, tgz_path, zip_path, corrupt, os.path.join(root, "list.txt")]
    return patterns, expected


def _argv(patterns, model_dir, prefix, *extra):
    argv = ["--model_dir", model_dir, "--output", prefix, *extra]
    for pattern in patterns:
        argv += ["--input", pattern]
    return argv


def _outputs(prefix):
    captions, errors = [], []
    for path in fileio.glob(tables.output_glob(prefix)):
        kind = tables.classify_output(prefix, path)
        assert kind is not None, path
        table = pq.read_table(path)
        expected_schema = tables.ERROR_SCHEMA if kind[0] == "errors" else tables.CAPTION_SCHEMA
        assert table.schema.equals(expected_schema, check_metadata=False), path
        (errors if kind[0] == "errors" else captions).extend(table.to_pylist())
    return captions, errors


def _check_every_input_once(captions, errors, expected):
    caption_uris = [row[tables.IMAGE_URI] for row in captions]
    error_classes = {row[tables.IMAGE_URI]: row[tables.ERROR] for row in errors}
    assert len(caption_uris) == len(set(caption_uris)) and len(error_classes) == len(errors)
    assert set(caption_uris) == {uri for uri, outcome in expected.items() if outcome is None}
    assert error_classes == {uri: outcome for uri, outcome in expected.items() if outcome is not None}


@pytest.fixture(scope="module")
def captioned(inputs, sample_bundle, tmp_path_factory):
    patterns, _ = inputs
    prefix = os.path.join(str(tmp_path_factory.mktemp("captioned")), "captions")
    result = caption_images.run(_argv(patterns, sample_bundle, prefix), test_pipeline=local_test_pipeline())
    return prefix, runtime.metric_counters(result)


def test_every_input_is_captioned_or_an_error(inputs, captioned, sample_bundle):
    _, expected = inputs
    prefix, counters = captioned
    captions, errors = _outputs(prefix)
    _check_every_input_once(captions, errors, expected)
    model_id = fileio.read_json(os.path.join(sample_bundle, "bundle.json"))[BundleKeys.MODEL_ID]
    for row in captions:
        assert row[tables.MODEL_ID] == model_id
        assert (row[tables.WIDTH], row[tables.HEIGHT]) == (96, 96)
        assert row[tables.LOG_PROB] < 0
    assert all(row[tables.MESSAGE] for row in errors)
    assert counters["images_captioned"] == len(captions) == 12
    assert counters["errors_not_an_image"] == 2 and counters["archive_members"] == 6
    assert not os.path.exists(tables.checkpoint_dir(prefix))  # removed once the shards were committed


def test_multi_processing_command_gives_the_same_rows(inputs, captioned, sample_bundle, tmp_path):
    patterns, _ = inputs
    prefix = str(tmp_path / "captions")
    done = subprocess.run([sys.executable, "-m", "beam_jobs.caption_images",
                           *_argv(patterns, sample_bundle, prefix, "--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2")], check=True, cwd=REPO_ROOT, capture_output=True,
                          text=True)
    mine, my_errors = _outputs(prefix)
    assert f"captioned {len(mine):,}; failed {len(my_errors):,}" in done.stderr  # the summary reaches the user
    theirs, their_errors = _outputs(captioned[0])
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


def test_resume_captions_only_new_images(inputs, sample_bundle, tmp_path):
    patterns, expected = inputs
    prefix = str(tmp_path / "captions")
    caption_images.run(_argv(patterns[:1], sample_bundle, prefix), test_pipeline=local_test_pipeline())
    first, _ = _outputs(prefix)
    with pytest.raises(ValueError, match="already has outputs.*--skip_existing"):
        caption_images.run(_argv(patterns, sample_bundle, prefix))
    result = caption_images.run(_argv(patterns, sample_bundle, prefix, "--skip_existing"),
                                test_pipeline=local_test_pipeline())
    counters = runtime.metric_counters(result)
    assert counters["skipped_existing"] == 8  # the folder's 4 images and 4 error rows
    assert counters["images_captioned"] == 12 - len(first)
    second_run = [p for p in fileio.glob(tables.output_glob(prefix)) if tables.classify_output(prefix, p)[1] == 2]
    assert second_run and all(os.path.basename(p).startswith(("captions-r2-", "captions-errors-r2-"))
                              for p in second_run)
    captions, errors = _outputs(prefix)
    _check_every_input_once(captions, errors, expected)


class _Crash(Exception):
    pass


def test_rerun_after_an_interruption_does_only_the_rest(inputs, sample_bundle, tmp_path, monkeypatch):
    patterns, expected = inputs
    prefix = str(tmp_path / "captions")
    original = CaptionModelHandler.run_inference
    calls = []

    def crash_on_third_batch(self, batch, model, inference_args=None):
        calls.append(len(batch))
        if len(calls) == 3:
            raise _Crash("simulated worker loss")
        return original(self, batch, model, inference_args)

    monkeypatch.setattr(CaptionModelHandler, "run_inference", crash_on_third_batch)
    argv = _argv(patterns, sample_bundle, prefix, "--decode_batch_size", "2", "--checkpoint_rows", "1",
                 "--min_batch_size", "1")
    with pytest.raises(Exception, match="simulated worker loss"):
        caption_images.run(argv, test_pipeline=local_test_pipeline())
    assert not fileio.glob(tables.output_glob(prefix))  # nothing committed by the sinks...
    parts = fileio.glob(os.path.join(tables.checkpoint_dir(prefix), "*.parquet"))
    checkpointed = sum(pq.read_table(p).num_rows for p in parts if os.path.basename(p).startswith("captions-"))
    assert checkpointed == sum(calls[:2]) > 0  # ...but the rows of the two finished batches are kept

    monkeypatch.setattr(CaptionModelHandler, "run_inference", original)
    result = caption_images.run(argv + ["--skip_existing"], test_pipeline=local_test_pipeline())
    counters = runtime.metric_counters(result)
    assert counters["images_captioned"] == 12 - checkpointed
    captions, errors = _outputs(prefix)
    _check_every_input_once(captions, errors, expected)
    assert not os.path.exists(tables.checkpoint_dir(prefix))


def test_bundle_weights_are_enforced(inputs, sample_bundle, tmp_path):
    from schemas import backbones
    other = str(tmp_path / "other.weights.h5")
    model = backbones.build_feature_extractor(backbones.XCEPTION, "none", 71)
    model.set_weights([w * 1.01 for w in model.get_weights()])
    model.save_weights(other)
    with pytest.raises(ValueError, match="captions would be meaningless"):
        caption_images.run(_argv(inputs[0], sample_bundle, str(tmp_path / "c"), "--weights", other))


def test_inputs_that_match_nothing_fail_fast(sample_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*nothing.*matches no file"):
        caption_images.run(_argv([str(tmp_path / "nothing" / "*.jpg")], sample_bundle, str(tmp_path / "c")))


def test_gallery_shows_every_caption_and_error(inputs, captioned, tmp_path):
    prefix, _ = captioned
    output = str(tmp_path / "gallery.html")
    assert gallery.main(["--captions", tables.output_glob(prefix), "--output", output]) == 0
    page = open(output, encoding="utf-8").read()
    captions, errors = _outputs(prefix)
    assert page.count("data:image/jpeg;base64,") == len(captions)  # archive members included
    for row in captions:
        assert row[tables.IMAGE_URI] in page
    for row in errors:
        assert row[tables.IMAGE_URI] in page and row[tables.ERROR] in page
