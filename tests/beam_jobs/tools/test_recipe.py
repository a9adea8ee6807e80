"""imcap-recipe: extract with grids, attention training by CIDEr-D, SCST rounds, evaluation; resumable by stage."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from beam_jobs.tools import recipe
from tests.conftest import REPO_ROOT, TEST_IMAGE_SIZE


def _argv(dataset: str, out: str, *extra: str) -> list[str]:
    return ["--dataset_dir", dataset, "--output_dir", out, "--weights", "none", "--image_size",
            str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--epochs", "2", "--scst_rounds", "1", *extra]


def _state(out) -> dict:
    with open(os.path.join(out, recipe.STATE_FILE), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def finished(sample_dataset, tmp_path_factory):
    """A whole recipe run on the sample dataset (2 epochs, 1 SCST round)."""
    out = str(tmp_path_factory.mktemp("recipe") / "out")
    assert recipe.main(_argv(sample_dataset, out)) == 0
    return out


@pytest.mark.integration
def test_every_stage_runs_once_and_the_model_is_the_last_rounds(finished, sample_dataset, capfd):
    state = _state(finished)
    assert list(state["stages"]) == recipe.stage_names(1) == ["extract", "train", "scst1", "evaluate"]
    assert all(stage["seconds"] > 0 for stage in state["stages"].values())
    scores = state["stages"]["evaluate"]["scores"]
    assert scores["split"] == "dev" and scores["beam_width"] == 3 and 0 <= scores["cider_d"]
    model, last = os.path.join(finished, "model"), os.path.join(finished, "scst1")
    with open(os.path.join(model, "bundle.json"), encoding="utf-8") as one, \
            open(os.path.join(last, "bundle.json"), encoding="utf-8") as other:
        assert json.load(one) == json.load(other)
    assert json.load(open(os.path.join(model, "bundle.json"), encoding="utf-8"))["decoder"] == "attention"
    assert os.path.isfile(os.path.join(model, "eval_dev_beam3.json"))
    assert os.path.isdir(os.path.join(finished, "features", "extractor_int8"))  # the default int8 features
    trained = json.load(open(os.path.join(finished, "attention", "bundle.json"), encoding="utf-8"))["training"]
    assert trained["hyperparameters"]["label_smoothing"] == recipe.LABEL_SMOOTHING == state["settings"][
        "label_smoothing"] == 0.1
    capfd.readouterr()
    assert recipe.main(_argv(sample_dataset, finished)) == 0  # a rerun keeps every finished stage
    assert _state(finished)["stages"] == state["stages"]
    assert capfd.readouterr().err.count("done in a previous run") == 4


@pytest.mark.integration
def test_other_settings_are_refused_and_more_scst_rounds_go_on(finished, sample_dataset, capfd):
    out = finished + "-more"
    shutil.copytree(finished, out)
    assert recipe.main(_argv(sample_dataset, out, "--seed", "1")) == 2
    assert "other settings (--seed 0 then, 1 now)" in capfd.readouterr().err
    argv = _argv(sample_dataset, out)
    argv[argv.index("--scst_rounds") + 1] = "3"
    assert recipe.main(argv) == 0
    state = _state(out)
    assert list(state["stages"]) == ["extract", "train", "scst1", "scst2", "scst3", "evaluate"]
    assert state["settings"]["scst_rounds"] == 3
    assert state["stages"]["scst1"] == _state(finished)["stages"]["scst1"]

    def model_id(name):
        return json.load(open(os.path.join(out, name, "bundle.json"), encoding="utf-8"))["model_id"]
    for before, after in (("attention", "scst1"), ("scst1", "scst2"), ("scst2", "scst3")):
        stage = state["stages"][after]
        # a round that kept its starting weights says so, and the next one (same seed, same start) is skipped
        assert ("kept" in stage) == (model_id(after) == model_id(before))
        assert ("skipped" in stage) == ("kept" in state["stages"].get(before, {}))
        assert not stage.get("skipped") or stage["seconds"] == 0
    assert state["stages"]["evaluate"]["scores"]["model_id"] == model_id("scst3") == model_id("model")


def test_a_folder_of_other_files_is_refused_and_restart_removes_only_the_recipes(tmp_path, sample_dataset):
    out = tmp_path / "out"
    (out / "features").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(recipe.RecipeError, match="already holds features but no recipe.json"):
        recipe.load_state(str(out), {"scst_rounds": 3}, restart=False)
    settings = {key: getattr(recipe.parse_args(_argv(sample_dataset, str(out))), key) for key in recipe.SETTINGS}
    for name in ("attention", "scst1", "scst9", "model"):  # scst9: not a round of this run (1 round)
        (out / name).mkdir()
        (out / name / "bundle.json").write_text("{}")
    recipe.save_state(str(out), {"settings": settings, "stages": {"extract": {"seconds": 1.0}}})
    state = recipe.load_state(str(out), settings, restart=True)
    assert state == {"settings": settings, "stages": {}}
    assert sorted(os.listdir(out)) == ["notes.txt", "scst9"]


def test_a_damaged_state_a_file_and_a_second_run_are_refused_with_what_to_do(tmp_path, sample_dataset):
    out = tmp_path / "out"
    out.mkdir()
    (out / recipe.STATE_FILE).write_text('{"settings": {"seed": 0}, "sta')  # a write cut short
    settings = {key: getattr(recipe.parse_args(_argv(sample_dataset, str(out))), key) for key in recipe.SETTINGS}
    with pytest.raises(recipe.RecipeError, match="recipe.json is damaged .*pass --restart"):
        recipe.load_state(str(out), settings, restart=False)
    assert recipe.load_state(str(out), settings, restart=True) == {"settings": settings, "stages": {}}
    (tmp_path / "file").write_text("")
    with pytest.raises(recipe.RecipeError, match="is a file, not a folder"):
        recipe.run(recipe.parse_args(_argv(sample_dataset, str(tmp_path / "file"))))
    with recipe._only_run(str(out)):  # pylint: disable=protected-access
        with pytest.raises(recipe.RecipeError, match="another imcap-recipe is running"):
            recipe.run(recipe.parse_args(_argv(sample_dataset, str(out))))


def test_a_run_recorded_before_label_smoothing_was_a_setting_resumes_as_it_ran(tmp_path, sample_dataset):
    out = tmp_path / "out"
    out.mkdir()
    settings = {key: getattr(recipe.parse_args(_argv(sample_dataset, str(out))), key) for key in recipe.SETTINGS}
    before = {key: value for key, value in settings.items() if key != "label_smoothing"}
    recipe.save_state(str(out), {"settings": before, "stages": {"extract": {"seconds": 1.0}}})
    # it trained without smoothing: the default (0.1) is another setting, --label_smoothing 0 is that run
    with pytest.raises(recipe.RecipeError, match="--label_smoothing 0.0 then, 0.1 now"):
        recipe.load_state(str(out), settings, restart=False)
    state = recipe.load_state(str(out), {**settings, "label_smoothing": 0.0}, restart=False)
    assert state["stages"] == {"extract": {"seconds": 1.0}} and state["settings"]["label_smoothing"] == 0.0
    assert recipe.parse_args(_argv(sample_dataset, str(out), "--label_smoothing", "0")).label_smoothing == 0.0


def test_flags_that_cannot_make_the_recipes_model_fail_fast(sample_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        recipe.parse_args(_argv(sample_dataset, str(tmp_path / "o"), "--spatial_grid", "none"))
    assert "the attention decoder needs a grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.parse_args(["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "o"), "--weights",
                           str(tmp_path / "absent.h5")])
    assert "absent.h5: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.parse_args(_argv(sample_dataset, "gs://bucket/recipe"))
    assert "needs a local folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.parse_args(_argv(sample_dataset, str(tmp_path / "o"), "--label_smoothing", "1.5"))
    assert "expected a value in [0, 1), got 1.5" in capsys.readouterr().err


@pytest.mark.integration
def test_a_run_killed_while_training_resumes_its_training(sample_dataset, tmp_path):
    out = str(tmp_path / "out")
    argv = _argv(sample_dataset, out)
    argv[argv.index("--epochs") + 1] = "4"
    command = [sys.executable, "-m", "beam_jobs.tools.recipe", *argv]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("Epoch 3/4"):  # epochs 1 and 2 are finished and checkpointed
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert list(_state(out)["stages"]) == ["extract"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "[1/4] extract: done in a previous run" in log
    assert "resuming an interrupted run" in log and "Epoch 1/4" not in log
    assert list(_state(out)["stages"]) == ["extract", "train", "scst1", "evaluate"]
