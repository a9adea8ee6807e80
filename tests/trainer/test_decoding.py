"""Decoding with the merge decoder: step-wise decoding matches the training graph, greedy vs beam search,
beam search vs exhaustive search, and the bundle round trip."""
import itertools

import keras
import numpy as np
import pytest

from schemas.bundle import DEFAULT_NO_REPEAT_NGRAM_SIZE
from schemas.vocabulary import END_ID, RESERVED_TOKENS, Vocabulary
from trainer import model as model_lib
from trainer.bundle import Bundle, export_bundle
from trainer.decoding import CaptionDecoder, Hypothesis, repeated_ngram_blocks

FEATURE_DIM = 12
WORDS = ("a", "dog", "cat", "runs")


def _random_decoder(seed=0, units=16, words=WORDS, max_length=6):
    keras.utils.set_random_seed(seed)
    vocabulary = Vocabulary(RESERVED_TOKENS + tuple(words))
    config = model_lib.DecoderConfig(vocab_size=len(vocabulary), feature_dim=FEATURE_DIM, embedding_dim=8,
                                     units=units, dropout=0.0)
    model = model_lib.build_decoder(config)
    # Sharpen the output layer so that the distributions are far from uniform (more interesting searches).
    kernel, bias = model.get_layer(model_lib.LOGITS).get_weights()
    model.get_layer(model_lib.LOGITS).set_weights([kernel * 6.0, bias])
    return model, vocabulary, CaptionDecoder(model, vocabulary, max_length)


def _features(count, seed=1):
    return np.random.default_rng(seed).normal(size=(count, FEATURE_DIM)).astype(np.float32)


def _teacher_forced_log_prob(model, features, token_ids, finished=True):
    """Log-probability of a generated sequence computed by the training graph on the whole sequence."""
    from schemas.vocabulary import START_ID
    targets = list(token_ids) + ([END_ID] if finished else [])
    inputs = np.array([[START_ID] + list(token_ids)[:len(targets) - 1]], np.int32)
    logits = model.predict_on_batch([features[None], inputs])[0]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    return float(sum(log_probs[t, token] for t, token in enumerate(targets)))


def test_step_decoding_matches_the_training_graph():
    model, _, decoder = _random_decoder()
    features = _features(4)
    for row, hypothesis in enumerate(decoder.beam_search(features, beam_width=3)):
        expected = _teacher_forced_log_prob(model, features[row], hypothesis.token_ids, hypothesis.finished)
        assert hypothesis.log_prob == pytest.approx(expected, abs=1e-4)


def test_beam_width_one_is_greedy():
    _, _, decoder = _random_decoder()
    features = _features(16)
    assert decoder.beam_search(features, beam_width=1) == decoder.greedy(features)


def test_beam_search_never_scores_below_greedy_and_sometimes_above():
    _, _, decoder = _random_decoder(seed=3)
    features = _features(64, seed=5)
    greedy = decoder.greedy(features)
    beam = decoder.beam_search(features, beam_width=5)
    assert all(b.log_prob >= g.log_prob - 1e-6 for b, g in zip(beam, greedy))
    assert sum(b.log_prob > g.log_prob + 1e-6 for b, g in zip(beam, greedy)) > 0


def test_wide_beam_finds_the_exhaustive_optimum():
    words = ("a", "b", "c")
    model, vocabulary, decoder = _random_decoder(seed=4, words=words, max_length=5)  # up to 3 words + <end>
    features = _features(6, seed=9)
    word_ids = [vocabulary.id_of(w) for w in words]
    for row, found in enumerate(decoder.beam_search(features, beam_width=64)):
        candidates = [seq for length in range(0, 4) for seq in itertools.product(word_ids, repeat=length)]
        best = max(candidates, key=lambda seq: _teacher_forced_log_prob(model, features[row], seq))
        assert found.finished
        assert found.token_ids == best
        assert found.log_prob == pytest.approx(_teacher_forced_log_prob(model, features[row], best), abs=1e-4)


def test_length_penalty_prefers_longer_captions():
    _, _, decoder = _random_decoder(seed=2, max_length=10)
    features = _features(32, seed=3)
    plain = decoder.beam_search(features, beam_width=4, length_penalty=0.0)
    normalized = decoder.beam_search(features, beam_width=4, length_penalty=1.0)
    assert sum(h.length for h in normalized) > sum(h.length for h in plain)  # it changes choices, to longer ones
    for hypothesis_plain, hypothesis_normalized in zip(plain, normalized):
        assert hypothesis_normalized.score(1.0) >= hypothesis_plain.score(1.0) - 1e-6
        assert hypothesis_plain.log_prob >= hypothesis_normalized.log_prob - 1e-6


def test_hypothesis_score():
    hypothesis = Hypothesis((5, 6, 7), -6.0, True)
    assert hypothesis.length == 4
    assert hypothesis.score(0.0) == -6.0 and hypothesis.score(1.0) == -1.5


