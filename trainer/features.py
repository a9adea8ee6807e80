"""The feature layer: the backbone as the extract job, the caption job and imcap-predict run it (no Beam here).

A `FeatureSpec` says which extractor: backbone, weights, image size, backend, grid and int8 model. `load_extractor`
builds it on the machine that runs it (a Beam worker, or imcap-predict's process) and returns a `FeatureExtractor`:
uint8 pixels [B, H, W, 3] (`schemas.images.prepare_image`) -> pooled features [B, D], or `records.SpatialFeatures`
(the same vectors and the last convolutional map pooled to grid x grid, float16) from the same forward pass.

Backends: "keras" (TensorFlow; the reference), "openvino" (OpenVINO, bfloat16 where the CPU has it), "openvino-f32",
and "openvino-int8" (the int8 model `trainer.quantization` writes). The weights are Keras' in every case and their
SHA-256 (`schemas.backbones.weights_digest`) is checked against the one the launcher saw.
"""
import dataclasses
import logging
import threading
from typing import NamedTuple, Optional

import numpy as np

from schemas import backbones, fileio, records
from schemas import int8_model as int8_schema

KERAS_BACKEND = "keras"
INT8_BACKEND = int8_schema.BACKEND
AUTO_BACKEND = "auto"  # the jobs' default: each job's prepare picks a backend for it
# name -> OpenVINO precision hint (None: OpenVINO's choice for the CPU, bfloat16 where it has it, else f32)
INFERENCE_BACKENDS = {KERAS_BACKEND: None, "openvino": None, "openvino-f32": "f32", INT8_BACKEND: None}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which feature extractor a job runs: the one options object of its RunInference handler."""
    backbone: str
    weights: str  # imagenet, none, or a weights file on any Beam filesystem
    image_size: int
    weights_sha256: Optional[str] = None  # the digest seen at launch; a worker that loads others fails
    backend: str = KERAS_BACKEND
    grid: int = 0  # > 0: also the last convolutional map pooled to grid x grid
    int8_model: Optional[str] = None  # the int8 model directory of the openvino-int8 backend

    def __post_init__(self):
        backbones.check_image_size(backbones.get_backbone(self.backbone), self.image_size)
        check_backend(self.backend, self.int8_model)
        if self.backend == INT8_BACKEND and not self.int8_model:
            raise ValueError(f"the {INT8_BACKEND} backend needs its int8 model")


def check_backend(backend: str, int8_model: Optional[str] = None) -> None:
    """Fails fast on an unknown backend, a missing OpenVINO installation, or an int8 model given to another
    backend. (Where an int8 backend gets its model is each job's business.)"""
    if backend not in INFERENCE_BACKENDS:
        raise ValueError(f"--inference_backend {backend}: one of {', '.join([AUTO_BACKEND, *INFERENCE_BACKENDS])}")
    if backend != KERAS_BACKEND:
        try:
            import openvino  # noqa: F401  (optional: the imcap[openvino] extra)
        except ImportError:
            raise ValueError(f"--inference_backend {backend} needs OpenVINO: pip install openvino") from None
    if int8_model and backend != INT8_BACKEND:
        raise ValueError(f"--int8_model is the model of --inference_backend {INT8_BACKEND}, not of {backend}")


def backend_for_bundle(bundle, requested: str, int8_model: str | None = None) -> tuple[str, str | None]:
    """(feature backend, int8 model directory or None) to caption with ``bundle`` (`trainer.bundle.Bundles`), as
    the caption job and imcap-predict choose it: --inference_backend auto follows the bundle's training features,
    so that the decoder sees the features it was trained on (int8 with the bundle's own int8 model where it was
    trained on int8 features); another backend is used as asked, and said."""
    trained_on = bundle.inference_backend
    backend = requested
    if backend == AUTO_BACKEND:
        backend = INT8_BACKEND if int8_model else trained_on
    check_backend(backend, int8_model)
    if int8_model and trained_on == INT8_BACKEND:
        given = int8_schema.read_info(int8_model).get("bin_sha256")
        if given != int8_schema.identity(bundle.config):
            logging.warning("--int8_model %s is not the int8 model %s was trained with (bin sha256 %s): its features "
                            "differ from the training ones", int8_model, bundle.model_id, str(given)[:12])
    if backend == INT8_BACKEND and not int8_model:
        int8_model = bundle.int8_model
        if not int8_model:
            raise ValueError(f"--inference_backend {INT8_BACKEND} needs --int8_model DIR: {bundle.model_dir} was "
                             f"trained on {trained_on} features and has no int8 model of its own (imcap-quantize "
                             "writes one)")
    if backend != trained_on:
        logging.info("features from %s, while %s was trained on %s features (BENCHMARKS.md, feature backends "
                     "measures what that costs in caption quality)", backend, bundle.model_id, trained_on)
    logging.info("feature backend: %s%s", backend, f" ({int8_model})" if int8_model else "")
    return backend, int8_model


def load_feature_model(backbone: backbones.Backbone, weights: str, image_size: int, spatial: bool = False):
    """(Keras feature extractor, SHA-256 of its weights) for ``weights`` imagenet, none or a weights file on any
    Beam filesystem (copied to local disk first). ``spatial``: it also outputs the convolutional map."""
    local = weights if weights in (backbones.IMAGENET, backbones.RANDOM_INIT) else fileio.local_copy(weights)
    model = backbones.build_feature_extractor(backbone, local, image_size, spatial=spatial)
    return model, backbones.weights_digest(model)


class ExtractorInfo(NamedTuple):
    weights_sha256: str
    feature_dim: int
    map_size: int  # the last convolutional map is map_size x map_size x feature_dim


def describe_extractor(backbone: backbones.Backbone, weights: str, image_size: int) -> ExtractorInfo:
    """What the extractor that ``weights`` builds gives (the launcher checks it before any worker starts)."""
    model, digest = load_feature_model(backbone, weights, image_size, spatial=True)
    _, map_shape = model.output_shape
    return ExtractorInfo(digest, int(map_shape[-1]), int(map_shape[1]))


def traced_forward(model, image_size: int):
    """The model as one traced function over [None, size, size, 3] float32 batches (any batch size, one trace, so
    the variable batches of Beam's adaptive batching do not retrace it)."""
    import tensorflow as tf
    return tf.function(lambda images: model(images, training=False), input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])


