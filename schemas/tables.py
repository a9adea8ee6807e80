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
import typing

import pyarrow as pa

IMAGE_URI = "image_uri"
CAPTION = "caption"
LOG_PROB = "log_prob"
MODEL_ID = "model_id"
WIDTH = "width"
HEIGHT = "height"
ATTENTION = "attention"
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
    # --attention_maps with an attention bundle: per generated word, and for <end> where the caption ended with it
    # (not one cut at the bundle's max_length), its weights over the g x g grid (row-major, each row sums to 1);
    # null otherwise
    pa.field(ATTENTION, pa.list_(pa.list_(pa.float32())), nullable=True),
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


class CaptionRow(typing.NamedTuple):
    """One captioned image: a row of CAPTION_SCHEMA (field names are the column names)."""
    image_uri: str
    caption: str
    log_prob: float
    model_id: str
    width: int
    height: int
    attention: typing.Optional[list] = None  # [words (+ 1 for <end>)][g * g] floats, or None


class ErrorRow(typing.NamedTuple):
    """One input that could not be used: a row of ERROR_SCHEMA."""
    image_uri: str
    error: str
    message: str


def valid_text(text: str) -> str:
    """Text any coder and Parquet can write: lone surrogates (bytes of a non-UTF-8 path that Python decoded with
    surrogateescape, quoted in an exception's message) become %XX, as `beam_jobs.sources` escapes such paths."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else
                       c.encode("utf-8", "backslashreplace").decode("utf-8") for c in text)


def error_row(image_uri: str, error_class: str, message: str) -> ErrorRow:
    return ErrorRow(image_uri=valid_text(image_uri), error=error_class, message=valid_text(message))


def caption_row(image_uri: str, caption: str, log_prob: float, model_id: str, width: int, height: int,
                attention=None) -> CaptionRow:
    return CaptionRow(image_uri=image_uri, caption=caption, log_prob=float(log_prob), model_id=model_id,
                      width=int(width), height=int(height),
                      attention=None if attention is None else [[float(w) for w in row] for row in attention])


def as_record(row: typing.Union[CaptionRow, ErrorRow]) -> dict:
    """The dict a Parquet sink writes for a row."""
    return row._asdict()


def row_from_record(record: dict) -> typing.Union[CaptionRow, ErrorRow]:
    """A row read back from Parquet (a dict) as its named type."""
    if ERROR in record and CAPTION not in record:
        return ErrorRow(**{name: record[name] for name in ErrorRow._fields})
    return CaptionRow(**{name: record.get(name) for name in CaptionRow._fields})  # shards before ATTENTION: None


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


def sink_temp_glob(prefix: str) -> str:
    """Glob of the temporary directories Beam's file sinks leave next to PREFIX when a run is killed (it also
    matches other prefixes' directories: filter with `is_sink_temp_dir`)."""
    directory, stem = posixpath.split(prefix)
    return posixpath.join(directory, f"beam-temp-{stem}-*")


def is_sink_temp_dir(prefix: str, directory_name: str) -> bool:
    """Whether a directory is one of PREFIX's sinks' (``beam-temp-<sink prefix>-<uuid hex>``; the sink prefixes are
    `caption_shard_prefix` and `error_shard_prefix`), not another prefix's such as PREFIX-foo's."""
    stem = re.escape(posixpath.basename(prefix))
    return bool(re.fullmatch(rf"beam-temp-{stem}-(?:{ERRORS_PART}-)?(?:r\d+-)?-[0-9a-f]{{32}}", directory_name))


def ambiguous_prefix(prefix: str) -> bool:
    """Whether PREFIX's file names could be another prefix's (``out/c-errors`` writes what ``out/c`` calls its error
    shards): such prefixes are refused."""
    stem = posixpath.basename(prefix)
    return bool(re.search(rf"-({ERRORS_PART}|{CHECKPOINT_DIR_SUFFIX[1:]}|r\d+)$", stem))


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
