"""The model bundle: everything captioning new images needs, written by the trainer, read by the caption job.

A bundle directory holds::

    decoder.keras    the trained caption decoder (Keras native format, no pickle; an attention decoder holds two
                     layers registered by `trainer.attention`, so it needs an imcap that has them: format 2)
    vocab.txt        its vocabulary (`schemas.vocabulary`)
    bundle.json      this config: the feature extractor to run on images, what the decoder reads (``decoder``:
                     merge reads the pooled vector, attention the spatial grid of ``grid_shape``), how to decode

The feature-extractor keys repeat the extract job's metadata (`schemas.records.MetadataKeys`), so a caption job
builds exactly the network the decoder was trained on and refuses any other (``weights_sha256``).
"""
from schemas.records import checked_grid_shape

DECODER_FILE = "decoder.keras"
INT8_DIR = "extractor_int8"  # the int8 extractor the training features came from (openvino-int8 bundles)
CONFIG_FILE = "bundle.json"
FORMAT_VERSION = 1  # merge bundles: readable by every imcap
ATTENTION_FORMAT_VERSION = 2  # attention bundles: their decoder.keras holds imcap's registered attention layers
SUPPORTED_FORMATS = (FORMAT_VERSION, ATTENTION_FORMAT_VERSION)


class BundleKeys:
    FORMAT_VERSION = "format_version"
    MODEL_ID = "model_id"  # stable name of this bundle: "imcap-" + 12 hex digits of a digest of its files
    BACKBONE = "backbone"
    WEIGHTS = "weights"  # imagenet | none | file:<name>: what to pass as --weights
    WEIGHTS_SHA256 = "weights_sha256"
    IMAGE_SIZE = "image_size"
    PREPROCESSING = "preprocessing"
    FEATURE_DIM = "feature_dim"
    MAX_LENGTH = "max_length"  # longest sequence to decode, <start> and <end> included
    VOCAB_SIZE = "vocab_size"
    DECODER = "decoder"  # merge | attention (absent: merge, as bundles before attention)
    GRID_SHAPE = "grid_shape"  # attention decoders: the [g, g, D] grid of the records they were trained on
    MEMBERS = "members"  # an ensemble's config only: the model ids of its bundles
    DECODING = "decoding"  # {DecodingKeys.BEAM_WIDTH: int, DecodingKeys.LENGTH_PENALTY: float}: the defaults
    INFERENCE_BACKEND = "inference_backend"  # the extractor backend of its training features (absent: keras)
    INT8_MODEL = "int8_model"  # openvino-int8 bundles: the int8 extractor's digest and calibration (in INT8_DIR)
    TRAINING = "training"  # hyper-parameters, data and results of the run that produced it (informational)


class DecodingKeys:
    """Keys of BundleKeys.DECODING: how the caption job, trainer.evaluate and trainer.predict decode by default."""
    BEAM_WIDTH = "beam_width"  # 1: greedy
    LENGTH_PENALTY = "length_penalty"  # hypotheses ranked by log_prob / length ** length_penalty
    # a token that would repeat an n-gram of this many tokens is never chosen (0: no blocking); absent in bundles
    # written before it existed: DEFAULT_NO_REPEAT_NGRAM_SIZE
    NO_REPEAT_NGRAM_SIZE = "no_repeat_ngram_size"


# The product's default (BENCHMARKS.md, caption quality: Flickr8k dev with and without blocking).
DEFAULT_NO_REPEAT_NGRAM_SIZE = 2


MERGE_DECODER = "merge"
ATTENTION_DECODER = "attention"
DECODERS = (MERGE_DECODER, ATTENTION_DECODER)


def decoder_kind(config: dict) -> str:
    return config.get(BundleKeys.DECODER, MERGE_DECODER)


def grid_shape(config: dict) -> tuple | None:
    """The [g, g, D] grid an attention bundle decodes from, or None (a merge bundle: pooled vectors)."""
    shape = config.get(BundleKeys.GRID_SHAPE)
    if not shape:
        return None
    return checked_grid_shape(shape, config.get(BundleKeys.FEATURE_DIM), "bundle.json")


REQUIRED_KEYS = (BundleKeys.FORMAT_VERSION, BundleKeys.MODEL_ID, BundleKeys.BACKBONE, BundleKeys.WEIGHTS,
                 BundleKeys.WEIGHTS_SHA256, BundleKeys.IMAGE_SIZE, BundleKeys.FEATURE_DIM, BundleKeys.MAX_LENGTH,
                 BundleKeys.VOCAB_SIZE, BundleKeys.DECODING)


def inference_backend(config: dict) -> str:
    """The backend of the features the bundle was trained on; the caption job's default for it."""
    return config.get(BundleKeys.INFERENCE_BACKEND) or "keras"


def check_config(config: dict, source: str) -> dict:
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"{source}: not a model bundle config, missing {', '.join(missing)}")
    if config[BundleKeys.FORMAT_VERSION] not in SUPPORTED_FORMATS:
        raise ValueError(f"{source}: bundle format {config[BundleKeys.FORMAT_VERSION]} is not one this imcap reads "
                         f"({', '.join(map(str, SUPPORTED_FORMATS))}); retrain or use the imcap version that wrote it")
    if decoder_kind(config) not in DECODERS:
        raise ValueError(f"{source}: unknown decoder {decoder_kind(config)!r}; this imcap knows {', '.join(DECODERS)}")
    if decoder_kind(config) == ATTENTION_DECODER and not grid_shape(config):
        raise ValueError(f"{source}: an attention bundle without {BundleKeys.GRID_SHAPE}")
    if decoder_kind(config) == MERGE_DECODER and config.get(BundleKeys.GRID_SHAPE):
        raise ValueError(f"{source}: a merge bundle with a {BundleKeys.GRID_SHAPE} (merge decoders read pooled "
                         "vectors only): a damaged or hand-edited bundle.json")
    if decoder_kind(config) == ATTENTION_DECODER and config[BundleKeys.FORMAT_VERSION] < 2:
        raise ValueError(f"{source}: bundle format {config[BundleKeys.FORMAT_VERSION]} predates attention decoders")
    return config
