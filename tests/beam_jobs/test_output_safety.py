"""Nothing lost, nothing touched that is not the job's: arguments as a shell gives them, outputs next to other files,
deletion that never goes through a symbolic link, and the two tables read as users read them."""
import os
import shutil

import pyarrow.dataset as ds
import pytest

from beam_jobs import runtime
from beam_jobs.caption import job as caption_job
from beam_jobs.extract import job as extract_job
from schemas import tables
from tests.conftest import local_test_pipeline
from tests.support.builders import argv, check_every_input_once, read_outputs, shard_paths
from tests.support.fakes import FAKE_MODELS


@pytest.fixture
def photos(sample_dataset, tmp_path):
    """Four photos in a folder, and each one's expected outcome (a caption)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    for name in sorted(os.listdir(source))[:4]:
        shutil.copy(os.path.join(source, name), folder)
    paths = sorted(str(path) for path in folder.iterdir())
    return paths, {path: None for path in paths}


# -- arguments as a shell gives them ----------------------------------------------------------------------------

def test_an_unquoted_glob_the_shell_expanded_captions_every_file(photos, fake_bundle, tmp_path):
    paths, expected = photos
    out = str(tmp_path / "out")
    # imcap-caption --input photos/*.jpg ...: the shell passes four paths after one --input
    caption_job.run(["--input", *paths, "--model_dir", fake_bundle, "--output_dir", out],
                       test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), expected)


@pytest.mark.parametrize("args", [
    ["--model_dir", "M", "--output_dir", "O", "--input", "a.jpg", "--skip_existing", "b.jpg"],  # after a switch
    ["--model_dir", "M", "b.jpg", "--output_dir", "O", "--input", "a.jpg"],  # after a one-value flag
])
def test_a_path_no_flag_takes_is_an_error_that_names_it(args, capsys):
    with pytest.raises(SystemExit) as stopped:
        caption_job.parse_args(args)
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "b.jpg" in message and "--input takes several paths" in message


def test_extract_job_takes_several_dataset_dirs_and_refuses_stray_ones(capsys):
    args, _ = extract_job.parse_args(["--dataset_dir", "d1", "d2", "--output_dir", "o", "--dataset_dir", "d3"])
    assert args.dataset_dir == ["d1", "d2", "d3"]
    with pytest.raises(SystemExit):
        extract_job.parse_args(["--dataset_dir", "d1", "--output_dir", "o", "d2"])
    assert "d2" in capsys.readouterr().err


def test_dashed_flags_are_the_underscored_ones_and_typos_name_the_flag(capsys):
    args, beam_args = caption_job.parse_args(
        ["--input", "a.jpg", "--model-dir", "M", "--output-dir=O", "--beam-width", "2",
         "--direct-running-mode", "multi_processing", "--direct-num-workers=2"])
    assert (args.model_dir, args.output_dir, args.beam_width) == (["M"], "O", 2)
    options = runtime.pipeline_options(beam_args).get_all_options()
    assert (options["direct_running_mode"], options["direct_num_workers"]) == ("multi_processing", 2)
    with pytest.raises(SystemExit):
        caption_job.parse_args(["--input", "a.jpg", "--model_dir", "M", "--output_dir", "O", "--beam_widht", "2"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--beam_widht" in error and "did you mean --beam_width" in error
    assert "unexpected argument" not in error  # "2" is the unknown flag's value, not a stray path


@pytest.mark.parametrize("command", ["trainer.task", "trainer.evaluate", "trainer.predict", "trainer.scst",
                                     "beam_jobs.tools.gallery", "beam_jobs.tools.quantize",
                                     "beam_jobs.tools.sample_dataset"])
def test_every_command_takes_dashed_flags_and_names_an_unknown_one(command, capsys):
    import importlib
    module = importlib.import_module(command)
    parse = getattr(module, "parse_args", None)
    if parse is None:  # commands whose parser lives in main(): an unknown flag stops them before any work
        with pytest.raises(SystemExit):
            module.main(["--no-such-flag", "1"])
    else:
        with pytest.raises(SystemExit):
            parse(["--no-such-flag", "1"])
    assert "unrecognized flag --no-such-flag" in capsys.readouterr().err


def test_trainer_flags_with_dashes(tmp_path):
    from trainer import evaluate, task
    args = task.parse_args(["--data-dir", "d", "--model-dir", "m", "--batch-size", "16"])
    assert (args.data_dir, args.model_dir, args.batch_size) == ("d", "m", 16)
    assert evaluate.parse_args(["--data-dir", "d", "--model-dir", "m", "--beam-width", "3"]).beam_width == 3


# -- outputs next to other files --------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("runner", [None, "BundleBasedDirectRunner"])
def test_outputs_never_touch_a_neighbours_files(runner, photos, fake_bundle, tmp_path):
    """Beam's sinks delete every PREFIX*-of-N file before renaming theirs: a neighbouring prefix's shards, and on
    runners that finalize the error sink first, the job's own error table. Neither may happen."""
    paths, expected = photos
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    expected[str(broken)] = "unsupported_format"
    folder = tmp_path / "out"
    folder.mkdir()
    neighbours = {
        "captions-other-00000-of-00001.parquet": b"a neighbouring prefix's shard",
        "captions-x-errors-00000-of-00001.parquet": b"a neighbouring prefix's errors",
        "notes.txt": b"the user's notes",
        "run1-00000-of-00001.parquet": b"named like a shard, outside the tables",
    }
    for name, data in neighbours.items():
        (folder / name).write_bytes(data)
    other = folder / "other" / "captions"
    other.mkdir(parents=True)
    (other / "run1-00000-of-00001.parquet").write_bytes(b"another output directory's table")
    out = str(folder / "captions")
    args = argv([str(tmp_path / "photos" / "*")], fake_bundle, out)
    if runner:
        caption_job.run(args + [f"--runner={runner}"], models=FAKE_MODELS)
    else:
        caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), expected)
    for name, data in neighbours.items():
        assert (folder / name).read_bytes() == data, name
    assert (other / "run1-00000-of-00001.parquet").read_bytes() == b"another output directory's table"
    assert sorted(os.listdir(out)) == ["captions", "errors"]  # no temporary folder or checkpoint left


