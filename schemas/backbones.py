"""The image feature extractor: what ``image_features`` means in every record and at caption time.

One backbone is defined: Keras' ImageNet Xception without its classifier, global-average pooled to 2048 floats,
fed with `images.prepare_image` pixels scaled by Keras' Xception preprocessing (``x / 127.5 - 1``).

Weights are named by a spec: ``imagenet`` (Keras' published ImageNet weights), ``none`` (random initialisation
from a fixed seed, so every worker builds the same network -- for tests and offline demos), or a path to a Keras
weights file (``.weights.h5`` or ``.h5``). Whatever the spec, the weights are identified by `weights_digest`, a
SHA-256 over the float32 bytes of every tensor in Keras' order, which the extract job records and the caption job
checks, so features are never mixed across different networks.

``imagenet`` comes from the first of (`imagenet_source`): Keras' own cache (``$KERAS_HOME/models/``, by default
``~/.keras/models/``: the file Keras downloads, held to Keras' published MD5 by Keras), the copy ``imcap-weights
install`` checked and wrote beside it (any Keras file of the same tensors), or a download by Keras on first use.
"""
import dataclasses
import hashlib
import os
import typing

import numpy as np

IMAGENET = "imagenet"
RANDOM_INIT = "none"
RANDOM_INIT_SEED = 0

# Keras' published ImageNet Xception weights, as keras.applications.xception names them (tests/beam_jobs/tools/
# test_weights.py holds these to Keras' own values): without the top (what imcap uses) and with it.
KERAS_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/xception/"
                     "xception_weights_tf_dim_ordering_tf_kernels_notop.h5")
KERAS_WEIGHTS_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_WEIGHTS_MD5 = "b0042744bf5b25fce3cb969f33bebb97"
KERAS_TOP_WEIGHTS_FILE = "xception_weights_tf_dim_ordering_tf_kernels.h5"
KERAS_TOP_WEIGHTS_MD5 = "0a58e3b7378bc2990ea3b43d5981f1f6"
# `weights_digest` of those weights (without the top): the tensors, whatever file format holds them
IMAGENET_SHA256 = "dd8fa9fc31ba124382395512a133fe425aa5c6667b16e5832bb79910d1b77829"
# the file `imcap-weights install` writes beside Keras' own, when it was given the same tensors in another file
INSTALLED_WEIGHTS_FILE = "imcap_xception_imagenet_notop.weights.h5"
INSTALL_HINT = ("`imcap-weights install FILE` with Keras' published file (" + KERAS_WEIGHTS_URL.rsplit("/", 1)[1]
                + ", downloaded on any machine with internet access: `imcap-weights download`) makes --weights "
                "imagenet work offline")


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    feature_dim: int
    default_image_size: int
    min_image_size: int
    keras_application: str  # attribute of keras.applications
    preprocessing: str  # a short description recorded in metadata and bundles


XCEPTION = Backbone(name="xception", feature_dim=2048, default_image_size=299, min_image_size=71,
                    keras_application="Xception", preprocessing="xception: pixels / 127.5 - 1 (keras)")
BACKBONES = {XCEPTION.name: XCEPTION}
DEFAULT_BACKBONE = XCEPTION.name


class WeightsUnavailable(ValueError):
    """Keras could not download the ImageNet weights (no internet access): the user passes a weights file instead."""


