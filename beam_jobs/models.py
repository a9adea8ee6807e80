"""The jobs' models behind one seam: what is checked on the launching machine, and the RunInference handlers that
run on the workers.

`Models` is the product's: the backbone through `trainer.features` and the bundle's Keras decoder. Both jobs take a
``models`` argument in ``run`` so that tests of graph routing, resume and counting can pass fakes
(``tests/support/fakes.py``, as Beam's own ``ml/inference/base_test.py`` does) and only the tests about features and
models build Xception. A fake's handlers must pickle by an importable name, like any DoFn of the graph.
"""
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.caption.decoding import CaptionModelHandler
from beam_jobs.features import FeatureExtractorHandler
from schemas import backbones
from trainer import quantization
from trainer.bundle import load_bundles
from trainer.features import INT8_BACKEND, KERAS_BACKEND, ExtractorInfo, FeatureSpec, describe_extractor


class Models:
    def feature_weights(self, backbone: backbones.Backbone, weights: str, image_size: int) -> ExtractorInfo:
        """What the extractor that ``weights`` builds gives, found on the launcher."""
        return describe_extractor(backbone, weights, image_size)

    def auto_backend(self) -> str:
        """The extract job's backend for --inference_backend auto: int8 where NNCF and OpenVINO are installed (3.5x
        Keras on CPUs at the same caption quality, docs/backends.md), else Keras."""
        return INT8_BACKEND if quantization.available() else KERAS_BACKEND

    def quantize(self, output_dir: str, backbone: backbones.Backbone, weights: str, image_size: int,
                 candidates: list[str], source: str, count: int) -> dict:
        """Writes the int8 extractor calibrated on ``count`` of ``candidates`` into ``output_dir``."""
        return quantization.quantize_to(output_dir, backbone, weights, image_size, candidates, source, count)

    def open_bundle(self, model_dirs):
        """The bundle of a --model_dir (or the ensemble of several), its decoders loaded once at launch so that a
        broken one fails before any worker starts."""
        return load_bundles(model_dirs)

    def feature_handler(self, spec: FeatureSpec, *, min_batch_size: int = 1, max_batch_size: int = 32
                        ) -> ModelHandler:
        """uint8 pixels [H, W, 3] -> float32 features of the extractor ``spec`` names."""
        return FeatureExtractorHandler(spec, min_batch_size=min_batch_size, max_batch_size=max_batch_size)

    def caption_handler(self, model_dirs, beam_width: int, length_penalty: float, **options) -> ModelHandler:
        """features -> (caption, log_prob); ``options`` as `CaptionModelHandler` takes them."""
        return CaptionModelHandler(model_dirs, beam_width, length_penalty, **options)


MODELS = Models()
