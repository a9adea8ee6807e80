"""Fake models for the tests of graph routing, resume and counting (as Beam's own ``ml/inference/base_test.py``
fakes its model handlers): the jobs run end to end on real runners, files and archives, but no TensorFlow.

`FakeModels` plugs into both jobs' ``run(..., models=FAKE_MODELS)`` (`beam_jobs.models.Models`):

- features: the means of a 4x4 grid of the pixels per channel, scaled to [-1, 1] (48 float32), an exact function
  of the decoded pixels, so two paths that decode a photo differently give different features;
- captions: words of the bundle's vocabulary chosen by a SHA-256 of the feature bytes, so equal features give
  equal captions and any other features almost surely other captions;
- the bundle: `write_fake_bundle` writes a bundle.json and vocab.txt for these features (no decoder.keras).

Run as a module, it runs a job's command line with the fakes (the handlers pickle by their importable names for
worker processes)::

    python -m tests.support.fakes caption|extract JOB_ARGS...
"""
import hashlib
import os
import sys

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.models import Models

FAKE_WEIGHTS_SHA256 = hashlib.sha256(b"imcap fake features").hexdigest()
FAKE_FEATURE_DIM = 48
GRID = 4
FAKE_WORDS = ("a", "dog", "cat", "runs", "on", "the", "grass", "in", "red", "shirt", "man", "water")


def fake_features(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [48]: per-channel means over a 4x4 grid, in [-1, 1]."""
    cells = [block.reshape(-1, 3).mean(axis=0)
             for band in np.array_split(pixels.astype(np.float64), GRID, axis=0)
             for block in np.array_split(band, GRID, axis=1)]
    return (np.concatenate(cells) / 127.5 - 1.0).astype(np.float32)


class _Loaded:
    """What a fake handler's load_model returns (Beam's shared model cache needs a weak-referenceable object)."""

    def __init__(self, words=()):
        self.words = tuple(words)


class FakeFeatureHandler(ModelHandler[np.ndarray, np.ndarray, _Loaded]):
    def __init__(self, image_size: int, min_batch_size: int = 1, max_batch_size: int = 32):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._image_size = image_size

    def load_model(self) -> _Loaded:
        return _Loaded()

    def run_inference(self, batch, model, inference_args=None):
        for pixels in batch:
            assert pixels.shape == (self._image_size, self._image_size, 3) and pixels.dtype == np.uint8, pixels.shape
        log = os.environ.get("FAKE_WORKER_LOG")
        if log:  # which worker process featurized each image (tests of how work spreads over workers)
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n" * len(batch))
        return [fake_features(pixels) for pixels in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(pixels.nbytes for pixels in batch)


def fake_caption(features: np.ndarray, words) -> tuple[str, float]:
    digest = hashlib.sha256(np.asarray(features, np.float32).tobytes()).digest()
    length = 3 + digest[0] % 4
    return " ".join(words[byte % len(words)] for byte in digest[1:1 + length]), -1.0 - digest[-1] / 64.0


class FakeCaptionHandler(ModelHandler[np.ndarray, tuple, _Loaded]):
    def __init__(self, model_dir: str, max_batch_size: int = 128):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._model_dir = model_dir

    def load_model(self) -> _Loaded:
        from schemas.vocabulary import RESERVED_TOKENS, VOCAB_FILE, Vocabulary
        vocabulary = Vocabulary.load(os.path.join(self._model_dir, VOCAB_FILE))
        return _Loaded(token for token in vocabulary.tokens if token not in RESERVED_TOKENS)

    def run_inference(self, batch, model, inference_args=None):
        return [fake_caption(features, model.words) for features in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(features.nbytes for features in batch)


class FakeModels(Models):
    """Both jobs' models, faked: launch checks without building anything, handlers without TensorFlow."""

    def auto_backend(self):
        return "keras"  # the fakes compute no real features

    def feature_weights(self, backbone, weights, image_size):
        from trainer.features import ExtractorInfo
        return ExtractorInfo(FAKE_WEIGHTS_SHA256, FAKE_FEATURE_DIM, GRID)

    def open_bundle(self, model_dirs):
        from trainer.bundle import load_bundles
        return load_bundles(model_dirs, with_decoder=False)

    def feature_handler(self, spec, *, min_batch_size=1, max_batch_size=32):
        return FakeFeatureHandler(spec.image_size, min_batch_size=min_batch_size, max_batch_size=max_batch_size)

    def caption_handler(self, model_dirs, beam_width, length_penalty, *, max_batch_size=128, **_):
        first = model_dirs if isinstance(model_dirs, str) else model_dirs[0]
        return FakeCaptionHandler(first, max_batch_size=max_batch_size)


FAKE_MODELS = FakeModels()


def write_fake_bundle(model_dir: str, image_size: int = 71) -> str:
    """A bundle for the fake features: bundle.json and vocab.txt as trainer.task writes them, no decoder."""
    from schemas import bundle as bundle_schema
    from schemas import fileio
    from schemas.bundle import BundleKeys, DecodingKeys
    from schemas.vocabulary import VOCAB_FILE, Vocabulary
    os.makedirs(model_dir, exist_ok=True)
    vocabulary = Vocabulary.from_word_counts({word: 1 for word in FAKE_WORDS})
    vocabulary.save(os.path.join(model_dir, VOCAB_FILE))
    fileio.write_json(os.path.join(model_dir, bundle_schema.CONFIG_FILE), {
        BundleKeys.FORMAT_VERSION: bundle_schema.FORMAT_VERSION, BundleKeys.MODEL_ID: "imcap-fake00000000",
        BundleKeys.BACKBONE: "xception", BundleKeys.WEIGHTS: "none", BundleKeys.WEIGHTS_SHA256: FAKE_WEIGHTS_SHA256,
        BundleKeys.IMAGE_SIZE: image_size, BundleKeys.PREPROCESSING: "fake: grid means",
        BundleKeys.FEATURE_DIM: FAKE_FEATURE_DIM, BundleKeys.MAX_LENGTH: 8, BundleKeys.VOCAB_SIZE: len(vocabulary),
        BundleKeys.DECODING: {DecodingKeys.BEAM_WIDTH: 2, DecodingKeys.LENGTH_PENALTY: 0.0},
        BundleKeys.TRAINING: {"note": "fake bundle of tests/support/fakes.py"}})
    return model_dir


def main(argv=None) -> int:
    from beam_jobs.caption import job as caption_job
    from beam_jobs.extract import job as extract_job
    job, *args = sys.argv[1:] if argv is None else argv
    module = {"caption": caption_job, "extract": extract_job}[job]
    return module.JOB.main(args, models=FAKE_MODELS, tensorflow=False)


if __name__ == "__main__":
    from tests.support.fakes import (
        main as package_main,  # the handlers must pickle as tests.support.fakes.*, not __main__.*
    )
    sys.exit(package_main())
