"""Training through the command-line entry point: overfitting a tiny set, repeatability, resuming, BLEU,
and captioning image files with the resulting bundle."""
import json
import os

import keras
import numpy as np
import pytest

from schemas import fileio
from tests.conftest import TINY_CAPTIONS as TINY
from tests.conftest import write_feature_records
from trainer import evaluate, predict, task
from trainer.bundle import Bundle

SMALL_MODEL = ["--embedding_dim", "32", "--units", "64", "--dropout", "0", "--batch_size", "8"]


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    rng = np.random.default_rng(0)
    items = [(name, rng.normal(size=16).astype(np.float32), [caption]) for name, caption in TINY.items()]
    directory = str(tmp_path_factory.mktemp("tiny_records"))
    write_feature_records(directory, {"train": items, "dev": items})
    return directory


def _history(model_dir):
    with open(os.path.join(model_dir, task.HISTORY_FILE), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.integration
def test_overfits_a_tiny_set_and_greedy_decoding_reproduces_captions(tiny_records, tmp_path):
    model_dir = str(tmp_path / "model")
    summary = task.train(task.parse_args(["--data_dir", tiny_records, "--model_dir", model_dir, "--epochs", "30",
                                          "--learning_rate", "0.03", "--patience", "30", "--verbose", "0",
                                          *SMALL_MODEL]))
    history = _history(model_dir)
    assert history[-1]["loss"] < history[0]["loss"] / 10
    assert summary["train_captions"] == 6 and summary["median_captions_per_second"] > 0
    for name in ("decoder.keras", "vocab.txt", "bundle.json", "training_curve.png", "logs"):
        assert os.path.exists(os.path.join(model_dir, name)), name

    from trainer import data
    image_ids, features, references = data.references(tiny_records, "train", 16)
    bundle = Bundle(model_dir)
    captions = [text for text, _ in bundle.decoder.caption(features, beam_width=1)]
    assert captions == [refs[0] for refs in references]
    assert [text for text, _ in bundle.decoder.caption(features, beam_width=3)] == captions

    result = evaluate.evaluate(tiny_records, model_dir, "dev", beam_width=3)
    assert result["bleu_4"] == pytest.approx(1.0) and result["images"] == 6
    assert os.path.exists(os.path.join(model_dir, "eval_dev_beam3.json"))


class _Interrupt(Exception):
    pass


@pytest.mark.integration
def test_a_resumed_run_is_the_run_that_was_not_interrupted(tiny_records, tmp_path, monkeypatch):
    """Same seed, same run; and a run killed after epoch 2 and resumed does only epochs 3-4 and ends where an
    uninterrupted run of the same seed ends (up to float rounding of the running loss mean)."""
    def argv(model_dir):
        return ["--data_dir", tiny_records, "--model_dir", model_dir, "--epochs", "4", "--patience", "10",
                "--seed", "11", "--verbose", "0", *SMALL_MODEL]
    uninterrupted = str(tmp_path / "uninterrupted")
    assert task.main(argv(uninterrupted)) == 0  # the command line: a finished run exits 0

    model_dir = str(tmp_path / "model")
    original = keras.callbacks.BackupAndRestore.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise _Interrupt()

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(_Interrupt):
        task.train(task.parse_args(argv(model_dir)))
    assert [row["epoch"] for row in _history(model_dir)] == [1, 2]
    first_run = _history(model_dir)
    expected = _history(uninterrupted)
    metrics = lambda rows: [(r["loss"], r["val_loss"], r["accuracy"], r["val_accuracy"]) for r in rows]  # noqa: E731
    assert metrics(first_run) == metrics(expected[:2])  # the same seed gives the same epochs, bit for bit

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", original)
    task.train(task.parse_args(argv(model_dir)))
    history = _history(model_dir)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]  # epochs 3-4 only: 1-2 were not redone
    assert history[:2] == first_run
    for resumed, straight in zip(history, expected):
        assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
        assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-6)
    assert expected[-1]["val_loss"] < expected[0]["val_loss"]  # it did learn: the equality is not of two no-ops
    assert not os.path.exists(os.path.join(model_dir, "checkpoints", "backup"))  # finished: nothing to resume


def test_bleu_matches_nltk_documented_values():
    # NLTK's corpus_bleu docstring example: 0.5920778868801042 for BLEU-4.
    hypothesis_1 = ("It is a guide to action which ensures that the military always obeys the commands of the "
                    "party")
    reference_1a = "It is a guide to action that ensures that the military will forever heed Party commands"
    reference_1b = ("It is the guiding principle which guarantees the military forces always being under the "
                    "command of the Party")
    reference_1c = "It is the practical guide for the army always to heed the directions of the party"
    hypothesis_2 = "he read the book because he was interested in world history"
    reference_2a = "he was interested in world history because he read the book"
    scores = evaluate.bleu_scores([[reference_1a, reference_1b, reference_1c], [reference_2a]],
                                  [hypothesis_1, hypothesis_2])
    assert scores["bleu_4"] == pytest.approx(0.5920778868801042)
    assert scores["bleu_1"] > scores["bleu_2"] > scores["bleu_3"] > scores["bleu_4"]
    assert evaluate.bleu_scores([["a dog runs"]], ["a dog runs"])["bleu_1"] == pytest.approx(1.0)


@pytest.mark.integration
def test_predict_captions_image_files_with_the_bundle(sample_dataset, sample_bundle, other_weights, tmp_path,
                                                     capsys):
    model_dir = sample_bundle
    images_dir = os.path.join(sample_dataset, "Flicker8k_Dataset")
    paths = [os.path.join(images_dir, name) for name in sorted(os.listdir(images_dir))[:3]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert predict.main(["--model_dir", model_dir, "--beam_width", "2", *paths, str(broken)]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == paths
    assert all(float(line.split("\t")[2]) < 0 for line in lines)
    assert "broken.jpg: unsupported_format" in err

    # Features of other weights than the bundle's are refused.
    assert predict.main(["--model_dir", model_dir, "--weights", other_weights, paths[0]]) == 2
    assert "captions would be meaningless" in capsys.readouterr().err
    assert fileio.read_json(os.path.join(model_dir, "bundle.json"))["weights"] == "none"
