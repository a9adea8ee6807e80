"""RunInference model handlers of the jobs (Beam's TensorFlow handler needs tensorflow_hub and cannot load
SavedModels under Keras 3, so the jobs bring their own).

`FeatureExtractorHandler` turns batches of uint8 pixels (`schemas.images.prepare_image`) into pooled backbone
features. The Keras model is built in `load_model`, i.e. on the worker, once per process (RunInference shares it
between the threads of a worker), never pickled; a remote weights file (``gs://...``) is copied to local disk
first. The forward pass is one `tf.function` with a dynamic batch dimension, so the variable batch sizes of
Beam's adaptive batching do not retrace it.
"""
import logging
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from trainer import cli
from schemas import backbones, fileio, int8_model as int8_schema, records, tables


def load_feature_model(backbone: backbones.Backbone, weights: str, image_size: int, spatial: bool = False):
    """(Keras feature extractor, SHA-256 of its weights) for ``weights`` imagenet, none or a weights file on any
    Beam filesystem (copied to local disk first). ``spatial``: it also outputs the convolutional map."""
    local = weights if weights in (backbones.IMAGENET, backbones.RANDOM_INIT) else fileio.local_copy(weights)
    model = backbones.build_feature_extractor(backbone, local, image_size, spatial=spatial)
    return model, backbones.weights_digest(model)


def _traced_forward(model, image_size: int):
    """The model as one traced function over [None, size, size, 3] float32 batches (any batch size, one trace)."""
    import tensorflow as tf
    return tf.function(lambda images: model(images, training=False), input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])


class _CompiledExtractor:
    """The Keras model behind one traced function over [None, size, size, 3] float32 batches; returns the pooled
    features, or (pooled features, convolutional maps) for a spatial model."""

    def __init__(self, model, image_size: int, weights_sha256: str):
        self.model = model
        self.weights_sha256 = weights_sha256
        self._forward = _traced_forward(model, image_size)

    def __call__(self, images: np.ndarray):
        outputs = self._forward(images)
        if isinstance(outputs, (list, tuple)):
            return tuple(output.numpy() for output in outputs)
        return outputs.numpy()


class _OpenVinoExtractor:
    """The same network compiled by OpenVINO for the CPU: converted in memory from the traced Keras model, or the
    int8 model `beam_jobs.quantize` wrote (read from its IR).

    ``precision`` None lets OpenVINO choose: bfloat16 on CPUs that support it (about 2x faster than Keras on
    AVX-512 BF16 CPUs; features within cosine 0.999 of Keras'), else f32; "f32" matches Keras to ~1e-5. For the int8
    model it is the precision of the layers NNCF left unquantized. ``outputs``: how many of the network's outputs to
    return (the int8 model always has both, pooled and map). One infer request per thread: RunInference shares the
    model between the threads of a worker.
    """

    def __init__(self, network, weights_sha256: str, precision: Optional[str], outputs: Optional[int] = None,
                 label: str = ""):
        import threading

        import openvino
        self.weights_sha256 = weights_sha256
        hints = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.compiled = openvino.Core().compile_model(network, "CPU", hints)
        self.precision = label + self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._outputs = outputs or len(self.compiled.outputs)
        self._local = threading.local()

    def __call__(self, images: np.ndarray):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(images)
        if self._outputs == 1:
            return results[0].copy()  # the request reuses its output buffers
        return tuple(results[index].copy() for index in range(self._outputs))


KERAS_BACKEND = "keras"
INT8_BACKEND = int8_schema.BACKEND
AUTO_BACKEND = "auto"  # the jobs' default: see `Models.auto_backend` and each job's prepare
# name -> OpenVINO precision hint (None: OpenVINO's choice for the CPU, bfloat16 where it has it, else f32)
INFERENCE_BACKENDS = {KERAS_BACKEND: None, "openvino": None, "openvino-f32": "f32", INT8_BACKEND: None}


def check_backend(backend: str, int8_model: Optional[str] = None) -> None:
    """Fails fast on an unknown backend, a missing OpenVINO installation, or an int8 model given to another
    backend. (Where an int8 backend gets its model is each job's business.)"""
    if backend not in INFERENCE_BACKENDS:
        raise ValueError(f"--inference_backend {backend}: one of {', '.join([AUTO_BACKEND, *INFERENCE_BACKENDS])}")
    if backend != KERAS_BACKEND:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ValueError(f"--inference_backend {backend} needs OpenVINO: pip install openvino") from None
    if int8_model and backend != INT8_BACKEND:
        raise ValueError(f"--int8_model is the model of --inference_backend {INT8_BACKEND}, not of {backend}")


def check_int8_model(int8_model: str, backbone: str, image_size: int, weights_sha256: str) -> dict:
    """quantization.json of ``int8_model``, checked against the extractor the job runs (on the launcher)."""
    info = int8_schema.read_info(int8_model)
    int8_schema.check_matches(info, int8_model, backbone, image_size, weights_sha256)
    return info


