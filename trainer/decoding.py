"""Batched caption decoding with the trained decoders (merge and attention, alone or as an ensemble): greedy and
beam search.

The training graph runs whole sequences; decoding runs its trained layers one step at a time (the LSTM's cell
with explicit state: `MergeStep`, `AttentionStep`), so a caption of length T costs T steps rather than T^2/2. Both
decoders work on a batch of images at once; beam search keeps ``beam_width`` live hypotheses per image in one
[B * K] batch. An ensemble averages its members' next-token log-probabilities at every step (and renormalizes).

Beam search: at each step every live hypothesis is extended by its best tokens; an extension by ``<end>`` that
ranks among the step's best ``beam_width`` moves to the image's finished list, the best ``beam_width`` other
extensions stay live. An image is done when it has
``beam_width`` finished hypotheses that no live one can beat any more (or at ``max_length``); with a length
penalty "can beat" is estimated at the shortest length a live hypothesis can finish with (the usual heuristic:
a longer one divides by a larger length, so it may in rare cases have won). Finished
hypotheses are ranked by ``log_prob / length ** length_penalty`` (length counts the ``<end>`` token;
``length_penalty`` 0 ranks by log-probability). The greedy caption is always a candidate, so beam search never
returns a worse-scoring caption than greedy decoding; with ``length_penalty`` 0, width 1 *is* greedy decoding.

Repeated n-grams (``no_repeat_ngram_size`` N > 0, as in common translation and caption decoders): a token that
would complete an N-gram the hypothesis has already generated gets no probability at that step, in greedy and beam
search alike ("a man in a blue shirt and blue shirt" is never produced with N = 2). The log-probabilities of the
tokens chosen stay the model's own.

``<pad>``, ``<start>`` and ``<unk>`` are never generated. ``log_prob`` is the sum of the model's log-probabilities
of the generated tokens, ``<end>`` included (for an ensemble, of its averaged and renormalized distribution).
"""
import dataclasses

import numpy as np
import tensorflow as tf

from schemas.captions import strip_boundaries
from schemas.records import SpatialFeatures
from schemas.vocabulary import END_ID, PAD_ID, START_ID, UNKNOWN_ID, Vocabulary
from trainer import attention as attention_lib
from trainer import model as model_lib

NEG_INF = -1e30
_NEVER_GENERATED = (PAD_ID, START_ID, UNKNOWN_ID)