class KerasExtractor:
    """The Keras model behind one traced function; returns the pooled features, or (pooled features,
    convolutional maps) for a spatial model."""

    def __init__(self, model, image_size: int):
        self._forward = traced_forward(model, image_size)

    def __call__(self, images: np.ndarray):
        outputs = self._forward(images)
        if isinstance(outputs, (list, tuple)):
            return tuple(output.numpy() for output in outputs)
        return outputs.numpy()


class OpenVinoExtractor:
    """The same network compiled by OpenVINO for the CPU: converted in memory from the traced Keras model, or the
    int8 model `trainer.quantization` wrote (read from its IR).

    ``precision`` None lets OpenVINO choose: bfloat16 on CPUs that support it (about 2x faster than Keras on
    AVX-512 BF16 CPUs; features within cosine 0.999 of Keras'), else f32; "f32" matches Keras to ~1e-5. For the int8
    model it is the precision of the layers NNCF left unquantized. ``outputs``: how many of the network's outputs to
    return (the int8 model always has both, pooled and map). One infer request per thread: RunInference shares the
    model between the threads of a worker.
    """

    def __init__(self, network, precision: Optional[str], outputs: Optional[int] = None, label: str = ""):
        import openvino
        hints = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.compiled = openvino.Core().compile_model(network, "CPU", hints)
        self.precision = label + self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._outputs = outputs or len(self.compiled.outputs)
        self._local = threading.local()

    @classmethod
    def from_keras(cls, model, image_size: int, precision: Optional[str]) -> "OpenVinoExtractor":
        import openvino
        return cls(openvino.convert_model(traced_forward(model, image_size)), precision)

    def __call__(self, images: np.ndarray):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(images)
        if self._outputs == 1:
            return results[0].copy()  # the request reuses its output buffers
        return tuple(results[index].copy() for index in range(self._outputs))