def keras_home() -> str:
    """Keras' own folder, as Keras chooses it: $KERAS_HOME, else ~/.keras (/tmp/.keras where home is read-only)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    base = os.path.expanduser("~")
    return os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")


class ImagenetSource(typing.NamedTuple):
    kind: str  # KERAS_CACHE, INSTALLED or DOWNLOAD
    path: str  # the file, or the URL Keras downloads


KERAS_CACHE, INSTALLED, DOWNLOAD = "keras-cache", "installed", "download"


def imagenet_source(home: str | None = None) -> ImagenetSource:
    """Where ``--weights imagenet`` comes from on this machine (see the module's docstring)."""
    models = os.path.join(home or keras_home(), "models")
    if os.path.isfile(os.path.join(models, KERAS_WEIGHTS_FILE)):
        return ImagenetSource(KERAS_CACHE, os.path.join(models, KERAS_WEIGHTS_FILE))
    if os.path.isfile(os.path.join(models, INSTALLED_WEIGHTS_FILE)):
        return ImagenetSource(INSTALLED, os.path.join(models, INSTALLED_WEIGHTS_FILE))
    return ImagenetSource(DOWNLOAD, KERAS_WEIGHTS_URL)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None


def check_image_size(backbone: Backbone, image_size: int) -> None:
    if image_size < backbone.min_image_size:
        raise ValueError(f"--image_size {image_size} is too small for {backbone.name}: it needs at least "
                         f"{backbone.min_image_size} (default {backbone.default_image_size})")


def describe_weights(weights: str) -> str:
    """The weights spec as recorded in metadata: 'imagenet', 'none' or 'file:<basename>'."""
    if weights in (IMAGENET, RANDOM_INIT):
        return weights
    return f"file:{os.path.basename(weights)}"


def check_weights_spec(weights: str) -> None:
    """Fails fast on a weights spec that names no usable file (remote paths are checked when copied)."""
    if weights in (IMAGENET, RANDOM_INIT) or "://" in weights:
        return
    if not os.path.isfile(weights):
        raise ValueError(f"--weights {weights}: no such file. Pass 'imagenet' (Keras' ImageNet weights), 'none' "
                         f"(random init, for tests) or the path of a Keras weights file; {INSTALL_HINT}")


def preprocess(backbone: Backbone, pixels: np.ndarray) -> np.ndarray:
    """Backbone scaling of a uint8 batch [N, H, W, 3] -> float32, exactly Keras' preprocess_input for Xception."""
    if backbone.name != XCEPTION.name:
        raise ValueError(f"no preprocessing defined for {backbone.name}")
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def build_feature_extractor(backbone: Backbone, weights: str, image_size: int, spatial: bool = False):
    """Builds the pooled backbone as a Keras model. ``weights`` must be 'imagenet', 'none' or a local file.

    ``spatial``: the model has two outputs, the pooled features [D] and the last convolutional map [M, M, D] they
    are pooled from (one forward pass; the pooled output is the same global average pooling layer, so it equals
    the non-spatial model's output)."""
    check_image_size(backbone, image_size)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    constructor = getattr(keras.applications, backbone.keras_application)
    shape = (image_size, image_size, 3)
    pooling = None if spatial else "avg"
    if weights == RANDOM_INIT:
        keras.utils.set_random_seed(RANDOM_INIT_SEED)
        model = constructor(weights=None, include_top=False, pooling=pooling, input_shape=shape)
    elif weights == IMAGENET and ((source := imagenet_source()).kind == INSTALLED or (
            source.kind == KERAS_CACHE and not os.access(os.path.dirname(source.path), os.W_OK))):
        # imcap's checked copy; or Keras' file in a read-only folder, which Keras itself would pass over for a
        # download into /tmp/.keras: both loaded here and held to the ImageNet tensors' digest
        path = source.path
        model = constructor(weights=None, include_top=False, pooling=pooling, input_shape=shape)
        model.load_weights(path)
        if weights_digest(model) != IMAGENET_SHA256:
            raise ValueError(f"{path} no longer holds Keras' ImageNet weights (its tensors changed since "
                             f"imcap-weights installed it); {INSTALL_HINT}")
    elif weights == IMAGENET:
        try:
            model = constructor(weights="imagenet", include_top=False, pooling=pooling, input_shape=shape)
        except Exception as error:  # Keras raises several types for a failed download
            raise WeightsUnavailable(
                f"could not get Keras' ImageNet weights for {backbone.name} ({type(error).__name__}: {error}). "
                f"Offline, {INSTALL_HINT}; or pass --weights PATH with a Keras weights file, or --weights none "
                "(random init)") from error
    else:
        check_weights_spec(weights)
        model = constructor(weights=None, include_top=False, pooling=pooling, input_shape=shape)
        try:
            model.load_weights(weights)
        except Exception as error:
            raise ValueError(f"--weights {weights}: cannot load it into {backbone.name} ({error}); it must be a "
                             "Keras weights file of the same architecture without the top") from error
    if not spatial:
        return model
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(model.output)  # as Keras' pooling="avg"
    return keras.Model(model.input, [pooled, model.output], name=f"{backbone.name}_spatial")


def grid_pooling_matrix(map_size: int, grid: int) -> np.ndarray:
    """[grid * grid, map_size * map_size] float32: adaptive average pooling of a square map to a grid x grid one
    (cell i covers rows floor(i * M / g) .. ceil((i + 1) * M / g) - 1, as PyTorch's AdaptiveAvgPool2d), row-major.
    With grid == map_size it is the identity."""
    if not 1 <= grid <= map_size:
        raise ValueError(f"a {map_size}x{map_size} feature map cannot be pooled to a {grid}x{grid} grid")
    bins = [(i * map_size // grid, -(-(i + 1) * map_size // grid)) for i in range(grid)]
    matrix = np.zeros((grid, grid, map_size, map_size), np.float32)
    for row, (top, bottom) in enumerate(bins):
        for column, (left, right) in enumerate(bins):
            matrix[row, column, top:bottom, left:right] = 1.0 / ((bottom - top) * (right - left))
    return matrix.reshape(grid * grid, map_size * map_size)


def pool_grid(feature_maps: np.ndarray, grid: int) -> np.ndarray:
    """[N, M, M, D] float32 maps -> [N, grid, grid, D] float32 (`grid_pooling_matrix`)."""
    count, map_size, _, depth = feature_maps.shape
    if grid == map_size:
        return np.asarray(feature_maps, np.float32)
    flat = np.asarray(feature_maps, np.float32).reshape(count, map_size * map_size, depth)
    return np.einsum("gm,nmd->ngd", grid_pooling_matrix(map_size, grid), flat).reshape(count, grid, grid, depth)


def weights_digest(model) -> str:
    """SHA-256 over the float32 bytes of all weight tensors, in Keras' order (independent of file format)."""
    digest = hashlib.sha256()
    for tensor in model.get_weights():
        digest.update(np.asarray(tensor, dtype=np.float32).tobytes())
    return digest.hexdigest()