def repeated_ngram_blocks(history: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tokens): for each row of ``history`` [N, t] (the ids generated so far), the next ids that would
    repeat an n-gram of ``size`` ids already in the row. Rows may repeat; empty arrays when nothing is blocked."""
    rows_out, tokens_out = [], []
    count, length = history.shape
    if size <= 0 or length < size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    suffix = history[:, length - size + 1:]  # the last size-1 ids: an n-gram starting with them would be completed
    for start in range(length - size + 1):
        match = np.all(history[:, start:start + size - 1] == suffix, axis=1)
        rows = np.nonzero(match)[0]
        rows_out.append(rows)
        tokens_out.append(history[rows, start + size - 1])
    return np.concatenate(rows_out).astype(np.int64), np.concatenate(tokens_out).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    token_ids: tuple  # generated ids, <end> excluded
    log_prob: float
    finished: bool  # ended with <end> (False: cut at max_length)
    # attention decoders: [length, G], the weights over the grid with which each generated id (<end> included) was
    # chosen; each row sums to 1. None for merge decoders.
    attention: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids) + (1 if self.finished else 0)

    def score(self, length_penalty: float) -> float:
        return self.log_prob / (max(self.length, 1) ** length_penalty) if length_penalty else self.log_prob


def _rows(features, start: int, stop: int):
    """Rows start:stop of a batch of features (an array, or `SpatialFeatures` of arrays)."""
    if isinstance(features, SpatialFeatures):
        return SpatialFeatures(features.vector[start:stop], features.grid[start:stop])
    return features[start:stop]


def _count(features) -> int:
    return len(features.grid if isinstance(features, SpatialFeatures) else features)


class MergeStep:
    """The merge decoder (`trainer.model`) one step at a time: the image enters after the LSTM."""
    needs_grid = False

    def __init__(self, model):
        names = {layer.name for layer in model.layers}
        self._normalization = model.get_layer(model_lib.NORMALIZATION) if model_lib.NORMALIZATION in names else None
        self._image_projection = model.get_layer(model_lib.IMAGE_PROJECTION)
        self._embedding = model.get_layer(model_lib.EMBEDDING)
        self._cell = model.get_layer(model_lib.LSTM).cell
        self._merged_projection = model.get_layer(model_lib.MERGED_PROJECTION)
        self._logits = model.get_layer(model_lib.LOGITS)
        self.units = self._image_projection.units

    def start(self, features, copies: int):
        """features [B, D] (or `SpatialFeatures`: its vector) -> (static tensors, state), each row ``copies`` times."""
        vector = features.vector if isinstance(features, SpatialFeatures) else features
        vector = tf.constant(np.asarray(vector, np.float32))
        image = self._normalization(vector) if self._normalization is not None else vector
        context = self._image_projection(image)
        if copies > 1:
            context = tf.repeat(context, copies, axis=0)
        zeros = tf.zeros([tf.shape(context)[0], self.units], tf.float32)
        return (context,), (zeros, zeros)

    def step(self, static, tokens, state):
        """-> (log-probabilities [N, V], new state, None: no attention)."""
        (context,), (hidden, memory) = static, state
        output, (hidden, memory) = self._cell(self._embedding(tokens), [hidden, memory], training=False)
        logits = self._logits(self._merged_projection(context + output))
        return tf.nn.log_softmax(logits), (hidden, memory), None


class AttentionStep:
    """The attention decoder (`trainer.attention`) one step at a time; also returns the step's attention weights
    over the grid."""
    needs_grid = True

    def __init__(self, model):
        self._normalization = model.get_layer(attention_lib.NORMALIZATION)
        self._regions = model.get_layer(attention_lib.REGION_PROJECTION)
        self._initial_hidden = model.get_layer(attention_lib.INITIAL_HIDDEN)
        self._initial_memory = model.get_layer(attention_lib.INITIAL_MEMORY)
        self._embedding = model.get_layer(attention_lib.EMBEDDING)
        names = {layer.name for layer in model.layers}
        self._global = model.get_layer(attention_lib.GLOBAL_PROJECTION) \
            if attention_lib.GLOBAL_PROJECTION in names else None  # bundles before the global input have none
        self._cell = model.get_layer(attention_lib.LSTM).cell
        self._attention = model.get_layer(attention_lib.ATTENTION)
        self._merged_projection = model.get_layer(attention_lib.MERGED_PROJECTION)
        self._logits = model.get_layer(attention_lib.LOGITS)
        self.grid_input_shape = tuple(model.get_layer(attention_lib.GRID_INPUT).batch_shape[1:])
        self._image_side = tf.function(self._image_side_fn, reduce_retracing=True)

    def start(self, features, copies: int):
        if not isinstance(features, SpatialFeatures):
            raise ValueError("an attention decoder needs the image's spatial grid, not only its pooled vector")
        (regions, keys, image), (hidden, memory) = self._image_side(tf.constant(np.asarray(features.grid)))
        if copies > 1:
            regions, keys, image, hidden, memory = (tf.repeat(t, copies, axis=0)
                                                    for t in (regions, keys, image, hidden, memory))
        return (regions, keys, image), (hidden, memory)

    def _image_side_fn(self, grid):
        """The grids as stored (float16) -> the decoder's per-image tensors, in one traced graph."""
        grid = tf.cast(grid, tf.float32)
        grid = tf.reshape(grid, [tf.shape(grid)[0], self.grid_input_shape[0], self.grid_input_shape[1]])
        scaled = self._normalization(grid)
        regions = self._regions(scaled)
        mean = tf.reduce_mean(regions, axis=1)
        hidden, memory = self._initial_hidden(mean), self._initial_memory(mean)
        keys = self._attention.keys(regions)
        image = self._global(tf.reduce_mean(scaled, axis=1)) if self._global is not None else \
            tf.zeros([tf.shape(grid)[0], 0], tf.float32)
        return (regions, keys, image), (hidden, memory)

    def step(self, static, tokens, state):
        (regions, keys, image), (hidden, memory) = static, state
        words = tf.concat([self._embedding(tokens), image], axis=-1)
        output, (hidden, memory) = self._cell(words, [hidden, memory], training=False)
        context, weights = self._attention.attend(output[:, None], keys, regions)
        logits = self._logits(self._merged_projection(context[:, 0] + output))
        return tf.nn.log_softmax(logits), (hidden, memory), weights[:, 0]


