"""The attention caption decoder: an LSTM whose every word looks at Xception's spatial grid.

This is the "spatial attention" decoder of Lu et al. 2017 (*Knowing When to Look*, section 2.2), in which the
attention is driven by the LSTM's current hidden state ``h_t`` rather than the previous one as in Show, Attend and
Tell (Xu et al. 2015). Lu et al. found it the better of the two, and it has a property that matters on a CPU: the
attention sits *after* the recurrence, so training runs the LSTM over whole sequences and computes every step's
attention at once with batched matrix products, instead of a Python-level cell per step.

    grid [G, D] -> scaling -> dropout -> dense(units, relu) = regions V [G, U]
    mean over G -> dense(units, tanh) x2 = the LSTM's initial state (h_0, c_0)   (Show, Attend and Tell's init)
    mean of the scaled grid -> dense(E, relu) = the global feature v_g [E]          (Lu et al.'s v^g)
    caption tokens [T] -> embedding, each step joined by v_g -> dropout -> LSTM(units) = h [T, U]
    attention: a_t = softmax_g(q(h_t) . k(V_g) / sqrt(A)),  c_t = sum_g a_tg V_g     (scaled dot product, one head)
    c_t + h_t -> dense(units, relu) -> dropout -> dense(vocab) = next-token logits [T, V]

The scores are a scaled dot product of learned projections (Luong et al. 2015's "general" form, as in
Transformers) rather than Lu et al.'s additive MLP: the additive form materializes a [T, G, A] tensor per caption,
which on a CPU costs more than the whole LSTM.

A training batch holds a few images and *all* of their captions (``image_index`` says which image each caption
belongs to, as ``seq_per_img`` does in the usual PyTorch captioners): each image's grid is read, scaled and
projected once per batch, not once per caption. `trainer.data.grid_caption_dataset` builds those batches.

Layer names are part of the decoder's interface: `trainer.decoding` runs the trained layers one step at a time.
The two custom layers are registered Keras serializables, so ``decoder.keras`` stays a plain Keras file (no
pickle, no Lambda); `trainer.bundle.load_decoder` imports this module before loading.
"""
import dataclasses

import keras
from keras import layers, ops

# the layers both decoders have keep the merge model's names
from trainer.model import EMBEDDING, LOGITS, LSTM, MERGE, MERGED_PROJECTION

