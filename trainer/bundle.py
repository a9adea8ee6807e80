"""Writing and loading model bundles (`schemas.bundle`): the decoder, its vocabulary and its config."""
import hashlib
import os
import tempfile

from schemas import backbones, bundle as bundle_schema
from schemas import fileio
from schemas.bundle import BundleKeys, DecodingKeys
from schemas.records import MetadataKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary

DEFAULT_DECODING = {DecodingKeys.BEAM_WIDTH: 3, DecodingKeys.LENGTH_PENALTY: 0.0}


def export_bundle(model_dir: str, decoder, vocabulary: Vocabulary, metadata: dict, training: dict,
                  decoding: dict | None = None) -> dict:
    """Writes decoder.keras, vocab.txt and bundle.json into model_dir; returns the config."""
    fileio.makedirs(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, bundle_schema.DECODER_FILE)
        decoder.save(local)
        weights_digest = backbones.weights_digest(decoder)
        target = fileio.join(model_dir, bundle_schema.DECODER_FILE)
        import tensorflow as tf
        tf.io.gfile.copy(local, target, overwrite=True)
    vocabulary.save(fileio.join(model_dir, VOCAB_FILE))
    identity = hashlib.sha256((weights_digest + vocabulary.to_text() + metadata[MetadataKeys.WEIGHTS_SHA256]
                               ).encode("utf-8")).hexdigest()
    config = {
        BundleKeys.FORMAT_VERSION: bundle_schema.FORMAT_VERSION,
        BundleKeys.MODEL_ID: "imcap-" + identity[:12],
        BundleKeys.BACKBONE: metadata[MetadataKeys.BACKBONE],
        BundleKeys.WEIGHTS: metadata[MetadataKeys.WEIGHTS],
        BundleKeys.WEIGHTS_SHA256: metadata[MetadataKeys.WEIGHTS_SHA256],
        BundleKeys.IMAGE_SIZE: metadata[MetadataKeys.IMAGE_SIZE],
        BundleKeys.PREPROCESSING: metadata[MetadataKeys.PREPROCESSING],
        BundleKeys.FEATURE_DIM: metadata[MetadataKeys.FEATURE_DIM],
        BundleKeys.MAX_LENGTH: metadata[MetadataKeys.MAX_LENGTH],
        BundleKeys.VOCAB_SIZE: len(vocabulary),
        BundleKeys.DECODING: dict(decoding or DEFAULT_DECODING),
        BundleKeys.TRAINING: training,
    }
    fileio.write_json(fileio.join(model_dir, bundle_schema.CONFIG_FILE), config)
    return config


class Bundle:
    """A loaded bundle: ``config``, ``vocabulary``, the Keras ``decoder_model`` and a ready `CaptionDecoder`
    (``decoder``). ``with_decoder=False`` reads the config and vocabulary only (no TensorFlow)."""

    def __init__(self, model_dir: str, with_decoder: bool = True):
        config_path = fileio.join(model_dir, bundle_schema.CONFIG_FILE)
        if not fileio.exists(config_path):
            raise FileNotFoundError(f"{config_path}: no such file; --model_dir must be a directory written by "
                                    "trainer.task (decoder.keras, vocab.txt, bundle.json)")
        self.model_dir = model_dir
        self.config = bundle_schema.check_config(fileio.read_json(config_path), config_path)
        self.vocabulary = Vocabulary.load(fileio.join(model_dir, VOCAB_FILE))
        if len(self.vocabulary) != self.config[BundleKeys.VOCAB_SIZE]:
            raise ValueError(f"{model_dir}: vocab.txt has {len(self.vocabulary)} tokens, bundle.json says "
                             f"{self.config[BundleKeys.VOCAB_SIZE]}")
        self.decoder_model = self.decoder = None
        if with_decoder:
            self.decoder_model = load_decoder(fileio.join(model_dir, bundle_schema.DECODER_FILE))
            from trainer.decoding import CaptionDecoder
            self.decoder = CaptionDecoder(self.decoder_model, self.vocabulary, self.config[BundleKeys.MAX_LENGTH])

    @property
    def model_id(self) -> str:
        return self.config[BundleKeys.MODEL_ID]

    @property
    def decoding(self) -> dict:
        return self.config[BundleKeys.DECODING]

    def decoding_for(self, beam_width: int | None = None, length_penalty: float | None = None) -> tuple[int, float]:
        """(beam width, length penalty): the ones given, else the bundle's defaults."""
        return (beam_width or self.decoding[DecodingKeys.BEAM_WIDTH],
                self.decoding[DecodingKeys.LENGTH_PENALTY] if length_penalty is None else length_penalty)


def load_decoder(path: str):
    import keras
    if "://" in path:
        import tensorflow as tf
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, os.path.basename(path))
            tf.io.gfile.copy(path, local)
            return keras.saving.load_model(local, compile=False)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return keras.saving.load_model(path, compile=False)


def feature_weights_for(config: dict, override: str | None) -> str:
    """The --weights spec that rebuilds the bundle's feature extractor (its sha256 is checked after loading)."""
    if override:
        return override
    recorded = config[BundleKeys.WEIGHTS]
    if recorded.startswith("file:"):
        raise ValueError(f"this bundle was trained on features from a local weights file ({recorded[5:]}); pass "
                         "--weights PATH with that file")
    return recorded


def check_feature_weights(config: dict, digest: str, weights: str) -> None:
    expected = config[BundleKeys.WEIGHTS_SHA256]
    if digest != expected:
        raise ValueError(f"--weights {weights} gives a {config[BundleKeys.BACKBONE]} with weights sha256 "
                         f"{digest[:12]}, but the bundle was trained on features of weights {expected[:12]} "
                         f"({config[BundleKeys.WEIGHTS]}); captions would be meaningless. Pass the same weights.")