def load_int8_model(int8_model: str, backbone: str, image_size: int, weights_sha256: Optional[str]):
    """The int8 OpenVINO network of ``int8_model`` (any Beam filesystem; copied to local disk first), checked."""
    import openvino

    info = check_int8_model(int8_model, backbone, image_size, weights_sha256)
    weights_file = fileio.local_copy(fileio.join(int8_model, int8_schema.MODEL_BIN))
    with open(weights_file, "rb") as handle:
        int8_schema.check_bin(handle.read(), info, int8_model)
    network = openvino.Core().read_model(fileio.local_copy(fileio.join(int8_model, int8_schema.MODEL_XML)), weights_file)
    return network, info["weights_sha256"]


class FeatureExtractorHandler(ModelHandler[np.ndarray, Any, Any]):
    """uint8 pixels [H, W, 3] -> float32 features [D], batched; with ``grid`` g > 0, `records.SpatialFeatures`
    (the same vector, and the last convolutional map average-pooled to g x g, float16) from the same forward pass.

    ``backend``: "keras" (TensorFlow; the reference), "openvino" (OpenVINO in bfloat16 where the CPU has it) or
    "openvino-f32" (see `_OpenVinoExtractor`). The weights are Keras' in every case and their digest is checked.
    """

    def __init__(self, backbone_name: str, weights: str, image_size: int, *, min_batch_size: int = 1,
                 max_batch_size: int = 32, expected_weights_sha256: Optional[str] = None,
                 backend: str = KERAS_BACKEND, grid: int = 0, int8_model: Optional[str] = None):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._backbone = backbones.get_backbone(backbone_name)
        backbones.check_image_size(self._backbone, image_size)
        check_backend(backend, int8_model)
        if backend == INT8_BACKEND and not int8_model:
            raise ValueError(f"the {INT8_BACKEND} backend needs its int8 model")
        self._weights = weights
        self._image_size = image_size
        self._expected_sha256 = expected_weights_sha256
        self._backend = backend
        self._grid = grid
        self._int8_model = int8_model

    def load_model(self) -> _CompiledExtractor:
        cli.quiet_tensorflow()  # a worker process imports TensorFlow here first
        if self._backend == INT8_BACKEND:  # the quantized IR stands alone: no Keras model is built
            network, digest = load_int8_model(self._int8_model, self._backbone.name, self._image_size,
                                              self._expected_sha256)
            extractor = _OpenVinoExtractor(network, digest, None, outputs=2 if self._grid else 1, label="int8+")
            logging.info("loaded the int8 %s of %s (%dx%d, weights sha256 %s) on a worker, backend openvino (%s)",
                         self._backbone.name, self._int8_model, self._image_size, self._image_size, digest[:12],
                         extractor.precision)
            return extractor
        model, digest = load_feature_model(self._backbone, self._weights, self._image_size, spatial=self._grid > 0)
        if self._expected_sha256 and digest != self._expected_sha256:
            raise ValueError(f"the {self._backbone.name} weights loaded on this worker ({self._weights}, sha256 "
                             f"{digest[:12]}) differ from the ones checked at launch ({self._expected_sha256[:12]})")
        if self._backend != KERAS_BACKEND:
            import openvino
            network = openvino.convert_model(_traced_forward(model, self._image_size))
            extractor = _OpenVinoExtractor(network, digest, INFERENCE_BACKENDS[self._backend])
            backend = f"openvino ({extractor.precision})"
        else:
            extractor, backend = _CompiledExtractor(model, self._image_size, digest), "keras"
        logging.info("loaded %s (%s, %dx%d, weights sha256 %s) on a worker, backend %s", self._backbone.name,
                     self._weights, self._image_size, self._image_size, digest[:12], backend)
        return extractor

    def run_inference(self, batch: Sequence[np.ndarray], model: _CompiledExtractor,
                      inference_args: Optional[dict] = None) -> Iterable[np.ndarray]:
        pixels = np.stack(batch)
        features = model(backbones.preprocess(self._backbone, pixels))
        if not self._grid:
            return list(features)
        vectors, maps = features
        grids = records.stored_grid(backbones.pool_grid(maps, self._grid))
        return [records.SpatialFeatures(vector, grid) for vector, grid in zip(vectors, grids)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(pixels.nbytes for pixels in batch)

    def get_metrics_namespace(self) -> str:
        return "imcap_features"


class CaptionModelHandler(ModelHandler[Any, tuple, Any]):
    """Image features -> (caption, log_prob, attention), decoded in batches with a model bundle or an ensemble of
    bundles; ``attention`` is the hypothesis' weights over the grid per word when ``attention_maps``, else None.

    Features are pooled vectors [D] for a merge bundle, `records.SpatialFeatures` for one that reads grids. The
    bundles (`trainer.bundle.load_bundles`: decoders, vocabulary, config) are loaded once per worker process.
    """

    def __init__(self, model_dirs, beam_width: int, length_penalty: float, *, min_batch_size: int = 1,
                 max_batch_size: int = 128, attention_maps: bool = False, no_repeat_ngram_size: int = 0):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._model_dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs)
        self._beam_width = beam_width
        self._length_penalty = length_penalty
        self._no_repeat_ngram_size = no_repeat_ngram_size
        self._attention_maps = attention_maps

    def load_model(self):
        cli.quiet_tensorflow()
        from trainer.bundle import load_bundles
        bundle = load_bundles(self._model_dirs)
        logging.info("loaded caption bundle %s on a worker", bundle.model_id)
        return bundle.decoder

    def run_inference(self, batch: Sequence[Any], model, inference_args: Optional[dict] = None):
        hypotheses = model.hypotheses(stack_features(batch), self._beam_width, self._length_penalty,
                                      batch_size=len(batch), no_repeat_ngram_size=self._no_repeat_ngram_size)
        return [(model.to_text(hypothesis), hypothesis.log_prob,
                 hypothesis.attention if self._attention_maps else None) for hypothesis in hypotheses]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(sum(part.nbytes for part in features) if isinstance(features, records.SpatialFeatures)
                   else features.nbytes for features in batch)

    def get_metrics_namespace(self) -> str:
        return "imcap_captions"