GRID_INPUT = "image_grid"
IMAGE_INDEX_INPUT = "image_index"
TOKENS_INPUT = "caption_tokens"
NORMALIZATION = "grid_normalization"
REGION_PROJECTION = "region_projection"
INITIAL_HIDDEN = "initial_hidden"
INITIAL_MEMORY = "initial_memory"
GLOBAL_PROJECTION = "global_projection"
ATTENTION = "grid_attention"


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    vocab_size: int
    grid_shape: tuple  # (g, g, D)
    embedding_dim: int = 256
    units: int = 512
    attention_dim: int = 256
    dropout: float = 0.5
    recurrent_dropout: float = 0.0
    global_input: bool = True  # the LSTM reads the image's global feature with every word (Lu et al.'s x_t)

    @property
    def regions(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def feature_dim(self) -> int:
        return self.grid_shape[2]


@keras.saving.register_keras_serializable(package="imcap")
class TakeRows(layers.Layer):
    """rows [B, ...], index [N] -> rows[index] [N, ...]: each caption gets its image's tensor."""

    def call(self, rows, index):
        return ops.take(rows, ops.cast(index, "int32"), axis=0)

    def compute_output_shape(self, rows_shape, index_shape):
        return (index_shape[0],) + tuple(rows_shape[1:])


@keras.saving.register_keras_serializable(package="imcap")
class WithEveryStep(layers.Layer):
    """sequence [N, T, E], vector [N, F] -> [N, T, E + F]: the vector joins every step of the sequence."""

    def call(self, sequence, vector):
        steps = ops.shape(sequence)[1]
        return ops.concatenate([sequence, ops.repeat(ops.expand_dims(vector, 1), steps, axis=1)], axis=-1)

    def compute_output_shape(self, sequence_shape, vector_shape):
        return tuple(sequence_shape[:-1]) + (sequence_shape[-1] + vector_shape[-1],)


@keras.saving.register_keras_serializable(package="imcap")
class GridAttention(layers.Layer):
    """Scaled dot-product attention of every step's hidden state over the image regions.

    call(hidden [N, T, U], regions [B, G, U], image_index [N]) -> (context [N, T, U], weights [N, T, G]): caption n
    attends over the regions of image ``image_index[n]`` (without an index, B = N: one image per caption). The keys
    are projected once per image, before the captions take their image's. The weights of a step sum to 1 over the
    G regions. `keys` and `attend` are the two halves, for decoding one step at a time.
    """

    def __init__(self, attention_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = attention_dim
        self.query = layers.Dense(attention_dim, use_bias=False, name="query")
        self.key = layers.Dense(attention_dim, use_bias=False, name="key")

    def build(self, hidden_shape, regions_shape=None, image_index_shape=None):
        self.query.build(hidden_shape)
        self.key.build(regions_shape if regions_shape is not None else hidden_shape)

    def keys(self, regions):
        """[N, G, U] -> [N, G, A], pre-scaled by 1 / sqrt(A)."""
        return self.key(regions) / float(self.attention_dim) ** 0.5

    def attend(self, hidden, keys, regions):
        """hidden [N, T, U] -> (context [N, T, U], weights [N, T, G])."""
        scores = ops.einsum("nta,nga->ntg", self.query(hidden), keys)
        weights = ops.softmax(scores, axis=-1)
        return ops.einsum("ntg,ngu->ntu", weights, regions), weights

    def call(self, hidden, regions, image_index=None):
        keys = self.keys(regions)
        if image_index is not None:
            index = ops.cast(image_index, "int32")
            keys, regions = ops.take(keys, index, axis=0), ops.take(regions, index, axis=0)
        return self.attend(hidden, keys, regions)

    def compute_output_shape(self, hidden_shape, regions_shape, image_index_shape=None):
        return tuple(hidden_shape[:-1]) + (regions_shape[-1],), tuple(hidden_shape[:-1]) + (regions_shape[1],)

    def get_config(self):
        return {**super().get_config(), "attention_dim": self.attention_dim}


def build_attention_decoder(config: AttentionConfig, scale: float = 1.0) -> keras.Model:
    """The training graph: (grid [B, G, D], image_index [N], tokens [N, T]) -> logits [N, T, V].

    ``scale`` multiplies the features (1 / their RMS over the train grids: `trainer.model`'s "scale" scaling)."""
    grid = keras.Input((config.regions, config.feature_dim), name=GRID_INPUT)
    image_index = keras.Input((), dtype="int32", name=IMAGE_INDEX_INPUT)
    tokens = keras.Input((None,), dtype="int32", name=TOKENS_INPUT)

    scaled = layers.Rescaling(scale, name=NORMALIZATION)(grid)
    scaled = layers.Dropout(config.dropout, name="grid_dropout")(scaled)
    regions = layers.Dense(config.units, activation="relu", name=REGION_PROJECTION)(scaled)
    mean = layers.GlobalAveragePooling1D(name="mean_region")(regions)
    initial_hidden = layers.Dense(config.units, activation="tanh", name=INITIAL_HIDDEN)(mean)
    initial_memory = layers.Dense(config.units, activation="tanh", name=INITIAL_MEMORY)(mean)

    take = TakeRows(name="caption_images")
    text = layers.Embedding(config.vocab_size, config.embedding_dim, name=EMBEDDING)(tokens)
    if config.global_input:
        image = layers.Dense(config.embedding_dim, activation="relu", name=GLOBAL_PROJECTION)(
            layers.GlobalAveragePooling1D(name="mean_feature")(scaled))
        text = WithEveryStep(name="word_and_image")(text, take(image, image_index))
    text = layers.Dropout(config.dropout, name="token_dropout")(text)
    hidden = layers.LSTM(config.units, return_sequences=True, recurrent_dropout=config.recurrent_dropout,
                         name=LSTM)(text, initial_state=[take(initial_hidden, image_index),
                                                         take(initial_memory, image_index)])
    context, _ = GridAttention(config.attention_dim, name=ATTENTION)(hidden, regions, image_index)

    merged = layers.Add(name=MERGE)([context, hidden])
    merged = layers.Dense(config.units, activation="relu", name=MERGED_PROJECTION)(merged)
    merged = layers.Dropout(config.dropout, name="merged_dropout")(merged)
    logits = layers.Dense(config.vocab_size, name=LOGITS)(merged)
    return keras.Model([grid, image_index, tokens], logits, name="attention_caption_decoder")


def is_attention_decoder(model) -> bool:
    return any(layer.name == ATTENTION for layer in model.layers)
