"""The OpenVINO feature backend computes the same features as Keras (same weights, other arithmetic)."""
import os

import numpy as np
import pytest

from beam_jobs import extract_features
from beam_jobs.inference import FeatureExtractorHandler, check_backend
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


def _features(backend, pixels):
    handler = FeatureExtractorHandler("xception", "none", TEST_IMAGE_SIZE, backend=backend)
    model = handler.load_model()
    return np.stack(handler.run_inference(pixels, model)), model


def test_openvino_f32_matches_keras(pixels):
    keras_features, _ = _features("keras", pixels)
    openvino_features, model = _features("openvino-f32", pixels)
    assert model.precision == "f32"
    np.testing.assert_allclose(openvino_features, keras_features, rtol=1e-3, atol=1e-7)
    assert _cosines(openvino_features, keras_features).min() >= 0.99999


def test_openvino_default_precision_is_within_tolerance(pixels):
    keras_features, _ = _features("keras", pixels)
    openvino_features, model = _features("openvino", pixels)
    assert model.precision in ("bf16", "f32", "f16")
    assert _cosines(openvino_features, keras_features).min() >= 0.999


def test_extract_job_with_openvino_records_match(sample_dataset, sample_features, tmp_path):
    output_dir = str(tmp_path / "ov")
    extract_features.run(["--dataset_dir", sample_dataset, "--output_dir", output_dir, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend",
                          "openvino-f32"], test_pipeline=local_test_pipeline())
    assert records.read_records(output_dir, "dev")
    for split in ("train", "dev", "test"):
        mine, theirs = records.read_records(output_dir, split), records.read_records(sample_features, split)
        assert [r[records.CAPTION_IDS] for r in mine] == [r[records.CAPTION_IDS] for r in theirs]
        cosines = _cosines(np.stack([r[records.IMAGE_FEATURES] for r in mine]),
                           np.stack([r[records.IMAGE_FEATURES] for r in theirs]))
        assert cosines.min() >= 0.99999


def test_unknown_backend_fails_fast():
    with pytest.raises(ValueError, match="--inference_backend tpu"):
        check_backend("tpu")
