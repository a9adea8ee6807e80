"""Beam transforms that turn image files into backbone inputs and features, shared by the extract and caption jobs.

Reading and decoding happen in one DoFn so that raw file bytes never travel between stages; every failure
becomes an error row (`schemas.tables.error_row`) on the ``errors`` output instead of failing the job.
"""
import argparse

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_jobs import runtime, sources
from beam_jobs.inference import INFERENCE_BACKENDS, KERAS_BACKEND, FeatureExtractorHandler
from beam_jobs.runtime import counter
from schemas import images, tables

ERRORS = "errors"


def add_feature_flags(parser: argparse.ArgumentParser) -> None:
    """The image decoding and feature extraction flags of both jobs."""
    parser.add_argument("--inference_backend", default=KERAS_BACKEND, choices=sorted(INFERENCE_BACKENDS),
                        help="keras (default), openvino (bfloat16 where the CPU has it, ~2x faster, features within "
                             "cosine 0.999) or openvino-f32; needs imcap[openvino]")
    parser.add_argument("--min_batch_size", type=runtime.positive_int, default=8)
    parser.add_argument("--max_batch_size", type=runtime.positive_int, default=32, help="feature batch bound")
    parser.add_argument("--max_image_pixels", type=runtime.positive_int, default=images.DEFAULT_MAX_PIXELS,
                        help="larger images are reported as too_large (decompression bombs)")


def check_feature_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.min_batch_size > args.max_batch_size:
        parser.error(f"--min_batch_size {args.min_batch_size} is above --max_batch_size {args.max_batch_size}")


class PrepareImages(beam.DoFn):
    """(key, uri, data or None) -> (key, (uint8 pixels, (width, height))); failures -> ``errors`` rows.

    ``data`` None means "read it from ``uri``"; archive members arrive with their bytes already read.
    """

    def __init__(self, image_size: int, max_pixels: int):
        self._image_size = image_size
        self._max_pixels = max_pixels
        self._prepared = counter("images_decoded")
        self._failed = counter("images_failed")

    def process(self, element):
        key, uri, data = element
        if data is None:
            try:
                data = sources.read_bytes(uri)
            except FileNotFoundError:
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(uri, images.MISSING_FILE, "no such file"))
                return
            except Exception as error:  # filesystems raise their own types (BeamIOError, OSError, ...)
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    uri, images.READ_ERROR, f"cannot read the file: {type(error).__name__}: {error}"))
                return
        try:
            pixels, size = images.prepare_image(data, self._image_size, self._max_pixels)
        except images.ImageError as error:
            self._failed.inc()
            counter(f"images_failed_{error.error_class}").inc()
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(uri, error.error_class, error.message))
            return
        self._prepared.inc()
        yield key, (pixels, size)


@beam.ptransform_fn
def ExtractFeatures(keyed_pixels, handler: FeatureExtractorHandler):  # pylint: disable=invalid-name
    """(key, uint8 pixels) -> (key, float32 features) with batched RunInference."""
    return keyed_pixels | "RunInference" >> RunInference(KeyedModelHandler(handler))

