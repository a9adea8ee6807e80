"""Parquet schemas: the error rows of both Beam jobs (and, with the caption job, the caption rows).

Every input image of a job ends in exactly one row: a record/caption row when it succeeded, or an error row
naming it, a short error class (`schemas.images.ERROR_CLASSES`) and a message a person can act on.
"""
import pyarrow as pa

IMAGE_URI = "image_uri"
ERROR = "error"
MESSAGE = "message"

ERROR_SCHEMA = pa.schema([
    pa.field(IMAGE_URI, pa.string(), nullable=False),
    pa.field(ERROR, pa.string(), nullable=False),
    pa.field(MESSAGE, pa.string(), nullable=False),
])


def error_row(image_uri: str, error_class: str, message: str) -> dict:
    return {IMAGE_URI: image_uri, ERROR: error_class, MESSAGE: message}