def check_int8_model(int8_model: str, backbone: str, image_size: int, weights_sha256: Optional[str]) -> dict:
    """quantization.json of ``int8_model``, checked against the extractor the job runs (on the launcher)."""
    info = int8_schema.read_info(int8_model)
    int8_schema.check_matches(info, int8_model, backbone, image_size, weights_sha256)
    return info


def load_int8_model(int8_model: str, backbone: str, image_size: int, weights_sha256: Optional[str]):
    """(the int8 OpenVINO network of ``int8_model``, the SHA-256 of the Keras weights it was made from); any Beam
    filesystem (copied to local disk first), checked."""
    import openvino

    info = check_int8_model(int8_model, backbone, image_size, weights_sha256)
    weights_file = fileio.local_copy(fileio.join(int8_model, int8_schema.MODEL_BIN))
    with open(weights_file, "rb") as handle:
        int8_schema.check_bin(handle.read(), info, int8_model)
    network = openvino.Core().read_model(fileio.local_copy(fileio.join(int8_model, int8_schema.MODEL_XML)),
                                         weights_file)
    return network, info["weights_sha256"]


class FeatureExtractor:
    """uint8 pixels [B, H, W, 3] -> float32 features [B, D], or `records.SpatialFeatures` with a grid."""

    def __init__(self, spec: FeatureSpec, run, weights_sha256: str, description: str):
        self.spec = spec
        self.backbone = backbones.get_backbone(spec.backbone)
        self.weights_sha256 = weights_sha256
        self.description = description  # the backend and its precision, for logs
        self._run = run

    def __call__(self, pixels: np.ndarray):
        outputs = self._run(backbones.preprocess(self.backbone, pixels))
        if not self.spec.grid:
            return outputs
        vectors, maps = outputs
        return records.SpatialFeatures(vectors, records.stored_grid(backbones.pool_grid(maps, self.spec.grid)))


def load_extractor(spec: FeatureSpec) -> FeatureExtractor:
    """Builds the extractor ``spec`` names on this machine; fails if its weights are not ``spec.weights_sha256``."""
    backbone = backbones.get_backbone(spec.backbone)
    if spec.backend == INT8_BACKEND:  # the quantized IR stands alone: no Keras model is built
        network, digest = load_int8_model(spec.int8_model, backbone.name, spec.image_size, spec.weights_sha256)
        run = OpenVinoExtractor(network, None, outputs=2 if spec.grid else 1, label="int8+")
        extractor = FeatureExtractor(spec, run, digest, f"openvino ({run.precision})")
        logging.info("loaded the int8 %s of %s (%dx%d, weights sha256 %s), backend %s", backbone.name,
                     spec.int8_model, spec.image_size, spec.image_size, digest[:12], extractor.description)
        return extractor
    model, digest = load_feature_model(backbone, spec.weights, spec.image_size, spatial=spec.grid > 0)
    if spec.weights_sha256 and digest != spec.weights_sha256:
        raise ValueError(f"the {backbone.name} weights loaded on this worker ({spec.weights}, sha256 "
                         f"{digest[:12]}) differ from the ones checked at launch ({spec.weights_sha256[:12]})")
    if spec.backend == KERAS_BACKEND:
        run, description = KerasExtractor(model, spec.image_size), KERAS_BACKEND
    else:
        run = OpenVinoExtractor.from_keras(model, spec.image_size, INFERENCE_BACKENDS[spec.backend])
        description = f"openvino ({run.precision})"
    logging.info("loaded %s (%s, %dx%d, weights sha256 %s), backend %s", backbone.name, spec.weights,
                 spec.image_size, spec.image_size, digest[:12], description)
    return FeatureExtractor(spec, run, digest, description)
