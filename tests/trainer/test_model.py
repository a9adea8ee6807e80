"""The decoders' training loss: plain and label-smoothed next-token cross-entropy over real positions."""
import json
import os

import keras
import numpy as np
import pytest

from tests.conftest import TINY_CAPTIONS as TINY
from tests.conftest import write_feature_records
from trainer import task
from trainer.bundle import Bundle
from trainer.model import SmoothedCaptionLoss, masked_loss


def _batch(seed=0, vocab=20):
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, vocab, (4, 7))
    targets[:, 5:] = 0  # padding after every real token, as the records batch it
    targets[0, 3:] = 0
    return targets, rng.normal(size=(4, 7, vocab)).astype(np.float32)


def _by_hand(targets, logits, smoothing):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    reference = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    per_position = (1 - smoothing) * reference + smoothing * -log_probs.mean(axis=-1)
    real = targets != 0
    return per_position[real].mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_loss_is_the_formula_over_real_positions(smoothing):
    targets, logits = _batch()
    assert float(SmoothedCaptionLoss(smoothing)(targets, logits)) == pytest.approx(
        _by_hand(targets, logits, smoothing), rel=1e-5)
    # Whatever the model says after a caption ends does not count.
    noisy = logits.copy()
    noisy[targets == 0] += np.random.default_rng(1).normal(scale=10.0, size=noisy[targets == 0].shape)
    assert float(SmoothedCaptionLoss(smoothing)(targets, noisy)) == pytest.approx(
        float(SmoothedCaptionLoss(smoothing)(targets, logits)), rel=1e-6)


def test_no_smoothing_is_the_default_loss_and_smoothing_penalizes_certainty():
    targets, logits = _batch()
    assert type(masked_loss()) is keras.losses.SparseCategoricalCrossentropy  # the default run is unchanged
    assert float(masked_loss()(targets, logits)) == pytest.approx(float(SmoothedCaptionLoss(0.0)(targets, logits)),
                                                                  rel=1e-6)
    assert isinstance(masked_loss(0.1), SmoothedCaptionLoss)
    # A model certain of the reference has (almost) no plain loss but a large smoothed one: that is the point.
    certain = np.where(np.eye(20, dtype=bool)[targets], 30.0, -30.0).astype(np.float32)
    assert float(masked_loss()(targets, certain)) < 1e-6
    assert float(SmoothedCaptionLoss(0.1)(targets, certain)) > 5.0
    restored = SmoothedCaptionLoss.from_config(SmoothedCaptionLoss(0.2).get_config())
    assert restored.label_smoothing == 0.2
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SmoothedCaptionLoss(1.0)


@pytest.mark.integration
def test_a_label_smoothed_run_learns_and_is_recorded_as_such(tmp_path):
    rng = np.random.default_rng(0)
    items = [(name, rng.normal(size=16).astype(np.float32), [caption]) for name, caption in TINY.items()]
    data_dir = str(tmp_path / "records")
    write_feature_records(data_dir, {"train": items, "dev": items})
    model_dir = str(tmp_path / "model")
    argv = ["--data_dir", data_dir, "--model_dir", model_dir, "--epochs", "30", "--learning_rate", "0.03",
            "--patience", "30", "--verbose", "0", "--embedding_dim", "32", "--units", "64", "--dropout", "0",
            "--batch_size", "8", "--label_smoothing", "0.1"]
    task.train(task.parse_args(argv))
    with open(os.path.join(model_dir, task.HISTORY_FILE), encoding="utf-8") as handle:
        history = json.load(handle)
    assert history[-1]["loss"] < history[0]["loss"] / 3 and history[-1]["accuracy"] == pytest.approx(1.0)
    bundle = Bundle(model_dir)
    assert bundle.config["training"]["hyperparameters"]["label_smoothing"] == 0.1
    from trainer import data
    _, features, references = data.references(data_dir, "train", 16)
    assert [text for text, _ in bundle.decoder.caption(features, beam_width=1)] == [r[0] for r in references]
    with open(os.path.join(model_dir, "checkpoints", task.RUN_FILE), encoding="utf-8") as handle:
        assert json.load(handle)["label_smoothing"] == 0.1


def test_a_resumed_run_keeps_its_label_smoothing(tmp_path):
    run_file = str(tmp_path / task.RUN_FILE)
    base = ["--data_dir", "d", "--model_dir", "m"]
    task._check_resumed_run(run_file, task.parse_args(base + ["--label_smoothing", "0.1"]), resume=False)
    with pytest.raises(ValueError, match="--label_smoothing 0.1 -> 0.0"):
        task._check_resumed_run(run_file, task.parse_args(base), resume=True)
    with pytest.raises(SystemExit):
        task.parse_args(base + ["--label_smoothing", "1"])
