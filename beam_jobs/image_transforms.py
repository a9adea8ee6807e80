"""Beam transforms that turn image files into backbone inputs and features, shared by the extract and caption jobs.

Reading and decoding happen in one DoFn so that raw file bytes never travel between stages; every failure
becomes an error row (`schemas.tables.error_row`) on the ``errors`` output instead of failing the job.
"""
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_jobs.inference import FeatureExtractorHandler
from beam_jobs.runtime import counter
from schemas import images, tables

ERRORS = "errors"


def read_file(uri: str) -> bytes:
    """All bytes of a file on any Beam filesystem, as stored (no decompression by extension)."""
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


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
                data = read_file(uri)
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