def step_model(model):
    """The step-wise view of a trained decoder of either kind."""
    return AttentionStep(model) if attention_lib.is_attention_decoder(model) else MergeStep(model)


class CaptionDecoder:
    """Greedy and beam-search decoding with one trained decoder, or an ensemble of several trained on the same
    features and vocabulary (at each step their next-token log-probabilities are averaged).

    Features: [B, D] pooled vectors for merge decoders; `SpatialFeatures` (vector [B, D], grid [B, G, D]) for
    attention decoders (or a mix: each member takes what it needs). Hypotheses of a decoder with attention carry
    ``attention`` [length, G]: the weights over the grid with which each generated id (<end> included) was chosen,
    averaged over the attention members of an ensemble."""

    def __init__(self, models, vocabulary: Vocabulary, max_length: int):
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        if not self.models:
            raise ValueError("a caption decoder needs at least one model")
        self.model = self.models[0]
        self.members = [step_model(model) for model in self.models]
        self.vocabulary = vocabulary
        self.max_steps = max(1, max_length - 1)  # <start> is given, every other id is generated
        self.needs_grid = any(member.needs_grid for member in self.members)
        suppress = np.zeros(len(vocabulary), np.float32)
        suppress[list(_NEVER_GENERATED)] = NEG_INF
        self.suppressed = tf.constant(suppress)  # [V]: added to next-token logits, -1e30 for ids never generated
        self._step = tf.function(self._step_fn, reduce_retracing=True)
        self._expand = tf.function(self._expand_fn, reduce_retracing=True)

    # -- one step of the trained graphs -------------------------------------------------------------------------
    def _initial(self, features, copies: int):
        started = [member.start(features, copies) for member in self.members]
        return tuple(static for static, _ in started), tuple(state for _, state in started)

    def _step_fn(self, statics, tokens, states):
        """-> (log-probabilities [N, V] averaged over the members, new states, attention [N, G] or zeros [N, 0])."""
        log_probs, new_states, weights = [], [], []
        for member, static, state in zip(self.members, statics, states):
            member_log_probs, state, member_weights = member.step(static, tokens, state)
            log_probs.append(member_log_probs)
            new_states.append(state)
            if member_weights is not None:
                weights.append(member_weights)
        # An ensemble: the mean of the members' log-probabilities, renormalized (the normalized geometric mean of
        # their distributions), so that a caption's log_prob stays a log-probability.
        mean = log_probs[0] if len(log_probs) == 1 else \
            tf.nn.log_softmax(tf.add_n(log_probs) / float(len(log_probs)))
        attention = (weights[0] if len(weights) == 1 else tf.add_n(weights) / float(len(weights))) if weights \
            else tf.zeros([tf.shape(tokens)[0], 0], tf.float32)
        return mean + self.suppressed, tuple(new_states), attention

    def _expand_fn(self, statics, tokens, states, scores, blocked):
        """One beam step: the 2K best (score, parent * V + token) extensions per image, best first. ``blocked``
        [M, 2]: (hypothesis, token) pairs that may not be chosen (repeated n-grams)."""
        log_probs, states, attention = self._step_fn(statics, tokens, states)
        log_probs = tf.tensor_scatter_nd_update(log_probs, blocked, tf.fill([tf.shape(blocked)[0]], NEG_INF))
        width = tf.shape(scores)[1]
        totals = tf.reshape(tf.reshape(scores, [-1, 1]) + log_probs, [tf.shape(scores)[0], -1])
        values, indices = tf.math.top_k(totals, k=2 * width)
        return values, indices, states, attention

    @staticmethod
    def _gather_states(states, rows):
        return tuple(tuple(tf.gather(tensor, rows) for tensor in state) for state in states)

    # -- decoders ------------------------------------------------------------------------------------------------
    @staticmethod
    def _prepared(features):
        if isinstance(features, SpatialFeatures):
            return features
        return np.asarray(features, np.float32)

    def greedy(self, features, initial=None, no_repeat_ngram_size: int = 0) -> list[Hypothesis]:
        """``initial``: the members' (statics, states) for these features, when already computed."""
        features = self._prepared(features)
        batch = _count(features)
        statics, states = initial if initial is not None else self._initial(features, 1)
        tokens = np.full(batch, START_ID, np.int32)
        log_probs = np.zeros(batch, np.float32)  # float32 sums, as beam search accumulates them
        lengths = np.full(batch, self.max_steps, np.int64)  # generated ids before <end>
        finished = np.zeros(batch, bool)
        steps, attention = [], []
        for step in range(self.max_steps):
            step_log_probs, states, weights = self._step(statics, tf.constant(tokens), states)
            step_log_probs = step_log_probs.numpy()
            if no_repeat_ngram_size and steps:
                rows, blocked = repeated_ngram_blocks(np.stack(steps, axis=1), no_repeat_ngram_size)
                choice = step_log_probs.copy()
                choice[rows, blocked] = NEG_INF
            else:
                choice = step_log_probs
            tokens = choice.argmax(axis=-1).astype(np.int32)
            log_probs += np.where(finished, np.float32(0.0), step_log_probs[np.arange(batch), tokens])
            ending = ~finished & (tokens == END_ID)
            lengths[ending] = step
            finished |= ending
            steps.append(tokens)
            attention.append(weights.numpy())
            if finished.all():
                break
        generated = np.stack(steps, axis=1)
        attention = np.stack(attention, axis=1)  # [B, steps, G]
        return [Hypothesis(tuple(int(t) for t in generated[i, :lengths[i]]), float(log_probs[i]), bool(finished[i]),
                           attention[i, :lengths[i] + finished[i]] if self.needs_grid else None)
                for i in range(batch)]

    def sample(self, features, generator) -> list[Hypothesis]:
        """One caption per image drawn from the model's distribution, word by word (``generator``: a
        ``tf.random.Generator``, so draws are repeatable); for self-critical training (`trainer.scst`)."""
        features = self._prepared(features)
        batch = _count(features)
        statics, states = self._initial(features, 1)
        tokens = np.full(batch, START_ID, np.int32)
        log_probs = np.zeros(batch, np.float32)
        lengths = np.full(batch, self.max_steps, np.int64)
        finished = np.zeros(batch, bool)
        steps = []
        for step in range(self.max_steps):
            step_log_probs, states, _ = self._step(statics, tf.constant(tokens), states)
            seed = generator.make_seeds(1)[:, 0]
            tokens = tf.random.stateless_categorical(step_log_probs, 1, seed, dtype=tf.int32)[:, 0].numpy()
            log_probs += np.where(finished, np.float32(0.0), step_log_probs.numpy()[np.arange(batch), tokens])
            ending = ~finished & (tokens == END_ID)
            lengths[ending] = step
            finished |= ending
            steps.append(tokens)
            if finished.all():
                break
        generated = np.stack(steps, axis=1)
        return [Hypothesis(tuple(int(t) for t in generated[i, :lengths[i]]), float(log_probs[i]), bool(finished[i]))
                for i in range(batch)]

    def beam_search(self, features, beam_width: int, length_penalty: float = 0.0,
                    no_repeat_ngram_size: int = 0) -> list[Hypothesis]:
        if beam_width < 1:
            raise ValueError(f"beam width must be at least 1, got {beam_width}")
        features = self._prepared(features)
        # The image's side of the decoder (for attention: projecting 100 regions) is computed once, for the greedy
        # caption and for the beam's copies alike: it was about a quarter of beam search's time.
        initial = self._initial(features, 1)
        greedy = self.greedy(features, initial, no_repeat_ngram_size)
        batch, width, vocab_size = _count(features), beam_width, len(self.vocabulary)
        statics, states = tf.nest.map_structure(lambda tensor: tf.repeat(tensor, width, axis=0), initial)
        tokens = np.full(batch * width, START_ID, np.int32)
        scores = np.full((batch, width), NEG_INF, np.float32)
        scores[:, 0] = 0.0  # all copies start identical: expand only the first
        history = np.zeros((batch, width, 0), np.int32)
        looks = None  # [B, K, t, G]: the attention weights of each live hypothesis' ids
        finished = [[] for _ in range(batch)]
        kept = np.full((batch, width), -np.inf)  # the best `width` finished scores per image, best first
        done = np.zeros(batch, bool)
        ranks = np.arange(2 * width)[None, :]
        for step in range(self.max_steps):
            length = step + 1
            rows, blocked = repeated_ngram_blocks(history.reshape(batch * width, step), no_repeat_ngram_size)
            values, indices, states, weights = self._expand(statics, tf.constant(tokens), states, tf.constant(scores),
                                                            tf.constant(np.stack([rows, blocked], axis=1), tf.int32))
            values, indices = values.numpy(), indices.numpy()
            weights = weights.numpy().reshape(batch, width, -1)  # per parent: the weights of this step
            if looks is None:
                looks = np.zeros((batch, width, 0, weights.shape[-1]), np.float32)
            parents, next_ids = indices // vocab_size, (indices % vocab_size).astype(np.int32)
            valid = (values > NEG_INF / 2) & ~done[:, None]
            ends = next_ids == END_ID
            # An ending only counts if it is among this step's best `width` extensions.
            for image, position in zip(*np.nonzero(valid & ends & (ranks < width))):
                parent = parents[image, position]
                hypothesis = Hypothesis(
                    tuple(int(t) for t in history[image, parent]), float(values[image, position]), True,
                    np.concatenate([looks[image, parent], weights[image, parent][None]])
                    if self.needs_grid else None)
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
            if self.needs_grid:
                looks = np.concatenate([np.take_along_axis(looks, parents[:, :, None, None], axis=1),
                                        np.take_along_axis(weights, parents[:, :, None], axis=1)[:, :, None]], axis=2)
            best_live = scores.max(axis=1).astype(np.float64)
            # A live hypothesis only loses log-probability as it grows. Without a length penalty that settles it;
            # with one, its score is estimated at the shortest length it can finish with (the usual heuristic).
            beaten = best_live / ((length + 1) ** length_penalty) < kept[:, width - 1]
            done |= (best_live <= NEG_INF / 2) | beaten
            if done.all():
                break
            scores[done] = NEG_INF
            states = self._gather_states(states, (np.arange(batch)[:, None] * width + parents).reshape(-1))
            tokens = next_ids.reshape(-1)
        results = []
        for image in range(batch):
            pool = finished[image] or [
                Hypothesis(tuple(int(t) for t in history[image, s]), float(scores[image, s]), False,
                           looks[image, s] if self.needs_grid else None)
                for s in range(width) if scores[image, s] > NEG_INF / 2]
            pool = pool + [greedy[image]]
            results.append(max(pool, key=lambda hypothesis: hypothesis.score(length_penalty)))
        return results

    # -- text ---------------------------------------------------------------------------------------------------
    def to_text(self, hypothesis: Hypothesis) -> str:
        return " ".join(strip_boundaries(self.vocabulary.decode(hypothesis.token_ids)))

    def decode(self, features, beam_width: int = 1, length_penalty: float = 0.0,
               no_repeat_ngram_size: int = 0) -> list[Hypothesis]:
        if beam_width == 1 and length_penalty == 0:
            return self.greedy(features, no_repeat_ngram_size=no_repeat_ngram_size)
        return self.beam_search(features, beam_width, length_penalty, no_repeat_ngram_size)

    def hypotheses(self, features, beam_width: int = 1, length_penalty: float = 0.0, batch_size: int = 256,
                   progress: str | None = None, no_repeat_ngram_size: int = 0) -> list[Hypothesis]:
        """The best hypothesis per image, decoding ``batch_size`` images at a time.

        ``progress``: the label of a tqdm bar over the images (shown on a terminal only, not in a log file)."""
        from tqdm import tqdm
        out, total = [], _count(features)
        with tqdm(total=total, desc=progress, unit="img", disable=None if progress else True) as bar:
            for start in range(0, total, batch_size):
                rows = _rows(features, start, start + batch_size)
                out.extend(self.decode(rows, beam_width, length_penalty, no_repeat_ngram_size))
                bar.update(_count(rows))
        return out

    def caption(self, features, beam_width: int = 1, length_penalty: float = 0.0,
                batch_size: int = 256, progress: str | None = None,
                no_repeat_ngram_size: int = 0) -> list[tuple[str, float]]:
        """(caption text, log-probability) per image (see `hypotheses`)."""
        return [(self.to_text(hypothesis), hypothesis.log_prob) for hypothesis in
                self.hypotheses(features, beam_width, length_penalty, batch_size, progress, no_repeat_ngram_size)]
