"""The feature layer of both jobs: image bytes -> pixels -> backbone features, batched by RunInference.

    pixels = prepare_bytes(uri, data, image_size, max_pixels)        # PreparedImage, or the ErrorRow saying why not
    features = keyed_pixels | ExtractFeatures(FeatureExtractorHandler(spec))   # (key, features)

The extractor itself (backbone, Keras/OpenVINO/int8 backends, `FeatureSpec`) is `trainer.features`, which
imcap-predict runs without Beam. Beam's TensorFlow handler needs tensorflow_hub and cannot load SavedModels under
Keras 3, so the jobs bring their own handler: the model is built in `load_model`, i.e. on the worker, once per
process (RunInference shares it between the threads of a worker), never pickled.
"""
import argparse
import typing
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from beam_jobs import runtime
from beam_jobs.elements import ImageKey, PreparedImage
from schemas import fileio, images, records, tables
from schemas.tables import ErrorRow
from trainer import cli
from trainer.features import AUTO_BACKEND, INFERENCE_BACKENDS, FeatureExtractor, FeatureSpec, load_extractor


def add_feature_flags(parser: argparse.ArgumentParser, auto_help: str, int8_help: str = "") -> None:
    """The image decoding and feature extraction flags of both jobs (each says what its auto backend is)."""
    parser.add_argument("--inference_backend", default=AUTO_BACKEND, choices=[AUTO_BACKEND, *INFERENCE_BACKENDS],
                        help=auto_help + "; keras: TensorFlow float32 (the reference; the one for GPU workers); "
                             "openvino: bfloat16 where the CPU has it (~2.2x keras); openvino-f32; openvino-int8 "
                             "(~3.5x keras; docs/backends.md)")
    parser.add_argument("--int8_model", default=None, metavar="DIR",
                        help="openvino-int8: an int8 extractor directory (imcap-quantize; any filesystem), "
                             "quantized from the same weights" + int8_help)
    parser.add_argument("--min_batch_size", type=runtime.positive_int, default=8,
                        help="images per feature batch, at least (default 8)")
    parser.add_argument("--max_batch_size", type=runtime.positive_int, default=32,
                        help="images per feature batch, at most (default 32)")
    parser.add_argument("--max_image_pixels", type=runtime.positive_int, default=images.DEFAULT_MAX_PIXELS,
                        help="larger images are reported as too_large, a guard against decompression bombs "
                             f"(default {images.DEFAULT_MAX_PIXELS:,})")


def check_feature_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.min_batch_size > args.max_batch_size:
        parser.error(f"--min_batch_size {args.min_batch_size} is above --max_batch_size {args.max_batch_size}")


def read_error_row(uri: str, error: Exception) -> ErrorRow:
    """The error row of a file that could not be read (missing, too large, not a regular file, ...)."""
    if isinstance(error, FileNotFoundError):
        return tables.error_row(uri, images.MISSING_FILE, "no such file")
    if isinstance(error, fileio.FileTooLarge):
        return tables.error_row(uri, images.TOO_LARGE, f"the file is {error} (raise --max_image_bytes to accept it)")
    if isinstance(error, fileio.NotARegularFile):
        return tables.error_row(uri, images.READ_ERROR, f"cannot read it: {error}")
    return tables.error_row(uri, images.READ_ERROR, f"cannot read the file: {images.describe_error(error)}")


def prepare_bytes(uri: str, data: bytes, image_size: int, max_pixels: int,
                  sample: tuple = ()) -> PreparedImage | ErrorRow:
    """Decoded and resized pixels (with the fields of the WebDataset sample the image belongs to), or the error row
    saying why not; never raises."""
    try:
        pixels, (width, height) = images.prepare_image(data, image_size, max_pixels)
    except images.ImageError as error:
        return tables.error_row(uri, error.error_class, error.message)
    except Exception as error:
        return runtime.internal_error_row(uri, error)
    return PreparedImage(ImageKey(uri, width, height, sample), pixels)


def read_and_prepare(uri: str, path: str, image_size: int, max_pixels: int,
                     max_bytes: int | None) -> PreparedImage | ErrorRow:
    """An image file read (at most ``max_bytes``) and prepared, or its error row; never raises."""
    try:
        data = fileio.read_bytes(path, max_bytes)
    except Exception as error:  # filesystems raise their own types (BeamIOError, OSError, ...)
        return read_error_row(uri, error)
    return prepare_bytes(uri, data, image_size, max_pixels)


class FeatureExtractorHandler(ModelHandler[np.ndarray, Any, Any]):
    """uint8 pixels [H, W, 3] -> float32 features [D], batched; with a grid in the spec, `records.SpatialFeatures`
    (the same vector, and the last convolutional map average-pooled to g x g, float16) from the same forward pass.
    ``spec``: which extractor (`trainer.features.FeatureSpec`), checked here, on the launcher."""

    def __init__(self, spec: FeatureSpec, *, min_batch_size: int = 1, max_batch_size: int = 32):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.spec = spec

    def load_model(self) -> FeatureExtractor:
        cli.quiet_tensorflow()  # a worker process imports TensorFlow here first
        return load_extractor(self.spec)

    def run_inference(self, batch: Sequence[np.ndarray], model: FeatureExtractor,
                      inference_args: Optional[dict] = None) -> Iterable[np.ndarray]:
        features = model(np.stack(batch))
        if not self.spec.grid:
            return list(features)
        return [records.SpatialFeatures(vector, grid) for vector, grid in zip(features.vector, features.grid)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(pixels.nbytes for pixels in batch)

    def get_metrics_namespace(self) -> str:
        return "imcap_features"


@beam.ptransform_fn
def ExtractFeatures(keyed_pixels, handler: ModelHandler):  # pylint: disable=invalid-name
    """(key, uint8 pixels) -> (key, float32 features) with batched RunInference."""
    return keyed_pixels | "RunInference" >> RunInference(KeyedModelHandler(handler))


@beam.ptransform_fn
@beam.typehints.with_input_types(PreparedImage)
@beam.typehints.with_output_types(typing.Tuple[ImageKey, typing.Any])
def FeaturesOfImages(prepared, handler: ModelHandler):  # pylint: disable=invalid-name
    """`PreparedImage` -> (`ImageKey`, float32 features, or `records.SpatialFeatures` from a handler with a grid)."""
    return (prepared
            | "KeyPixels" >> beam.Map(lambda image: (image.key, image.pixels))
            | "Features" >> ExtractFeatures(handler))