def test_files_the_job_did_not_write_in_its_folders_are_refused_and_kept(photos, fake_bundle, tmp_path):
    paths, _ = photos
    out = tmp_path / "out"
    for folder, name in (("checkpoint", "notes.txt"), ("captions", "mine.parquet"), ("errors", "x.csv")):
        (out / folder).mkdir(parents=True)
        (out / folder / name).write_bytes(b"someone else's")
        for flags in ((), ("--overwrite",), ("--skip_existing",)):
            with pytest.raises(ValueError, match=f"{folder} holds files the caption job did not write.*{name}"):
                caption_job.run(argv(paths, fake_bundle, str(out), *flags), models=FAKE_MODELS)
        assert (out / folder / name).read_bytes() == b"someone else's"
        shutil.rmtree(out / folder)


@pytest.mark.parametrize("runner", [None, "BundleBasedDirectRunner"])
def test_a_relative_output_dir_as_the_readme_writes_it(runner, photos, fake_bundle, tmp_path, monkeypatch):
    paths, expected = photos
    monkeypatch.chdir(tmp_path)
    args = argv(paths, fake_bundle, "out/run1")
    if runner:
        caption_job.run(args + [f"--runner={runner}"], models=FAKE_MODELS)
    else:
        caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(str(tmp_path / "out" / "run1")), expected)
    assert sorted(os.listdir(tmp_path / "out" / "run1")) == ["captions", "errors"]


