"""Batched caption decoding with the trained merge decoder: greedy and beam search.

The training graph runs whole sequences; decoding runs its trained layers one step at a time (the LSTM's cell
with explicit state), so a caption of length T costs T steps rather than T^2/2. Both decoders work on a batch of
images at once; beam search keeps ``beam_width`` live hypotheses per image in one [B * K] batch.

Beam search: at each step every live hypothesis is extended by its best tokens; an extension by ``<end>`` that
ranks among the step's best ``beam_width`` moves to the image's finished list, the best ``beam_width`` other
extensions stay live. An image is done when it has
``beam_width`` finished hypotheses that no live one can beat any more (or at ``max_length``). Finished
hypotheses are ranked by ``log_prob / length ** length_penalty`` (length counts the ``<end>`` token;
``length_penalty`` 0 ranks by log-probability). The greedy caption is always a candidate, so beam search never
returns a worse-scoring caption than greedy decoding; with ``length_penalty`` 0, width 1 *is* greedy decoding.

``<pad>``, ``<start>`` and ``<unk>`` are never generated. ``log_prob`` is the sum of the model's log-probabilities
of the generated tokens, ``<end>`` included.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from schemas.captions import strip_boundaries
from schemas.vocabulary import END_ID, PAD_ID, START_ID, UNKNOWN_ID, Vocabulary
from trainer import model as model_lib

NEG_INF = -1e30
_NEVER_GENERATED = (PAD_ID, START_ID, UNKNOWN_ID)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    token_ids: tuple  # generated ids, <end> excluded
    log_prob: float
    finished: bool  # ended with <end> (False: cut at max_length)

    @property
    def length(self) -> int:
        return len(self.token_ids) + (1 if self.finished else 0)

    def score(self, length_penalty: float) -> float:
        return self.log_prob / (max(self.length, 1) ** length_penalty) if length_penalty else self.log_prob


class CaptionDecoder:
    """Greedy and beam-search decoding with a trained `trainer.model` decoder."""

    def __init__(self, model, vocabulary: Vocabulary, max_length: int):
        self.model = model
        self.vocabulary = vocabulary
        self.max_steps = max(1, max_length - 1)  # <start> is given, every other id is generated
        names = {layer.name for layer in model.layers}
        self._normalization = model.get_layer(model_lib.NORMALIZATION) if model_lib.NORMALIZATION in names else None
        self._image_projection = model.get_layer(model_lib.IMAGE_PROJECTION)
        self._embedding = model.get_layer(model_lib.EMBEDDING)
        self._cell = model.get_layer(model_lib.LSTM).cell
        self._merged_projection = model.get_layer(model_lib.MERGED_PROJECTION)
        self._logits = model.get_layer(model_lib.LOGITS)
        self.units = self._image_projection.units
        suppress = np.zeros(len(vocabulary), np.float32)
        suppress[list(_NEVER_GENERATED)] = NEG_INF
        self._suppress = tf.constant(suppress)
        feature_dim = model.get_layer(model_lib.FEATURES_INPUT).batch_shape[-1] if hasattr(
            model.get_layer(model_lib.FEATURES_INPUT), "batch_shape") else model.inputs[0].shape[-1]
        self._encode = tf.function(self._encode_fn, input_signature=[tf.TensorSpec([None, feature_dim], tf.float32)])
        state = tf.TensorSpec([None, self.units], tf.float32)
        self._step = tf.function(self._step_fn, input_signature=[
            tf.TensorSpec([None, self.units], tf.float32), tf.TensorSpec([None], tf.int32), state, state])
        self._expand = tf.function(self._expand_fn, input_signature=[
            tf.TensorSpec([None, self.units], tf.float32), tf.TensorSpec([None], tf.int32), state, state,
            tf.TensorSpec([None, None], tf.float32)])

    # -- one step of the trained graph ------------------------------------------------------------------------
    def _encode_fn(self, features):
        image = self._normalization(features) if self._normalization is not None else features
        return self._image_projection(image)

    def _step_fn(self, image_context, tokens, hidden, memory):
        embedded = self._embedding(tokens)
        output, (hidden, memory) = self._cell(embedded, [hidden, memory], training=False)
        logits = self._logits(self._merged_projection(image_context + output))
        return tf.nn.log_softmax(logits) + self._suppress, hidden, memory

    def _initial(self, features: np.ndarray, copies: int):
        context = self._encode(tf.constant(features, tf.float32))
        if copies > 1:
            context = tf.repeat(context, copies, axis=0)
        zeros = tf.zeros([tf.shape(context)[0], self.units], tf.float32)
        return context, zeros, zeros

    def _expand_fn(self, image_context, tokens, hidden, memory, scores):
        """One beam step: the 2K best (score, parent * V + token) extensions per image, best first."""
        log_probs, hidden, memory = self._step_fn(image_context, tokens, hidden, memory)
        width = tf.shape(scores)[1]
        totals = tf.reshape(tf.reshape(scores, [-1, 1]) + log_probs, [tf.shape(scores)[0], -1])
        values, indices = tf.math.top_k(totals, k=2 * width)
        return values, indices, hidden, memory

    # -- decoders ------------------------------------------------------------------------------------------------
    def greedy(self, features: np.ndarray) -> list[Hypothesis]:
        features = np.asarray(features, np.float32)
        batch = features.shape[0]
        context, hidden, memory = self._initial(features, 1)
        tokens = np.full(batch, START_ID, np.int32)
        log_probs = np.zeros(batch, np.float32)  # float32 sums, as beam search accumulates them
        lengths = np.full(batch, self.max_steps, np.int64)  # generated ids before <end>
        finished = np.zeros(batch, bool)
        steps = []
        for step in range(self.max_steps):
            step_log_probs, hidden, memory = self._step(context, tf.constant(tokens), hidden, memory)
            step_log_probs = step_log_probs.numpy()
            tokens = step_log_probs.argmax(axis=-1).astype(np.int32)
            log_probs += np.where(finished, np.float32(0.0), step_log_probs[np.arange(batch), tokens])
            ending = ~finished & (tokens == END_ID)
            lengths[ending] = step
            finished |= ending
            steps.append(tokens)
            if finished.all():
                break
        generated = np.stack(steps, axis=1)
        return [Hypothesis(tuple(int(t) for t in generated[i, :lengths[i]]), float(log_probs[i]), bool(finished[i]))
                for i in range(batch)]

    def beam_search(self, features: np.ndarray, beam_width: int, length_penalty: float = 0.0) -> list[Hypothesis]:
        if beam_width < 1:
            raise ValueError(f"beam width must be at least 1, got {beam_width}")
        features = np.asarray(features, np.float32)
        greedy = self.greedy(features)
        batch, width, vocab_size = features.shape[0], beam_width, len(self.vocabulary)
        context, hidden, memory = self._initial(features, width)
        tokens = np.full(batch * width, START_ID, np.int32)
        scores = np.full((batch, width), NEG_INF, np.float32)
        scores[:, 0] = 0.0  # all copies start identical: expand only the first
        history = np.zeros((batch, width, 0), np.int32)
        finished = [[] for _ in range(batch)]
        kept = np.full((batch, width), -np.inf)  # the best `width` finished scores per image, best first
        done = np.zeros(batch, bool)
        ranks = np.arange(2 * width)[None, :]
        for step in range(self.max_steps):
            length = step + 1
            values, indices, hidden, memory = self._expand(context, tf.constant(tokens), hidden, memory,
                                                           tf.constant(scores))
            values, indices = values.numpy(), indices.numpy()
            parents, next_ids = indices // vocab_size, (indices % vocab_size).astype(np.int32)
            valid = (values > NEG_INF / 2) & ~done[:, None]
            ends = next_ids == END_ID
            # An ending only counts if it is among this step's best `width` extensions.
            for image, position in zip(*np.nonzero(valid & ends & (ranks < width))):
                hypothesis = Hypothesis(tuple(int(t) for t in history[image, parents[image, position]]),
                                        float(values[image, position]), True)
                finished[image].append(hypothesis)
                kept[image] = np.sort(np.append(kept[image], hypothesis.score(length_penalty)))[::-1][:width]
            alive = valid & ~ends
            order = np.argsort(~alive, axis=1, kind="stable")[:, :width]  # the first `width` live extensions
            chosen = np.take_along_axis(alive, order, axis=1)
            parents = np.take_along_axis(parents, order, axis=1)
            next_ids = np.take_along_axis(next_ids, order, axis=1)
            scores = np.where(chosen, np.take_along_axis(values, order, axis=1), NEG_INF).astype(np.float32)
            history = np.concatenate([np.take_along_axis(history, parents[:, :, None], axis=1),
                                      next_ids[:, :, None]], axis=2)
            best_live = scores.max(axis=1).astype(np.float64)
            # A live hypothesis only loses log-probability as it grows. Without a length penalty that settles it;
            # with one, its score is estimated at the shortest length it can finish with (the usual heuristic).
            beaten = best_live / ((length + 1) ** length_penalty) < kept[:, width - 1]
            done |= (best_live <= NEG_INF / 2) | beaten
            if done.all():
                break
            scores[done] = NEG_INF
            gather = (np.arange(batch)[:, None] * width + parents).reshape(-1)
            hidden, memory = tf.gather(hidden, gather), tf.gather(memory, gather)
            tokens = next_ids.reshape(-1)
        results = []
        for image in range(batch):
            pool = finished[image] or [Hypothesis(tuple(int(t) for t in history[image, s]), float(scores[image, s]),
                                                  False) for s in range(width) if scores[image, s] > NEG_INF / 2]
            pool = pool + [greedy[image]]
            results.append(max(pool, key=lambda hypothesis: hypothesis.score(length_penalty)))
        return results

    # -- text ---------------------------------------------------------------------------------------------------
    def to_text(self, hypothesis: Hypothesis) -> str:
        return " ".join(strip_boundaries(self.vocabulary.decode(hypothesis.token_ids)))

    def decode(self, features: np.ndarray, beam_width: int = 1, length_penalty: float = 0.0) -> list[Hypothesis]:
        if beam_width == 1 and length_penalty == 0:
            return self.greedy(features)
        return self.beam_search(features, beam_width, length_penalty)

    def caption(self, features: np.ndarray, beam_width: int = 1, length_penalty: float = 0.0,
                batch_size: int = 256, progress: str | None = None) -> list[tuple[str, float]]:
        """(caption text, log-probability) per feature row, decoding ``batch_size`` images at a time.

        ``progress``: the label of a tqdm bar over the images (shown on a terminal only, not in a log file)."""
        from tqdm import tqdm
        out = []
        with tqdm(total=len(features), desc=progress, unit="img", disable=None if progress else True) as bar:
            for start in range(0, len(features), batch_size):
                for hypothesis in self.decode(features[start:start + batch_size], beam_width, length_penalty):
                    out.append((self.to_text(hypothesis), hypothesis.log_prob))
                bar.update(len(features[start:start + batch_size]))
        return out
