"""imcap-weights: Keras' ImageNet Xception weights installed for offline use, checked tensor by tensor."""
import inspect
import os
import subprocess
import sys

import pytest

from beam_jobs.tools import weights as weights_tool
from schemas import backbones
from tests.conftest import REPO_ROOT
from tests.trainer.test_features import GENUINE_WEIGHTS


def test_the_published_file_is_named_as_keras_names_it():
    from keras.src.applications import xception  # the module that downloads it

    source = inspect.getsource(xception)
    assert xception.WEIGHTS_PATH_NO_TOP == backbones.KERAS_WEIGHTS_URL
    assert backbones.KERAS_WEIGHTS_URL.endswith("/" + backbones.KERAS_WEIGHTS_FILE)
    assert f'file_hash="{backbones.KERAS_WEIGHTS_MD5}"' in source
    assert xception.WEIGHTS_PATH.endswith("/" + backbones.KERAS_TOP_WEIGHTS_FILE)
    assert f'file_hash="{backbones.KERAS_TOP_WEIGHTS_MD5}"' in source


@pytest.mark.integration
def test_keras_folder_is_the_one_keras_uses(tmp_path):
    """With and without $KERAS_HOME (Keras reads it when imported: its config module is reloaded for each)."""
    code = """if True:
        import importlib, os, sys
        from keras.src.backend import config
        from schemas import backbones
        for home in (None, sys.argv[1]):
            if home:
                os.environ["KERAS_HOME"] = home
            print(importlib.reload(config).keras_home(), backbones.keras_home())
    """
    env = {key: value for key, value in os.environ.items() if key != "KERAS_HOME"} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "elsewhere")], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    assert [line.split() for line in done.stdout.splitlines()] == [
        [str(tmp_path / ".keras")] * 2, [str(tmp_path / "elsewhere")] * 2]


def _save(path, seed: int, include_top: bool = False) -> str:
    import keras

    keras.utils.set_random_seed(seed)
    if include_top:
        model = keras.applications.Xception(weights=None, include_top=True)
    else:
        model = keras.applications.Xception(weights=None, include_top=False, pooling="avg", input_shape=(71, 71, 3))
    model.save_weights(str(path))
    return str(path)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """(a weights file without top, the same tensors in a file with the top, their tensor SHA-256)."""
    folder = tmp_path_factory.mktemp("weights")
    notop = _save(folder / "notop.weights.h5", seed=3)
    full = _save(folder / "full.weights.h5", seed=3, include_top=True)
    digest = backbones.weights_digest(weights_tool.load_tensors(notop))
    return notop, full, digest


def test_without_weights_the_status_says_keras_downloads_them_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert weights_tool.run([]) == 1
    said = capsys.readouterr().out
    assert f"Keras downloads {backbones.KERAS_WEIGHTS_URL} on first use" in said
    assert "imcap-weights install FILE" in said


@pytest.mark.integration  # builds and saves Xception weights: seconds
def test_other_weights_and_other_files_are_refused_and_nothing_is_installed(tmp_path, random_weights, capsys):
    home = tmp_path / "kh"
    notop, _, digest = random_weights
    with pytest.raises(weights_tool.WeightsError, match=f"not Keras' ImageNet ones .*{digest[:12]}.*"
                                                        f"{backbones.IMAGENET_SHA256[:12]}.*pass --weights"):
        weights_tool.install(notop, str(home))
    garbage = tmp_path / "notes.h5"
    garbage.write_text("not weights")
    with pytest.raises(weights_tool.WeightsError, match="is not a Keras weights file of Xception"):
        weights_tool.install(str(garbage), str(home))
    with pytest.raises(weights_tool.WeightsError, match="no such file"):
        weights_tool.install(str(tmp_path / "absent.h5"), str(home))
    assert not os.path.exists(home / "models") or os.listdir(home / "models") == []
    assert weights_tool.main(["install", str(garbage)]) == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("which", ["notop", "full"])
def test_the_same_tensors_in_any_weights_file_are_installed_and_found(tmp_path, random_weights, which):
    """Installed against the digest of the tensors it holds (a file without the top, or with it), the file lands
    beside Keras' own under imcap's name, loads to the same tensors, and is what 'imagenet' resolves to."""
    home = tmp_path / "kh"
    notop, full, digest = random_weights
    said = weights_tool.install(notop if which == "notop" else full, str(home), expected_sha256=digest)
    installed = home / "models" / backbones.INSTALLED_WEIGHTS_FILE
    assert str(installed) in said and os.listdir(home / "models") == [backbones.INSTALLED_WEIGHTS_FILE]
    assert backbones.weights_digest(weights_tool.load_tensors(str(installed))) == digest
    assert backbones.imagenet_source(str(home)) == (backbones.INSTALLED, str(installed))
    offline, lines = weights_tool.status(str(home))
    assert offline and lines[-1] == "--weights imagenet: imcap's checked copy, offline"


@pytest.mark.integration  # builds and saves Xception weights: seconds
def test_an_installed_copy_that_is_not_imagenet_is_refused_when_loaded(tmp_path, random_weights, monkeypatch):
    home = tmp_path / "kh"
    notop, _, digest = random_weights
    weights_tool.install(notop, str(home), expected_sha256=digest)  # as if its tensors had changed since
    monkeypatch.setenv("KERAS_HOME", str(home))
    with pytest.raises(ValueError, match="no longer holds Keras' ImageNet weights"):
        backbones.build_feature_extractor(backbones.XCEPTION, backbones.IMAGENET, 71)


@pytest.mark.integration  # builds and saves Xception weights: seconds
def test_a_damaged_keras_file_is_reported_and_comes_first(tmp_path, random_weights):
    home = tmp_path / "kh"
    notop, _, digest = random_weights
    weights_tool.install(notop, str(home), expected_sha256=digest)
    (home / "models" / backbones.KERAS_WEIGHTS_FILE).write_bytes(b"half a download")
    offline, lines = weights_tool.status(str(home))
    assert not offline
    assert any("MD5 differs from Keras' published one" in line for line in lines)
    assert "remove it to use imcap's checked copy offline" in lines[-1]


@pytest.mark.integration
@pytest.mark.skipif(not os.path.exists(GENUINE_WEIGHTS), reason="the genuine ImageNet Xception weights are not on "
                    "this machine")
def test_the_genuine_weights_installed_make_imagenet_work_offline(tmp_path, monkeypatch):
    home = tmp_path / "kh"
    monkeypatch.setenv("KERAS_HOME", str(home))
    assert weights_tool.run(["install", GENUINE_WEIGHTS]) == 0
    model = backbones.build_feature_extractor(backbones.XCEPTION, backbones.IMAGENET, 71)
    assert backbones.weights_digest(model) == backbones.IMAGENET_SHA256
    assert weights_tool.run([]) == 0
