"""The CNN-RNN "merge" caption decoder (Tanti et al. 2017; the seed tutorial's architecture), trained with teacher
forcing over whole sequences.

    image features [D] -> scaling -> dropout -> dense(units, relu) ─────────────────┐
    caption tokens [T] -> embedding -> dropout -> LSTM(units, sequences) ──────────── add -> dense(units, relu)
                                                                        -> dense(vocab) = next-token logits [T, V]

The image never enters the LSTM: it is merged with the language state after it, at every time step. The features
can be rescaled by constants fitted on the train features and saved inside the model (`fitted_feature_scaling`):
``scale`` divides by one number, their root mean square, so any backbone's features reach unit scale without
changing their geometry (random-init Xception's are ~1e-5); ``standardize`` centres and scales each dimension.
On Flickr8k with ImageNet features per-dimension standardization costs ~0.3 nats of dev loss and ~0.02 BLEU-4
(it amplifies the many near-constant dimensions), hence the default ``scale``.
Padding (id 0) is ignored by the loss (`masked_loss`); padded positions come after every real token, so the
LSTM's outputs at real positions never see them.

Layer names are part of the decoder's interface: `trainer.decoding` reuses the trained layers one step at a time.
"""
import dataclasses

import keras
import numpy as np
from keras import layers

from schemas.vocabulary import PAD_ID

FEATURES_INPUT = "image_features"
TOKENS_INPUT = "caption_tokens"
NORMALIZATION = "feature_normalization"
IMAGE_PROJECTION = "image_projection"
EMBEDDING = "token_embedding"
LSTM = "caption_lstm"
MERGE = "merge"
MERGED_PROJECTION = "merged_projection"
LOGITS = "next_token_logits"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    feature_dim: int
    embedding_dim: int = 256
    units: int = 256
    dropout: float = 0.5
    recurrent_dropout: float = 0.0


def build_decoder(config: DecoderConfig, normalization: layers.Layer | None = None) -> keras.Model:
    """The training graph: (features [B, D], tokens [B, T]) -> logits [B, T, V]."""
    features = keras.Input((config.feature_dim,), name=FEATURES_INPUT)
    tokens = keras.Input((None,), dtype="int32", name=TOKENS_INPUT)

    image = normalization(features) if normalization is not None else features
    image = layers.Dropout(config.dropout, name="image_dropout")(image)
    image = layers.Dense(config.units, activation="relu", name=IMAGE_PROJECTION)(image)
    image = layers.Reshape((1, config.units), name="image_per_step")(image)

    text = layers.Embedding(config.vocab_size, config.embedding_dim, name=EMBEDDING)(tokens)
    text = layers.Dropout(config.dropout, name="token_dropout")(text)
    text = layers.LSTM(config.units, return_sequences=True, recurrent_dropout=config.recurrent_dropout,
                       name=LSTM)(text)

    merged = layers.Add(name=MERGE)([image, text])
    hidden = layers.Dense(config.units, activation="relu", name=MERGED_PROJECTION)(merged)
    logits = layers.Dense(config.vocab_size, name=LOGITS)(hidden)
    return keras.Model([features, tokens], logits, name="merge_caption_decoder")


FEATURE_SCALINGS = ("scale", "standardize", "none")


def fitted_feature_scaling(feature_batches, mode: str) -> layers.Layer | None:
    """The feature scaling layer of a mode (see the module docstring), fitted on batches of train features."""
    if mode == "none":
        return None
    if mode not in FEATURE_SCALINGS:
        raise ValueError(f"unknown feature scaling {mode!r}; one of {FEATURE_SCALINGS}")
    features = np.concatenate([np.asarray(batch, np.float32) for batch in feature_batches])
    if mode == "standardize":
        normalization = layers.Normalization(axis=-1, name=NORMALIZATION)
        normalization.adapt(features)
        return normalization
    root_mean_square = float(np.sqrt(np.mean(np.square(features, dtype=np.float64))))
    if root_mean_square == 0.0:
        raise ValueError("the train features are all zero: nothing to learn from")
    return layers.Rescaling(1.0 / root_mean_square, name=NORMALIZATION)


def masked_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Cross-entropy of the next token, averaged over real (non-padding) positions; with ``label_smoothing`` e,
    against the reference token at 1 - e and the uniform distribution over the vocabulary at e (Szegedy et al.
    2016), as `SmoothedCaptionLoss`."""
    if label_smoothing:
        return SmoothedCaptionLoss(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)


@keras.saving.register_keras_serializable(package="imcap")
class SmoothedCaptionLoss(keras.losses.Loss):
    """Label-smoothed next-token cross-entropy over real (non-padding) positions:

        (1 - e) * -log p(reference) + e * mean over the vocabulary of -log p(w)

    summed over positions whose target is not padding, divided by their number (so e = 0 is Keras' sparse
    cross-entropy with ``ignore_class`` padding, the default loss)."""

    def __init__(self, label_smoothing: float, name: str = "smoothed_caption_loss", **kwargs):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        targets = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        reference = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1), -1)
        uniform = -ops.mean(log_probs, axis=-1)
        per_position = (1.0 - self.label_smoothing) * reference + self.label_smoothing * uniform
        mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
        # one number per batch: Keras' reduction of a scalar leaves it as it is
        return ops.sum(per_position * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class MaskedAccuracy(keras.metrics.Metric):
    """Next-token accuracy over real (non-padding) positions."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.cast(y_true, "int32")
        mask = keras.ops.cast(keras.ops.not_equal(y_true, PAD_ID), "float32")
        hits = keras.ops.cast(keras.ops.equal(keras.ops.argmax(y_pred, axis=-1), y_true), "float32")
        self.correct.assign_add(keras.ops.sum(hits * mask))
        self.total.assign_add(keras.ops.sum(mask))

    def result(self):
        return self.correct / keras.ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)


def compile_decoder(model: keras.Model, learning_rate: float, clipnorm: float | None = 5.0,
                    label_smoothing: float = 0.0) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm),
                  loss=masked_loss(label_smoothing), metrics=[MaskedAccuracy()])
    return model
