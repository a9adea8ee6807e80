"""Parquet schemas and file names of the caption job's outputs, and the error rows of both Beam jobs.

Every input image of a job ends in exactly one row: a caption (or record) row when it succeeded, or an error row
naming it, a short error class (`schemas.images.ERROR_CLASSES`) and a message a person can act on.

Caption job files under an output ``PREFIX``::

    PREFIX-SSSSS-of-NNNNN.parquet              caption rows (CAPTION_SCHEMA)
    PREFIX-errors-SSSSS-of-NNNNN.parquet       error rows (ERROR_SCHEMA)
    PREFIX-rK-SSSSS-of-NNNNN.parquet           ... of the K-th run that added to the same PREFIX (--skip_existing)
    PREFIX-errors-rK-SSSSS-of-NNNNN.parquet
    PREFIX-checkpoint/                         rows committed while a run is in progress; removed when it ends

An image URI inside an archive is ``ARCHIVE_URI!MEMBER_PATH``, e.g. ``gs://bucket/batch.tar!dir/photo.jpg``.
"""
import posixpath
import re

import pyarrow as pa

IMAGE_URI = "image_uri"
CAPTION = "caption"
LOG_PROB = "log_prob"
MODEL_ID = "model_id"
WIDTH = "width"
HEIGHT = "height"
ERROR = "error"
MESSAGE = "message"

MEMBER_SEPARATOR = "!"

CAPTION_SCHEMA = pa.schema([
    pa.field(IMAGE_URI, pa.string(), nullable=False),
    pa.field(CAPTION, pa.string(), nullable=False),
    pa.field(LOG_PROB, pa.float32(), nullable=False),
    pa.field(MODEL_ID, pa.string(), nullable=False),
    pa.field(WIDTH, pa.int32(), nullable=False),
    pa.field(HEIGHT, pa.int32(), nullable=False),
])

ERROR_SCHEMA = pa.schema([
    pa.field(IMAGE_URI, pa.string(), nullable=False),
    pa.field(ERROR, pa.string(), nullable=False),
    pa.field(MESSAGE, pa.string(), nullable=False),
])

PARQUET_SUFFIX = ".parquet"
ERRORS_PART = "errors"
CHECKPOINT_DIR_SUFFIX = "-checkpoint"
_SHARD = r"\d{5}-of-\d{5}"


def error_row(image_uri: str, error_class: str, message: str) -> dict:
    return {IMAGE_URI: image_uri, ERROR: error_class, MESSAGE: message}


def caption_row(image_uri: str, caption: str, log_prob: float, model_id: str, width: int, height: int) -> dict:
    return {IMAGE_URI: image_uri, CAPTION: caption, LOG_PROB: float(log_prob), MODEL_ID: model_id,
            WIDTH: int(width), HEIGHT: int(height)}


def run_tag(run_number: int) -> str:
    """'' for the first run writing to a prefix, 'r2-', 'r3-', ... for the runs that add to it."""
    return "" if run_number <= 1 else f"r{run_number}-"


def caption_shard_prefix(prefix: str, run_number: int) -> str:
    """What the Parquet sink of caption rows is given; Beam appends SSSSS-of-NNNNN.parquet."""
    return f"{prefix}-{run_tag(run_number)}"


def error_shard_prefix(prefix: str, run_number: int) -> str:
    return f"{prefix}-{ERRORS_PART}-{run_tag(run_number)}"


def checkpoint_dir(prefix: str) -> str:
    return prefix + CHECKPOINT_DIR_SUFFIX


def output_glob(prefix: str) -> str:
    """Glob of every committed output file (caption and error shards of every run)."""
    return f"{prefix}-*{PARQUET_SUFFIX}"


def classify_output(prefix: str, path: str) -> tuple[str, int] | None:
    """('captions' | 'errors', run number) for a committed output file of PREFIX, else None."""
    name = posixpath.basename(path)
    stem = posixpath.basename(prefix)
    match = re.fullmatch(re.escape(stem) + r"-(errors-)?(?:r(\d+)-)?" + _SHARD + re.escape(PARQUET_SUFFIX), name)
    if not match:
        return None
    return ("errors" if match.group(1) else "captions"), int(match.group(2) or 1)


def is_error_table(schema: pa.Schema) -> bool:
    return ERROR in schema.names and CAPTION not in schema.names