def test_bundle_round_trip(tmp_path):
    model, vocabulary, decoder = _random_decoder(seed=6)
    metadata = {"backbone": "xception", "weights": "none", "weights_sha256": "abc", "image_size": 71,
                "preprocessing": "xception", "feature_dim": FEATURE_DIM, "max_length": 6}
    config = export_bundle(str(tmp_path), model, vocabulary, metadata, training={"note": "test"},
                           decoding={"beam_width": 2, "length_penalty": 0.5})
    loaded = Bundle(str(tmp_path))
    assert loaded.model_id == config["model_id"] and loaded.model_id.startswith("imcap-")
    assert loaded.vocabulary == vocabulary and loaded.decoding == {"beam_width": 2, "length_penalty": 0.5}
    features = _features(8)
    for width in (1, 3):
        assert loaded.decoder.caption(features, width) == decoder.caption(features, width)
    # The id names the content: the same weights and vocabulary give the same id.
    again = export_bundle(str(tmp_path / "again"), model, vocabulary, metadata, training={})
    assert again["model_id"] == config["model_id"]


def test_bundle_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle.json: no such file"):
        Bundle(str(tmp_path))
    (tmp_path / "bundle.json").write_text('{"format_version": 1}')
    with pytest.raises(ValueError, match="not a model bundle config, missing model_id"):
        Bundle(str(tmp_path))


def _repeats(token_ids, size=2):
    grams = [tuple(token_ids[i:i + size]) for i in range(len(token_ids) - size + 1)]
    return len(set(grams)) < len(grams)


def test_repeated_ngram_blocks():
    history = np.array([[5, 6, 7, 5], [1, 2, 1, 2], [1, 1, 1, 1], [4, 5, 6, 7]])
    rows, tokens = repeated_ngram_blocks(history, 2)
    assert sorted(zip(rows.tolist(), tokens.tolist())) == [(0, 6), (1, 1), (2, 1), (2, 1), (2, 1)]
    rows, tokens = repeated_ngram_blocks(history, 3)
    assert sorted(zip(rows.tolist(), tokens.tolist())) == [(1, 1), (2, 1), (2, 1)]
    rows, tokens = repeated_ngram_blocks(history, 1)  # no id twice
    assert sorted(set(zip(rows.tolist(), tokens.tolist()))) == sorted(
        {(row, token) for row in range(4) for token in history[row].tolist()})
    for size, length in ((2, 0), (2, 1), (0, 4), (5, 4)):
        assert repeated_ngram_blocks(history[:, :length], size)[0].size == 0


def test_no_repeat_ngram_blocks_repeats_and_changes_nothing_else():
    model, _, decoder = _random_decoder(seed=0, words=("a", "b"), max_length=12)
    features = _features(48, seed=2)
    for decode in (lambda size: decoder.greedy(features, no_repeat_ngram_size=size),
                   lambda size: decoder.beam_search(features, 3, no_repeat_ngram_size=size)):
        plain, blocked = decode(0), decode(2)
        assert sum(_repeats(h.token_ids) for h in plain) > 5  # the untrained model loops ("a b a b ...")
        assert not any(_repeats(h.token_ids) for h in blocked)
        changed = 0
        for row, (before, after) in enumerate(zip(plain, blocked)):
            if not _repeats(before.token_ids):
                assert after == before  # nothing to block: the same caption, the same score
            changed += after != before
            # the log-probability stays the model's own, of the tokens chosen
            expected = _teacher_forced_log_prob(model, features[row], after.token_ids, after.finished)
            assert after.log_prob == pytest.approx(expected, abs=1e-4)
        assert changed > 5


def test_wide_beam_with_blocking_finds_the_best_caption_without_a_repeat():
    words = ("a", "b", "c")
    model, vocabulary, decoder = _random_decoder(seed=4, words=words, max_length=6)  # up to 4 words + <end>
    features = _features(6, seed=9)
    word_ids = [vocabulary.id_of(w) for w in words]
    candidates = [seq for length in range(0, 5) for seq in itertools.product(word_ids, repeat=length)
                  if not _repeats(seq)]
    for row, found in enumerate(decoder.beam_search(features, beam_width=64, no_repeat_ngram_size=2)):
        best = max(candidates, key=lambda seq: _teacher_forced_log_prob(model, features[row], seq))
        assert found.token_ids == best


def test_bundle_decoding_defaults(tmp_path):
    model, vocabulary, _ = _random_decoder(seed=6)
    metadata = {"backbone": "xception", "weights": "none", "weights_sha256": "abc", "image_size": 71,
                "preprocessing": "xception", "feature_dim": FEATURE_DIM, "max_length": 6}
    export_bundle(str(tmp_path / "new"), model, vocabulary, metadata, training={})
    assert Bundle(str(tmp_path / "new")).decoding_for() == (3, 0.0, DEFAULT_NO_REPEAT_NGRAM_SIZE)
    export_bundle(str(tmp_path / "old"), model, vocabulary, metadata, training={},
                  decoding={"beam_width": 2, "length_penalty": 0.5})  # written before n-gram blocking
    old = Bundle(str(tmp_path / "old"))
    assert old.decoding_for() == (2, 0.5, DEFAULT_NO_REPEAT_NGRAM_SIZE)
    assert old.decoding_for(4, 0.0, 0) == (4, 0.0, 0)
    export_bundle(str(tmp_path / "three"), model, vocabulary, metadata, training={},
                  decoding={"beam_width": 2, "length_penalty": 0.0, "no_repeat_ngram_size": 3})
    assert Bundle(str(tmp_path / "three")).decoding_for(no_repeat_ngram_size=None) == (2, 0.0, 3)