def stack_features(batch: Sequence[Any]):
    """Per-image features -> one batch: [B, D], or `records.SpatialFeatures` of [B, D] and [B, g, g, D]."""
    if batch and isinstance(batch[0], records.SpatialFeatures):
        return records.SpatialFeatures(np.stack([features.vector for features in batch]),
                                       np.stack([features.grid for features in batch]))
    return np.stack(batch)


@beam.ptransform_fn
@beam.typehints.with_output_types(tables.CaptionRow)
def GenerateCaptions(features, handler: ModelHandler, model_id: str):  # pylint: disable=invalid-name
    """(`ImageKey`, features) -> `schemas.tables.CaptionRow`, decoded in batches by the bundle's decoder."""
    return (features
            | "Decode" >> RunInference(KeyedModelHandler(handler))
            | "CaptionRows" >> beam.Map(_caption_row, model_id))


def _caption_row(keyed: tuple, model_id: str) -> tables.CaptionRow:
    """(`ImageKey`, (caption, log_prob[, attention])) -> the image's caption row."""
    key, (caption, log_prob, *attention) = keyed
    return tables.caption_row(key.uri, caption, log_prob, model_id, key.width, key.height,
                              attention[0] if attention else None, key.sample)


class ExtractorInfo(NamedTuple):
    weights_sha256: str
    feature_dim: int
    map_size: int  # the last convolutional map is map_size x map_size x feature_dim


class Models:
    """The jobs' models behind one seam: what is checked on the launching machine, and the RunInference handlers
    that run on the workers.

    This class is the product's: the backbone through Keras (or OpenVINO) and the bundle's Keras decoder. Both jobs
    take a ``models`` argument in ``run`` so that tests of graph routing, resume and counting can pass fakes
    (``tests/fakes.py``, as Beam's own ``ml/inference/base_test.py`` does) and only the tests about features and
    models build Xception. A fake's handlers must pickle by an importable name, like any DoFn of the graph.
    """

    def feature_weights(self, backbone: backbones.Backbone, weights: str, image_size: int) -> "ExtractorInfo":
        """What the extractor that ``weights`` builds gives, found on the launcher."""
        model, digest = load_feature_model(backbone, weights, image_size, spatial=True)
        _, map_shape = model.output_shape
        return ExtractorInfo(digest, int(map_shape[-1]), int(map_shape[1]))

    def auto_backend(self) -> str:
        """The extract job's backend for --inference_backend auto: int8 where NNCF and OpenVINO are installed (3.5x
        Keras on CPUs at the same caption quality, BENCHMARKS.md §12), else Keras."""
        from beam_jobs import quantize
        return INT8_BACKEND if quantize.available() else KERAS_BACKEND

    def quantize(self, output_dir: str, backbone: backbones.Backbone, weights: str, image_size: int,
                 candidates: list[str], source: str, count: int) -> dict:
        """Writes the int8 extractor calibrated on ``count`` of ``candidates`` into ``output_dir``."""
        from beam_jobs import quantize
        return quantize.quantize_to(output_dir, backbone, weights, image_size, candidates, source, count)

    def open_bundle(self, model_dirs):
        """The bundle of a --model_dir (or the ensemble of several), its decoders loaded once at launch so that a
        broken one fails before any worker starts."""
        from trainer.bundle import load_bundles
        return load_bundles(model_dirs)

    def feature_handler(self, backbone_name: str, weights: str, image_size: int, **options) -> ModelHandler:
        """uint8 pixels [H, W, 3] -> float32 features; ``options`` as `FeatureExtractorHandler` takes them."""
        return FeatureExtractorHandler(backbone_name, weights, image_size, **options)

    def caption_handler(self, model_dirs, beam_width: int, length_penalty: float, **options) -> ModelHandler:
        """features -> (caption, log_prob); ``options`` as `CaptionModelHandler` takes them."""
        return CaptionModelHandler(model_dirs, beam_width, length_penalty, **options)


MODELS = Models()
