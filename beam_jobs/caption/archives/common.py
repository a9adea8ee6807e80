"""What the archive readers share: the events they emit, the limits, and the errors that end a reading."""
import lzma
import struct
import typing
import zlib

from beam_jobs import naming

BLOCK = 512
CHUNK = 1 << 20
RATIO_FLOOR_BYTES = 64 * 1024 * 1024  # the compression ratio is only judged past this much output
# LZMA/xz decoders allocate their dictionary up front (a header can ask for 4 GiB); xz -9 uses 64 MiB.
MAX_LZMA_DICTIONARY = 256 * 1024 * 1024

DEFAULT_MAX_ARCHIVE_BYTES = 64 * 1024 ** 3
DEFAULT_MAX_COMPRESSION_RATIO = 200.0


class Limits(typing.NamedTuple):
    """Caps that turn oversized members and decompression bombs into error rows.

    ``max_member_bytes``: a member above it is ``too_large`` (not read). ``max_archive_bytes``: decompressed
    bytes one archive may produce (a compressed tar's content, the sum of a zip's members). ``max_ratio``:
    decompressed bytes per stored byte, judged once an archive (or a zip member) has produced
    `RATIO_FLOOR_BYTES`; photos compress about 1:1, bombs 1,000:1 and more.
    """
    max_member_bytes: int = naming.DEFAULT_MAX_IMAGE_BYTES
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO


class MemberData(typing.NamedTuple):
    uri: str
    position: int
    data: bytes


class MemberFailure(typing.NamedTuple):
    uri: str
    error_class: str
    message: str


class MemberSkipped(typing.NamedTuple):
    uri: str
    reason: str  # SKIPPED_DONE, SKIPPED_DUPLICATE or SKIPPED_UNWANTED


TAR_SPAN, ZIP_SPAN, SPILL_SPAN = "tar", "zip", "spill"


class MemberSpan(typing.NamedTuple):
    """Where an image member's bytes are, for a reader that comes later (an archive's index, `index_archive`).

    ``tar``: ``size`` bytes at ``offset`` of the (uncompressed) archive; ``zip``: the member whose local header is at
    ``offset``, ``stored_size`` bytes compressed with ``method`` to ``size`` bytes of CRC-32 ``crc``; ``spill``:
    ``size`` bytes at ``offset`` of the file ``source`` (a compressed tar's members, decompressed once and written
    there by the indexing reader). ``sample``: (field, value) pairs of the WebDataset sample it belongs to."""
    uri: str
    position: int
    format: str
    offset: int
    size: int
    stored_size: int = 0
    method: int = 0
    crc: int = 0
    source: str = ""
    sample: tuple = ()


class MemberText(typing.NamedTuple):
    """The bytes of a small member that is no image but may describe one (``000123.txt``, ``000123.json`` beside
    ``000123.jpg`` in a WebDataset shard); if no image shares its key, it becomes a ``not_an_image`` row."""
    uri: str
    position: int
    data: bytes


SKIPPED_DONE, SKIPPED_DUPLICATE, SKIPPED_UNWANTED = "done", "duplicate", "unwanted"
Event = typing.Union[MemberData, MemberFailure, MemberSkipped, MemberSpan, MemberText]
MAX_SAMPLE_FIELD_BYTES = 64 * 1024  # a .txt/.json of a sample larger than this is not kept as a field
SAMPLE_FIELD_EXTENSIONS = (".txt", ".text", ".caption", ".json", ".cls", ".url")


def is_sample_field_name(name: bytes) -> bool:
    return name.decode("utf-8", "surrogateescape").lower().endswith(SAMPLE_FIELD_EXTENSIONS)


def passed_over(uri: str, member: str, skip, only, seen: set) -> MemberSkipped | None:
    """Why a member is passed over without being read (not wanted, read by an earlier run, a name stored twice),
    or None when it is to be handled (its name is then recorded in ``seen``)."""
    if only is not None and member not in only:
        return MemberSkipped(uri, SKIPPED_UNWANTED)
    if member in skip:
        return MemberSkipped(uri, SKIPPED_DONE)
    if member in seen:
        return MemberSkipped(uri, SKIPPED_DUPLICATE)
    seen.add(member)
    return None


class Stop(Exception):
    """Reading cannot go on; ``error_class``/``message`` describe why."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class, self.message = error_class, message


class Truncated(Exception):
    """The data ended before a member's stated size."""


class SpillFailed(Exception):
    """A compressed archive's member could not be written to its spill file (a full disk, an object store's error):
    not the archive's fault, so no row; the step fails and the runner retries it (the spill's names are fixed, so a
    retry rewrites the same files)."""


# Decompressor and I/O failures of a compressed stream; any of them ends the reading of the stream.
STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, struct.error)


def compression_of(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def is_image_name(name: bytes) -> bool:
    return naming.kind_of(name.decode("utf-8", "surrogateescape")) == naming.IMAGE


def not_an_image_message(name: bytes) -> str:
    if naming.kind_of(name.decode("utf-8", "surrogateescape")) == naming.ARCHIVE:
        return "an archive inside an archive is not expanded; extract it and pass it as an input"
    return "archive member is not named like an image; skipped"


def too_large_message(size: int, limit: int) -> str:
    return f"archive member of {size:,} bytes is above the limit of {limit:,} (raise --max_image_bytes to accept it)"