def test_an_output_dir_that_is_a_file_is_refused_at_launch(photos, fake_bundle, tmp_path):
    paths, _ = photos
    (tmp_path / "out").write_bytes(b"the user's file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        caption_job.run(argv(paths, fake_bundle, str(tmp_path / "out")), models=FAKE_MODELS)
    assert (tmp_path / "out").read_bytes() == b"the user's file"


def test_a_symbolic_link_in_the_jobs_folders_is_never_followed(photos, fake_bundle, tmp_path):
    paths, expected = photos
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = {"data.bin": b"precious", tables.checkpoint_part_name("captions", "0" * 64): b"precious too"}
    for name, data in precious.items():
        (elsewhere / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "checkpoint")  # the checkpoint folder itself a link to someone's folder
    for flags in ((), ("--overwrite",)):
        with pytest.raises(ValueError, match="checkpoint is a symbolic link"):
            caption_job.run(argv(paths, fake_bundle, str(out), *flags), models=FAKE_MODELS)
    os.unlink(out / "checkpoint")
    (out / "checkpoint").mkdir()
    # a link inside it, named like a checkpoint part: not the job's file
    os.symlink(elsewhere / "data.bin", out / "checkpoint" / tables.checkpoint_part_name("errors", "1" * 64))
    with pytest.raises(ValueError, match="checkpoint holds files the caption job did not write"):
        caption_job.run(argv(paths, fake_bundle, str(out), "--overwrite"), models=FAKE_MODELS)
    for name, data in precious.items():
        assert (elsewhere / name).read_bytes() == data


@pytest.mark.integration
def test_overwrite_and_leftovers_delete_only_the_jobs_files(photos, fake_bundle, tmp_path):
    paths, expected = photos
    out = tmp_path / "out"
    caption_job.run(argv(paths, fake_bundle, str(out)), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    # what a killed run leaves: a sink's temporary folder and an incomplete checkpoint part; and a stranger's folder
    killed = out / tables.sink_temp_name("captions", 2, "ab" * 16)
    killed.mkdir()
    (killed / "part.parquet").write_bytes(b"partial")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / (tables.checkpoint_part_name("captions", "c" * 64) + tables.INCOMPLETE_SUFFIX)).write_bytes(
        b"half")
    stranger = out / "beam-temp-captions-run2-not-hex"
    stranger.mkdir()
    (stranger / "theirs").write_bytes(b"theirs")
    caption_job.run(argv(paths, fake_bundle, str(out), "--overwrite"), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    check_every_input_once(*read_outputs(str(out)), expected)
    assert sorted(os.listdir(out)) == ["beam-temp-captions-run2-not-hex", "captions", "errors"]
    assert (stranger / "theirs").read_bytes() == b"theirs"
    assert [tables.shard_run(os.path.basename(p)) for p in shard_paths(str(out), "captions")] == [1]


def test_extract_job_overwrite_never_deletes_through_a_link_and_splits_named_alike_coexist(sample_copy, tmp_path):
    """A split ``val`` and a split ``val-hard`` with the same shard count: Beam's sink of ``val`` deleted
    ``val-hard-*-of-N`` (its glob ``val-*-of-N``). And --overwrite must not delete through a linked folder."""
    text = os.path.join(sample_copy, "Flickr8k_text")
    dev = open(os.path.join(text, "Flickr_8k.devImages.txt")).read().split()
    test = open(os.path.join(text, "Flickr_8k.testImages.txt")).read().split()
    with open(os.path.join(text, "val.txt"), "w") as handle:
        handle.write("\n".join(dev))
    with open(os.path.join(text, "val-hard.txt"), "w") as handle:
        handle.write("\n".join(test))
    out = tmp_path / "features"
    args = ["--dataset_dir", sample_copy, "--output_dir", str(out), "--weights", "none", "--image_size", "71",
            "--min_word_count", "1", "--inference_backend", "keras", "--num_shards", "1",
            "--split_file", f"train={os.path.join(text, 'Flickr_8k.trainImages.txt')}",
            "--split_file", f"val={os.path.join(text, 'val.txt')}",
            "--split_file", f"val-hard={os.path.join(text, 'val-hard.txt')}"]
    extract_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    names = sorted(os.listdir(out))
    assert "val-00000-of-00001.tfrecord" in names and "val-hard-00000-of-00001.tfrecord" in names, names

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "extractor.xml").write_bytes(b"someone's model")
    os.symlink(elsewhere, out / "extractor_int8")
    with pytest.raises(ValueError, match="not deleting .*extractor_int8/extractor.xml: symbolic links"):
        extract_job.run(args + ["--overwrite"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert (elsewhere / "extractor.xml").read_bytes() == b"someone's model"
    assert "val-hard-00000-of-00001.tfrecord" in os.listdir(out)


def test_trainer_deletes_only_its_own_checkpoint_and_cache_files(tmp_path):
    from trainer import task
    model_dir = tmp_path / "model"
    (model_dir / task.CHECKPOINTS).mkdir(parents=True)
    (model_dir / task.CHECKPOINTS / "mine.txt").write_text("the user's")
    (model_dir / task.CHECKPOINTS / task.STATE_FILE).write_text("{}")
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("grids-my-notes.txt", "grids-train.index", "grids-train.data-00000-of-00001", "other.bin",
                 "grids-train_0.data-00000-of-00001.tempstate8812", "grids-train_0.lockfile", "grids-dev_1.index"):
        (cache / name).write_text("x")
    task.remove_own_checkpoints(str(model_dir / task.CHECKPOINTS))
    task.remove_stale_cache(str(cache), ("train", "dev"))
    assert sorted(os.listdir(model_dir / task.CHECKPOINTS)) == ["mine.txt"]
    assert sorted(os.listdir(cache)) == ["grids-my-notes.txt", "other.bin"]


# -- the tables as users read them ------------------------------------------------------------------------------

@pytest.fixture
def captioned_with_errors(photos, fake_bundle, tmp_path):
    paths, expected = photos
    broken = tmp_path / "photos" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = str(tmp_path / "out")
    caption_job.run(argv([str(tmp_path / "photos")], fake_bundle, out), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    return out, len(paths), 1


def test_each_table_reads_as_one_table_with_pyarrow(captioned_with_errors):
    out, captioned, failed = captioned_with_errors
    captions = ds.dataset(os.path.join(out, "captions"), format="parquet").to_table()
    errors = ds.dataset(os.path.join(out, "errors"), format="parquet").to_table()
    assert captions.schema.names == tables.CAPTION_SCHEMA.names and captions.num_rows == captioned
    assert errors.schema.names == tables.ERROR_SCHEMA.names and errors.num_rows == failed


def test_each_table_reads_with_pandas_and_duckdb_as_the_readme_says(captioned_with_errors):
    out, captioned, failed = captioned_with_errors
    pandas = pytest.importorskip("pandas")
    captions = pandas.read_parquet(os.path.join(out, "captions"))
    errors = pandas.read_parquet(os.path.join(out, "errors"))
    assert len(captions) == captioned and captions["caption"].notna().all()
    assert len(errors) == failed and list(errors.columns) == ["image_uri", "error", "message"]
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/captions/*.parquet')").fetchall()[0][0]
    assert got == captioned
    assert duckdb.sql(f"SELECT error FROM '{out}/errors/*.parquet'").fetchall() == [("decode_error",)]


def test_each_table_reads_with_hugging_face_datasets(captioned_with_errors, tmp_path):
    out, captioned, failed = captioned_with_errors
    datasets = pytest.importorskip("datasets")
    captions = datasets.load_dataset("parquet", data_files=f"{out}/captions/*.parquet", split="train",
                                     cache_dir=str(tmp_path / "hf"))
    errors = datasets.load_dataset("parquet", data_files=f"{out}/errors/*.parquet", split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert captions.num_rows == captioned and errors.num_rows == failed


@pytest.mark.integration
def test_shards_of_the_earlier_layout_are_resumed_from_and_never_deleted(photos, fake_bundle, tmp_path):
    """An imcap before the table folders wrote PREFIX-SSSSS-of-NNNNN.parquet and PREFIX-errors-...: a rerun with
    --skip_existing treats their rows as done; --overwrite leaves them (they are not this layout's files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths, expected = photos
    out = tmp_path / "out" / "captions"
    done = tables.caption_row(paths[0], "an old caption", -1.0, "old-model", 96, 96)
    old_shard = tmp_path / "out" / "captions-00000-of-00001.parquet"
    old_shard.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([tables.as_record(done)], schema=tables.CAPTION_SCHEMA), str(old_shard))
    with pytest.raises(ValueError, match="1 shards of an earlier imcap beside it"):
        caption_job.run(argv(paths, fake_bundle, str(out)), models=FAKE_MODELS)
    result = caption_job.run(argv(paths, fake_bundle, str(out), "--skip_existing"),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert runtime.metric_counters(result)["skipped_existing"] == 1
    captions, errors = read_outputs(str(out))
    assert sorted(row[tables.IMAGE_URI] for row in captions) == paths[1:] and not errors
    caption_job.run(argv(paths, fake_bundle, str(out), "--overwrite"), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    assert old_shard.exists()
    check_every_input_once(*read_outputs(str(out)), expected)


def test_files_the_shell_expanded_whose_names_hold_glob_characters(photos, fake_bundle, tmp_path):
    """``--input photos/*.jpg`` unquoted passes ``photos/a[1].jpg``: that file, not a glob to match again."""
    paths, _ = photos
    odd = [os.path.join(os.path.dirname(paths[0]), name) for name in ("a[1].jpg", "b*.jpg", "c?.jpg")]
    for source, target in zip(paths, odd):
        os.rename(source, target)
    folder = tmp_path / "odd [folder]"
    shutil.copytree(os.path.dirname(paths[0]), folder)
    out = str(tmp_path / "out")
    caption_job.run(["--input", *odd, paths[3], str(folder), "--model_dir", fake_bundle, "--output_dir", out],
                       test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    expected = {path: None for path in odd + [paths[3]]}
    expected.update({str(folder / name): None for name in os.listdir(folder)})
    check_every_input_once(*read_outputs(out), expected)


def test_on_an_object_store_nested_objects_are_foreign_and_folder_placeholders_are_not(photos, fake_bundle):
    from tests.support import prefixfs
    paths, expected = photos
    prefixfs.clear()
    out = "prefixfs://bucket/out"
    prefixfs.put(f"{out}/captions/", b"")  # a console's folder placeholder: nobody's table
    caption_job.run(argv(paths, fake_bundle, out), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), expected)
    prefixfs.put(f"{out}/captions/sub/x.parquet", b"a reader of captions/ would read this too")
    with pytest.raises(ValueError, match="holds files the caption job did not write .*x.parquet"):
        caption_job.run(argv(paths, fake_bundle, out, "--skip_existing"), models=FAKE_MODELS)
    assert prefixfs.get(f"{out}/captions/sub/x.parquet").startswith(b"a reader")


def test_flag_values_argparse_takes_are_not_taken_for_flags(capsys):
    from trainer import task
    args, beam_args = caption_job.parse_args(["--input", "a.jpg", "--model_dir", "M", "--output_dir", "O",
                                                 "--length_penalty", "-0.5", "--environment_config", "-v /a:/b im"])
    assert args.length_penalty == -0.5 and beam_args == ["--environment_config", "-v /a:/b im"]
    assert task.parse_args(["--data_dir", "d", "--model_dir", "m", "--epoch", "2"]).epochs == 2  # an abbreviation
    with pytest.raises(SystemExit):
        caption_job.parse_args(["--input", "a.jpg", "--model_dir", "M", "--output_dir", "O", "--", "b.jpg"])
    assert "'--' ends the flags" in capsys.readouterr().err
