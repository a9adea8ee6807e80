"""Streaming readers of tar and zip archives that account for every entry, damaged or not.

    for event in read_archive("gs://bucket/batch.tar.gz", limits=Limits()):
        ...  # MemberData (an image member's bytes), MemberFailure (an error row), MemberSkipped (done, duplicate)

Archives are read as streams from any Beam filesystem and never extracted. The compression is found from the
bytes (gzip, bzip2, xz; zip by its signatures), not from the name. What becomes of each entry:

- an image member (by name) within the limits: its bytes (`MemberData`), read once, when it is reached;
- a directory or a volume label: nothing (they are not inputs);
- any other entry: a `MemberFailure` with an error class (`schemas.images`) and a message that names the
  archive position: ``not_an_image`` (name), ``too_large``, ``unsupported_member`` (symbolic link, device,
  FIFO, sparse file, unsupported zip compression), ``encrypted_member``, ``corrupt_archive`` (bad CRC, truncated
  data, a decompressor error), ``expansion_limit`` (see `Limits`);
- a tar hard link to an earlier member is read as that member (a second pass over the archive reads the targets
  of all links at once);
- a bad tar header: one ``corrupt_archive`` failure at ``ARCHIVE!#N`` (N: the entry's position), then the
  reader scans block by block to the next valid header and goes on, so the members after the damage are kept;
- a zip without its central directory (truncated): the members read from their local headers, then one failure
  on the archive saying what was lost;
- anything that ends the reading early (a truncated or corrupt compressed stream, an expansion limit, a file that
  is no archive at all, an archive with no entry) is one failure on the archive's own URI.

Member URIs follow `beam_jobs.sources` (escaped names; positions for nameless damage), so every failure has a URI
of its own and no URI is produced twice by one archive (a name stored twice is read once: `MemberSkipped`).
"""
import typing
from typing import Iterator

from beam_jobs import sources
from beam_jobs.archives.common import (BLOCK, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_COMPRESSION_RATIO,
                                       RATIO_FLOOR_BYTES, SKIPPED_DONE, SKIPPED_DUPLICATE, SKIPPED_UNWANTED, Event,
                                       Limits, MemberData, MemberFailure, MemberSkipped, compression_of)
from beam_jobs.archives.tar import TarReader
from beam_jobs.archives.tar_format import valid_header
from beam_jobs.archives.zip import ZipReader
from schemas import images
from schemas.images import describe_error

__all__ = ["DEFAULT_MAX_ARCHIVE_BYTES", "DEFAULT_MAX_COMPRESSION_RATIO", "RATIO_FLOOR_BYTES", "SKIPPED_DONE",
           "SKIPPED_DUPLICATE", "SKIPPED_UNWANTED", "Event", "Limits", "MemberData", "MemberFailure", "MemberSkipped", "read_archive"]


def read_archive(uri: str, location: str | None = None, *, skip: typing.AbstractSet[str] = frozenset(),
                 only: typing.AbstractSet[str] | None = None, limits: Limits = Limits()) -> Iterator[Event]:
    """Every entry of the archive at ``uri`` as events (see the module docstring).

    ``location``: the path to open when it differs from ``uri`` (a local path that is not UTF-8). ``skip``: member
    parts of URIs (after ``!``) already captioned; ``only``: when given, the member parts wanted. Members skipped or
    not wanted are passed over without being read (`MemberSkipped`: ``done`` or ``unwanted``).
    """
    location = location or uri

    def open_stream():
        return sources.open_raw(location)

    try:
        stream = open_stream()
    except FileNotFoundError:
        yield MemberFailure(uri, images.MISSING_FILE, "no such archive")
        return
    except Exception as error:  # filesystems raise their own types (BeamIOError, PermissionError, ...)
        yield MemberFailure(uri, images.READ_ERROR, f"cannot open the archive: {describe_error(error)}")
        return
    with stream:
        try:
            head = stream.read(BLOCK)
        except Exception as error:
            yield MemberFailure(uri, images.READ_ERROR, f"cannot read the archive: {describe_error(error)}")
            return
        if not head:
            yield MemberFailure(uri, images.EMPTY_FILE, "the archive is empty (0 bytes)")
            return
        if not valid_header(head) and (_looks_like_zip(head) or (sources.is_zip_name(uri)
                                                                   and not compression_of(head))):
            events = ZipReader(uri, stream, skip, only, limits).events()
        else:
            events = TarReader(uri, open_stream, stream, head, skip, only, limits).events()
        count = 0
        for count, event in enumerate(events, start=1):
            yield event
        if not count:  # entries, but none is an input: directories, volume labels
            yield MemberFailure(uri, images.EMPTY_FILE, "the archive holds no files (only directories)")


def _looks_like_zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"PK00"))
