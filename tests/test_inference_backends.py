"""The OpenVINO feature backend computes the same features as Keras (same weights, other arithmetic)."""
import os

import numpy as np
import pytest

from beam_jobs import extract_features
from beam_jobs.inference import INFERENCE_BACKENDS, _OpenVinoExtractor, check_backend, load_feature_model
from schemas import records
from schemas.images import prepare_image
from tests.conftest import TEST_IMAGE_SIZE, local_test_pipeline

openvino = pytest.importorskip("openvino")


def _cosines(a, b):
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def pixels(sample_dataset):
    directory = os.path.join(sample_dataset, "Flicker8k_Dataset")
    return [prepare_image(open(os.path.join(directory, name), "rb").read(), TEST_IMAGE_SIZE)[0]
            for name in sorted(os.listdir(directory))[:6]]


@pytest.fixture(scope="module")
def keras_features(sample_dataset, sample_features):
    """Keras' features of the `pixels` images, as the extract job recorded them."""
    by_id = {record[records.IMAGE_ID]: record[records.IMAGE_FEATURES]
             for split in ("train", "dev", "test") for record in records.read_records(sample_features, split)}
    return np.stack([by_id[name] for name in sorted(os.listdir(os.path.join(sample_dataset, "Flicker8k_Dataset")))[:6]])


@pytest.fixture(scope="module")
def keras_model():
    from schemas import backbones
    return load_feature_model(backbones.XCEPTION, backbones.RANDOM_INIT, TEST_IMAGE_SIZE)


def _openvino_features(keras_model, precision, pixels):
    """The backend the handler builds for ``precision`` (`inference.INFERENCE_BACKENDS`), on one Keras model."""
    from schemas import backbones
    model, digest = keras_model
    compiled = _OpenVinoExtractor(model, TEST_IMAGE_SIZE, digest, precision)
    return compiled(backbones.preprocess(backbones.XCEPTION, np.stack(pixels))), compiled


def test_openvino_f32_matches_keras(pixels, keras_features, keras_model):
    openvino_features, model = _openvino_features(keras_model, INFERENCE_BACKENDS["openvino-f32"], pixels)
    assert model.precision == "f32"
    np.testing.assert_allclose(openvino_features, keras_features, rtol=1e-3, atol=1e-7)
    assert _cosines(openvino_features, keras_features).min() >= 0.99999


def test_openvino_default_precision_is_within_tolerance(pixels, keras_features, keras_model):
    openvino_features, model = _openvino_features(keras_model, INFERENCE_BACKENDS["openvino"], pixels)
    assert model.precision in ("bf16", "f32", "f16")
    assert _cosines(openvino_features, keras_features).min() >= 0.999


def test_extract_job_with_openvino_records_match(sample_dataset, sample_features, tmp_path):
    """With --spatial_grid the compiled network has two outputs (vector, map): both must land where Keras' do."""
    output_dir = str(tmp_path / "ov")
    extract_features.run(["--dataset_dir", sample_dataset, "--output_dir", output_dir, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend",
                          "openvino-f32", "--spatial_grid", "full"], test_pipeline=local_test_pipeline())
    assert records.read_records(output_dir, "dev")
    grid = (3, 3, 2048)
    for split in ("train", "dev", "test"):
        mine, theirs = records.read_records(output_dir, split, grid), records.read_records(sample_features, split, grid)
        assert [r[records.CAPTION_IDS] for r in mine] == [r[records.CAPTION_IDS] for r in theirs]
        cosines = _cosines(np.stack([r[records.IMAGE_FEATURES] for r in mine]),
                           np.stack([r[records.IMAGE_FEATURES] for r in theirs]))
        assert cosines.min() >= 0.99999
        mine_grids, their_grids = (np.stack([r[records.IMAGE_GRID] for r in rows]).astype(np.float32)
                                   for rows in (mine, theirs))
        assert mine_grids.shape == their_grids.shape == (len(theirs), *grid)
        np.testing.assert_allclose(mine_grids, their_grids, atol=2e-3 * np.abs(their_grids).max())  # float16 storage


def test_unknown_backend_fails_fast():
    with pytest.raises(ValueError, match="--inference_backend tpu"):
        check_backend("tpu")
