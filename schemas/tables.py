"""Parquet schemas and file names of the caption job's outputs, and the error rows of both Beam jobs.

Every input image of a job ends in exactly one row: a caption (or record) row when it succeeded, or an error row
naming it, a short error class (`schemas.images.ERROR_CLASSES`) and a message a person can act on.

Caption job files under its output directory ``OUT`` (each table a folder of its own, so that a reader of one
never sees the other, and no other output's name can match them)::

    OUT/captions/runK-SSSSS-of-NNNNN.parquet       caption rows (CAPTION_SCHEMA) of run K (K > 1: --skip_existing)
    OUT/errors/runK-SSSSS-of-NNNNN.parquet         error rows (ERROR_SCHEMA)
    OUT/checkpoint/{captions,errors}-<hex>.parquet rows committed while a run is in progress; removed when it ends
    OUT/beam-temp-{captions,errors}-runK-<hex>/    the sinks' temporary files while a run writes its shards
    OUT/beam-temp-spill-runK/                      compressed archives' members, decompressed once, while K runs

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
SAMPLE_KEY, SAMPLE_URL, SAMPLE_TEXT, SAMPLE_JSON = "sample_key", "sample_url", "sample_text", "sample_json"
SAMPLE_COLUMNS = (SAMPLE_KEY, SAMPLE_URL, SAMPLE_TEXT, SAMPLE_JSON)
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
    # an archive member: its WebDataset key (the name up to its first dot); where the member is an image of a sample
    # (000123.jpg beside 000123.txt, 000123.json), the sample's text, its JSON document and the url in it; null
    # otherwise
    pa.field(SAMPLE_KEY, pa.string(), nullable=True),
    pa.field(SAMPLE_URL, pa.string(), nullable=True),
    pa.field(SAMPLE_TEXT, pa.string(), nullable=True),
    pa.field(SAMPLE_JSON, pa.string(), nullable=True),
])

ERROR_SCHEMA = pa.schema([
    pa.field(IMAGE_URI, pa.string(), nullable=False),
    pa.field(ERROR, pa.string(), nullable=False),
    pa.field(MESSAGE, pa.string(), nullable=False),
])

PARQUET_SUFFIX = ".parquet"


class CaptionRow(typing.NamedTuple):
    """One captioned image: a row of CAPTION_SCHEMA (field names are the column names)."""
    image_uri: str
    caption: str
    log_prob: float
    model_id: str
    width: int
    height: int
    attention: typing.Optional[list] = None  # [words (+ 1 for <end>)][g * g] floats, or None
    sample_key: typing.Optional[str] = None
    sample_url: typing.Optional[str] = None
    sample_text: typing.Optional[str] = None
    sample_json: typing.Optional[str] = None


class ErrorRow(typing.NamedTuple):
    """One input that could not be used: a row of ERROR_SCHEMA."""
    image_uri: str
    error: str
    message: str


def valid_text(text: str) -> str:
    """Text any coder and Parquet can write: lone surrogates (bytes of a non-UTF-8 path that Python decoded with
    surrogateescape, quoted in an exception's message) become %XX, as `beam_jobs.naming` escapes such paths."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else
                       c.encode("utf-8", "backslashreplace").decode("utf-8") for c in text)


def error_row(image_uri: str, error_class: str, message: str) -> ErrorRow:
    return ErrorRow(image_uri=valid_text(image_uri), error=error_class, message=valid_text(message))


def caption_row(image_uri: str, caption: str, log_prob: float, model_id: str, width: int, height: int,
                attention=None, sample: tuple = ()) -> CaptionRow:
    """``sample``: (column, value) pairs of `SAMPLE_COLUMNS` (a WebDataset sample's fields)."""
    fields = {name: value for name, value in sample if name in SAMPLE_COLUMNS}
    return CaptionRow(image_uri=image_uri, caption=caption, log_prob=float(log_prob), model_id=model_id,
                      width=int(width), height=int(height),
                      attention=None if attention is None else [[float(w) for w in row] for row in attention],
                      **fields)


def as_record(row: typing.Union[CaptionRow, ErrorRow]) -> dict:
    """The dict a Parquet sink writes for a row."""
    return row._asdict()


