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

Member URIs follow `beam_jobs.naming` (escaped names; positions for nameless damage), so every failure has a URI
of its own and no URI is produced twice by one archive (a name stored twice is read once: `MemberSkipped`).
"""
import typing
from typing import Iterator

from beam_jobs import naming
from beam_jobs.caption.archives.common import (
    BLOCK,
    DEFAULT_MAX_ARCHIVE_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    RATIO_FLOOR_BYTES,
    SKIPPED_DONE,
    SKIPPED_DUPLICATE,
    SKIPPED_UNWANTED,
    SPILL_SPAN,
    STREAM_ERRORS,
    TAR_SPAN,
    ZIP_SPAN,
    Event,
    Limits,
    MemberData,
    MemberFailure,
    MemberSkipped,
    MemberSpan,
    MemberText,
    SpillFailed,
    Stop,
    Truncated,
    compression_of,
)
from beam_jobs.caption.archives.tar import TarReader
from beam_jobs.caption.archives.tar_format import valid_header
from beam_jobs.caption.archives.zip import ZipReader, read_zip_member
from schemas import fileio, images
from schemas.images import describe_error

__all__ = ["DEFAULT_MAX_ARCHIVE_BYTES", "DEFAULT_MAX_COMPRESSION_RATIO", "RATIO_FLOOR_BYTES", "SKIPPED_DONE",
           "SKIPPED_DUPLICATE", "SKIPPED_UNWANTED", "SPILL_SPAN", "TAR_SPAN", "ZIP_SPAN", "Event", "Limits",
           "MemberData", "MemberFailure", "MemberSkipped", "MemberSpan", "MemberText", "SpillFailed", "index_archive",
           "read_archive", "read_spans"]


def read_archive(uri: str, location: str | None = None, *, skip: typing.AbstractSet[str] = frozenset(),
                 only: typing.AbstractSet[str] | None = None, limits: Limits = Limits()) -> Iterator[Event]:
    """Every entry of the archive at ``uri`` as events (see the module docstring).

    ``location``: the path to open when it differs from ``uri`` (a local path that is not UTF-8). ``skip``: member
    parts of URIs (after ``!``) already captioned; ``only``: when given, the member parts wanted. Members skipped or
    not wanted are passed over without being read (`MemberSkipped`: ``done`` or ``unwanted``).
    """
    return _events(uri, location, skip, only, limits, None)


def index_archive(uri: str, location: str | None = None, *, skip: typing.AbstractSet[str] = frozenset(),
                  only: typing.AbstractSet[str] | None = None, limits: Limits = Limits(),
                  spill: typing.Callable[[str, int, bytes], MemberSpan]) -> Iterator[Event]:
    """The events of `read_archive`, but image members are `MemberSpan`s: where their bytes are, for `read_spans`
    on any worker later. A zip's directory and an uncompressed tar's headers are read (the tar's data is seeked
    over); a compressed tar is decompressed once, its image members handed to ``spill(uri, position, data)``, which
    writes them where a later reader can seek and returns their span. Small members that may describe a
    WebDataset sample are `MemberText` (the caller decides whether they are a sample's fields or rows)."""
    return _events(uri, location, skip, only, limits, spill)


def _events(uri, location, skip, only, limits, spill) -> Iterator[Event]:
    location = location or uri

    def open_stream():
        return fileio.open_read(location)

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
        if not valid_header(head) and (_looks_like_zip(head) or (naming.is_zip_name(uri)
                                                                   and not compression_of(head))):
            events = ZipReader(uri, stream, skip, only, limits, index=spill is not None).events()
        else:
            events = TarReader(uri, open_stream, stream, head, skip, only, limits, spill=spill).events()
        count = 0
        for count, event in enumerate(events, start=1):
            yield event
        if not count:  # entries, but none is an input: directories, volume labels
            yield MemberFailure(uri, images.EMPTY_FILE, "the archive holds no files (only directories)")


def read_spans(spans: typing.Sequence[MemberSpan], location: str, limits: Limits = Limits(),
               archive_size: int | None = None) -> Iterator[Event]:
    """`MemberData` (or a `MemberFailure`) of each span, in order: the archive at ``location`` (or a spill file) is
    opened once and each member read where its span says. ``archive_size``: the archive's size when it was indexed;
    an archive that changed since is not read (each span gets a row saying so)."""
    streams: dict[str, tuple] = {}  # the one source open at a time: (stream, size, why it cannot be read)
    try:
        for span in spans:
            source = span.source or location
            try:
                if source not in streams:
                    for stream, _, _ in streams.values():
                        stream.close()
                    streams.clear()
                    opened = fileio.open_read(source)
                    size = opened.seek(0, 2)
                    changed = (source == location and archive_size is not None and size != archive_size)
                    streams[source] = (opened, size, f"the archive changed since the job listed it ({size:,} bytes, "
                                                     f"not {archive_size:,}); run the job again for it"
                                       if changed else None)
                stream, size, problem = streams[source]
                if problem:
                    raise Stop(images.READ_ERROR, problem)
                yield MemberData(span.uri, span.position, _span_bytes(stream, size, span, limits))
            except FileNotFoundError:
                yield MemberFailure(span.uri, images.MISSING_FILE, f"the archive (or its spill file) is gone: {source}")
            except Stop as stop:
                yield MemberFailure(span.uri, stop.error_class, f"member #{span.position}: {stop.message}")
            except Truncated:
                yield MemberFailure(span.uri, images.CORRUPT_ARCHIVE,
                                    f"member #{span.position} is truncated: the archive ends inside its data")
            except STREAM_ERRORS as error:
                if span.format == ZIP_SPAN:  # as when the zip is read whole: its data does not decompress
                    yield MemberFailure(span.uri, images.CORRUPT_ARCHIVE, f"member #{span.position} cannot be "
                                                                          f"decompressed: {describe_error(error)}")
                else:
                    yield MemberFailure(span.uri, images.READ_ERROR,
                                        f"member #{span.position} cannot be read: {describe_error(error)}")
            except Exception as error:  # filesystems raise their own types (BeamIOError, ...)
                yield MemberFailure(span.uri, images.READ_ERROR,
                                    f"member #{span.position} cannot be read: {describe_error(error)}")
    finally:
        for stream, _, _ in streams.values():
            stream.close()


def _span_bytes(stream, size: int, span: MemberSpan, limits: Limits) -> bytes:
    if span.format == ZIP_SPAN:
        data, _ = read_zip_member(stream, size, span.offset, span.stored_size, span.size, span.method, span.crc,
                                  limits)
        return data
    if span.offset + span.size > size:
        raise Truncated()
    stream.seek(span.offset)
    data = stream.read(span.size)
    if len(data) < span.size:
        raise Truncated()
    return data


def _looks_like_zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"PK00"))