def row_from_record(record: dict) -> typing.Union[CaptionRow, ErrorRow]:
    """A row read back from Parquet (a dict) as its named type."""
    if ERROR in record and CAPTION not in record:
        return ErrorRow(**{name: record[name] for name in ErrorRow._fields})
    return CaptionRow(**{name: record.get(name) for name in CaptionRow._fields})  # older shards' missing columns: None


CAPTIONS_TABLE, ERRORS_TABLE = "captions", "errors"
CHECKPOINT_FOLDER = "checkpoint"
_RUN_SHARD = re.compile(r"run(\d+)-\d{5}-of-\d{5}" + re.escape(PARQUET_SUFFIX))
_CHECKPOINT_PART = re.compile(rf"({CAPTIONS_TABLE}|{ERRORS_TABLE})-[0-9a-f]{{20}}" + re.escape(PARQUET_SUFFIX))
INCOMPLETE_SUFFIX = ".incomplete"  # a checkpoint part being written; renamed when complete
_SINK_TEMP = re.compile(rf"beam-temp-({CAPTIONS_TABLE}|{ERRORS_TABLE})-run\d+-[0-9a-f]{{32}}")


def table_dir(output_dir: str, table: str) -> str:
    """The folder of one table (``captions`` or ``errors``): only the caption job writes there."""
    return posixpath.join(output_dir, table)


def shard_prefix(output_dir: str, table: str, run_number: int) -> str:
    """What a table's Parquet sink is given for run K; Beam appends SSSSS-of-NNNNN.parquet."""
    return posixpath.join(table_dir(output_dir, table), f"run{run_number}-")


def shard_run(name: str) -> int | None:
    """The run number of a shard's file name (``run3-00001-of-00004.parquet`` -> 3), None for any other name."""
    match = _RUN_SHARD.fullmatch(name)
    return int(match.group(1)) if match else None


def checkpoint_dir(output_dir: str) -> str:
    return posixpath.join(output_dir, CHECKPOINT_FOLDER)


def checkpoint_part_name(table: str, digest: str) -> str:
    return f"{table}-{digest[:20]}{PARQUET_SUFFIX}"


def checkpoint_part_table(name: str) -> str | None:
    """``captions`` or ``errors`` for a checkpoint part's file name (complete or not), None for any other name."""
    match = _CHECKPOINT_PART.fullmatch(name[:-len(INCOMPLETE_SUFFIX)] if name.endswith(INCOMPLETE_SUFFIX) else name)
    return match.group(1) if match else None


def sink_temp_name(table: str, run_number: int, unique_hex: str) -> str:
    """The folder, directly under the output directory, where a table's sink writes before it renames its shards
    into the table's folder (never inside it, so that a reader of ``captions/`` never sees a partial file)."""
    return f"beam-temp-{table}-run{run_number}-{unique_hex}"


def is_sink_temp_name(name: str) -> bool:
    return bool(_SINK_TEMP.fullmatch(name))


def spill_dir(output_dir: str, run_number: int) -> str:
    """Where run K writes the members of compressed archives, decompressed once, for the workers that read them
    (`beam_jobs.caption.archives.units.SpillWriter`); removed when the run's shards are committed."""
    return posixpath.join(output_dir, f"beam-temp-spill-run{run_number}")


def is_spill_dir_name(name: str) -> bool:
    return bool(re.fullmatch(r"beam-temp-spill-run\d+", name))


def legacy_outputs_glob(output_dir: str) -> str:
    """Shards an imcap before 2026-12 wrote beside what is now the output directory (``PREFIX-SSSSS-of-NNNNN.parquet``,
    ``PREFIX-errors-rK-...``): read as done inputs by --skip_existing, never written or deleted."""
    return f"{output_dir.rstrip('/')}-*{PARQUET_SUFFIX}"


def legacy_output_table(output_dir: str, path: str) -> str | None:
    stem = posixpath.basename(output_dir.rstrip("/"))
    match = re.fullmatch(re.escape(stem) + r"-(errors-)?(?:r\d+-)?\d{5}-of-\d{5}" + re.escape(PARQUET_SUFFIX),
                         posixpath.basename(path))
    if not match:
        return None
    return ERRORS_TABLE if match.group(1) else CAPTIONS_TABLE


def is_error_table(schema: pa.Schema) -> bool:
    return ERROR in schema.names and CAPTION not in schema.names
