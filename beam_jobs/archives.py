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
- anything that ends the reading early (a truncated or corrupt compressed stream, an expansion limit, a file that
  is no archive at all, an archive with no entry) is one failure on the archive's own URI.

Member URIs follow `beam_jobs.sources` (escaped names; positions for nameless damage), so every failure has a URI
of its own and no URI is produced twice by one archive (a name stored twice is read once: `MemberSkipped`).
"""
import bz2
import gzip
import io
import lzma
import struct
import tarfile
import typing
import zlib
from typing import Callable, Iterator

from beam_jobs import sources
from schemas import images

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 20
_MAX_EXTENDED_HEADER = 1 << 20  # pax / GNU long-name data above this is damage, not a name
RATIO_FLOOR_BYTES = 64 * 1024 * 1024  # the compression ratio is only judged past this much output

DEFAULT_MAX_ARCHIVE_BYTES = 64 * 1024 ** 3
DEFAULT_MAX_COMPRESSION_RATIO = 200.0


class Limits(typing.NamedTuple):
    """Caps that turn oversized members and decompression bombs into error rows.

    ``max_member_bytes``: a member above it is ``too_large`` (not read). ``max_archive_bytes``: decompressed
    bytes one archive may produce (a compressed tar's content, the sum of a zip's members). ``max_ratio``:
    decompressed bytes per stored byte, judged once an archive (or a zip member) has produced
    `RATIO_FLOOR_BYTES`; photos compress about 1:1, bombs 1,000:1 and more.
    """
    max_member_bytes: int = sources.DEFAULT_MAX_IMAGE_BYTES
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
    reason: str  # SKIPPED_DONE or SKIPPED_DUPLICATE


SKIPPED_DONE, SKIPPED_DUPLICATE = "done", "duplicate"
Event = typing.Union[MemberData, MemberFailure, MemberSkipped]


class _Stop(Exception):
    """Reading cannot go on; ``error_class``/``message`` describe why."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class, self.message = error_class, message


class _Truncated(Exception):
    """The data ended before a member's stated size."""


def _describe_error(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Decompressor and I/O failures of a compressed stream; any of them ends the reading of the stream.
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, struct.error)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def read_archive(uri: str, location: str | None = None, *, skip: typing.AbstractSet[str] = frozenset(),
                 limits: Limits = Limits()) -> Iterator[Event]:
    """Every entry of the archive at ``uri`` as events (see the module docstring).

    ``location``: the path to open when it differs from ``uri`` (a local path that is not UTF-8). ``skip``: member
    parts of URIs (after ``!``) already captioned; they are passed over without being read.
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
        yield MemberFailure(uri, images.READ_ERROR, f"cannot open the archive: {_describe_error(error)}")
        return
    with stream:
        try:
            head = stream.read(BLOCK)
        except Exception as error:
            yield MemberFailure(uri, images.READ_ERROR, f"cannot read the archive: {_describe_error(error)}")
            return
        if not head:
            yield MemberFailure(uri, images.EMPTY_FILE, "the archive is empty (0 bytes)")
            return
        if _looks_like_zip(head) or (sources.is_zip_name(uri) and not _compression_of(head)
                                     and head[257:262] != b"ustar"):
            yield from _ZipReader(uri, stream, skip, limits).events()
        else:
            yield from _TarReader(uri, open_stream, stream, head, skip, limits).events()


def _looks_like_zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"PK00"))


def _compression_of(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _is_image_name(name: bytes) -> bool:
    return sources.kind_of(name.decode("utf-8", "surrogateescape")) == sources.IMAGE


def _not_an_image(name: bytes) -> str:
    if sources.kind_of(name.decode("utf-8", "surrogateescape")) == sources.ARCHIVE:
        return "an archive inside an archive is not expanded; extract it and pass it as an input"
    return "archive member is not named like an image; skipped"


def _too_large_message(size: int, limit: int) -> str:
    return f"archive member of {size:,} bytes is above the limit of {limit:,} (raise --max_image_bytes to accept it)"


# ---------------------------------------------------------------------------------------------------------------
# Tar


class _Prepended(io.RawIOBase):
    """The first bytes already read, then the rest of the stream; counts the bytes it hands out."""

    def __init__(self, head: bytes, stream):
        super().__init__()
        self._head, self._stream, self.consumed = head, stream, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
        else:
            data = self._stream.read(len(buffer))
            count = len(data)
            buffer[:count] = data
        self.consumed += count
        return count


class _TarStream:
    """The uncompressed tar bytes with a position, skipping and the expansion limits of compressed archives."""

    def __init__(self, uri: str, stream, head: bytes, limits: Limits):
        compression = _compression_of(head)
        if compression == "zstd":
            raise _Stop(images.UNSUPPORTED_FORMAT, "a zstd-compressed archive is not supported; use gzip, bzip2 or "
                                                   "xz, or an uncompressed tar")
        self.compression = compression
        self._raw = _Prepended(head, stream)
        buffered = io.BufferedReader(self._raw, buffer_size=_CHUNK)
        self._stream = {"gzip": lambda: gzip.GzipFile(fileobj=buffered, mode="rb"),
                        "bzip2": lambda: bz2.BZ2File(buffered), "xz": lambda: lzma.LZMAFile(buffered),
                        None: lambda: buffered}[compression]()
        self._uri, self._limits = uri, limits
        self.position = 0

    def _check_limits(self) -> None:
        if self.compression is None:
            return  # an uncompressed tar holds exactly its bytes: nothing to cap
        if self.position > self._limits.max_archive_bytes:
            raise _Stop(images.EXPANSION_LIMIT, f"the {self.compression} archive expands to more than "
                                                f"{self._limits.max_archive_bytes:,} bytes (--max_archive_bytes)")
        if (self.position > RATIO_FLOOR_BYTES
                and self.position > self._limits.max_ratio * max(self._raw.consumed, 1)):
            raise _Stop(images.EXPANSION_LIMIT,
                        f"the {self.compression} archive expands more than {self._limits.max_ratio:g} times "
                        f"({self.position:,} bytes from {self._raw.consumed:,}; --max_compression_ratio): "
                        "a decompression bomb or data that is no photo")

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes; fewer only at the end of the data."""
        parts, wanted = [], count
        while wanted > 0:
            part = self._stream.read(min(wanted, _CHUNK))
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
            self.position += len(part)
            self._check_limits()
        return b"".join(parts)

    def skip(self, count: int) -> None:
        """Passes over ``count`` bytes; `_Truncated` if the data ends first."""
        while count > 0:
            part = self.read(min(count, _CHUNK))
            if not part:
                raise _Truncated()
            count -= len(part)


class _TarEntry(typing.NamedTuple):
    position: int  # 1-based among the archive's entries
    offset: int  # of its (first) header in the uncompressed tar
    name: bytes
    link: bytes
    type: bytes
    size: int
    problem: str | None  # an extended header that could not be used


class _TarDamage(typing.NamedTuple):
    position: int
    offset: int
    end: int | None  # offset of the next valid header; None: the damage runs to the end
    reason: str


_DATALESS_TYPES = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
                   tarfile.DIRTYPE)
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_NO_INPUT_TYPES = (tarfile.DIRTYPE, b"V", b"D")  # directories, volume labels, GNU dump directories
_SPECIAL_TYPES = {tarfile.SYMTYPE: "a symbolic link", tarfile.CHRTYPE: "a character device",
                  tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
                  tarfile.GNUTYPE_SPARSE: "a GNU sparse file", b"M": "the continuation of a multi-volume file",
                  b"N": "an old GNU long-name entry"}


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """pax extended header records ("LEN key=value\\n"); ValueError when malformed."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position)
        if space < 0 or not data[position:space].isdigit():
            raise ValueError("malformed pax record length")
        length = int(data[position:space])
        record = data[space + 1:position + length]
        if length <= 0 or position + length > len(data) or not record.endswith(b"\n"):
            raise ValueError("malformed pax record")
        key, equals, value = record[:-1].partition(b"=")
        if not equals:
            raise ValueError("pax record without '='")
        records[key] = value
        position += length
    return records


class _TarWalker:
    """Headers of a tar stream, in order: `_TarEntry`s and `_TarDamage`s. After an entry the caller may read
    its data (`read_data`); whatever it leaves is skipped before the next header."""

    def __init__(self, stream: _TarStream):
        self._stream = stream
        self._left = 0  # data bytes of the current entry not yet read, padding included
        self._data_left = 0
        self.position = 0
        self.entries_seen = 0

    def read_data(self, count: int) -> bytes:
        count = min(count, self._data_left)
        data = self._stream.read(count)
        self._left -= len(data)
        self._data_left -= len(data)
        if len(data) < count:
            raise _Truncated()
        return data

    def _finish_entry(self) -> None:
        left, self._left, self._data_left = self._left, 0, 0
        self._stream.skip(left)

    def _set_data(self, size: int) -> None:
        self._data_left = size
        self._left = size + (-size) % BLOCK

    def _read_header(self):
        """(offset, TarInfo) of the next header, None at the end, or a `_TarDamage` (then the header after it)."""
        while True:
            offset = self._stream.position
            block = self._stream.read(BLOCK)
            if not block:
                return None
            if len(block) < BLOCK:
                if block.strip(b"\0"):
                    self.position += 1
                    return _TarDamage(self.position, offset, None, "the archive ends inside a header")
                return None
            if block == _ZERO_BLOCK:
                continue  # end-of-archive marker or padding; read on, as `tar --ignore-zeros` does
            try:
                return offset, tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as error:
                return self._resynchronize(offset, str(error) or type(error).__name__)

    def _resynchronize(self, offset: int, reason: str):
        self.position += 1
        damage_position = self.position
        while True:
            candidate = self._stream.position
            block = self._stream.read(BLOCK)
            if len(block) < BLOCK:
                return _TarDamage(damage_position, offset, None, reason)
            if block == _ZERO_BLOCK:
                continue
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError:
                continue
            self._pending = (candidate, info)
            return _TarDamage(damage_position, offset, candidate, reason)

    def entries(self) -> Iterator:
        self._pending = None
        long_name = long_link = None
        pax: dict[bytes, bytes] = {}
        problem = None
        first_offset = None
        while True:
            self._finish_entry()
            if self._pending is not None:
                header, self._pending = self._pending, None
            else:
                header = self._read_header()
            if header is None:
                return
            if isinstance(header, _TarDamage):
                long_name = long_link = None
                pax, problem, first_offset = {}, None, None
                yield header
                continue
            offset, info = header
            if first_offset is None:
                first_offset = offset
            size = info.size
            if size < 0:
                header = self._resynchronize(offset, "negative size")
                yield header
                long_name = long_link = None
                pax, problem, first_offset = {}, None, None
                continue
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                             tarfile.SOLARIS_XHDTYPE):
                self._set_data(size)
                if size > _MAX_EXTENDED_HEADER:
                    problem = f"an extended header of {size:,} bytes (more than {_MAX_EXTENDED_HEADER:,})"
                    continue
                data = self.read_data(size)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.split(b"\0", 1)[0]
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = data.split(b"\0", 1)[0]
                elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    try:
                        pax.update(_parse_pax(data))
                    except ValueError as error:
                        problem = f"a malformed pax header ({error})"
                continue  # global pax headers ('g') describe no entry; their values are not needed here
            if info.type == tarfile.GNUTYPE_SPARSE and getattr(info, "_sparse_structs", ((), False, 0))[1]:
                extended = True
                while extended:  # old GNU sparse: more 512-byte sparse maps follow the header, before the data
                    block = self._stream.read(BLOCK)
                    if len(block) < BLOCK:
                        raise _Truncated()
                    extended = bool(block[504])
            self.position += 1
            self.entries_seen += 1
            name = pax.get(b"path") or long_name or info.name.encode("utf-8", "surrogateescape")
            link = pax.get(b"linkpath") or long_link or info.linkname.encode("utf-8", "surrogateescape")
            if b"size" in pax:
                if pax[b"size"].isdigit():
                    size = int(pax[b"size"])
                else:
                    problem = problem or "a pax size that is not a number"
            entry_type = info.type
            if any(key.startswith(b"GNU.sparse.") for key in pax):
                entry_type = tarfile.GNUTYPE_SPARSE
            # As in tarfile: links, devices, FIFOs and directories store no data; everything else stores `size`.
            self._set_data(0 if entry_type in _DATALESS_TYPES else size)
            yield _TarEntry(self.position, first_offset, name, link, entry_type, size, problem)
            long_name = long_link = None
            pax, problem, first_offset = {}, None, None


class _TarReader:
    def __init__(self, uri: str, open_stream: Callable, stream, head: bytes, skip, limits: Limits):
        self._uri, self._open, self._stream, self._head = uri, open_stream, stream, head
        self._skip, self._limits = skip, limits

    def _member(self, name: bytes) -> str:
        return sources.escape_member_name(name)

    def events(self) -> Iterator[Event]:
        uri = self._uri
        try:
            stream = _TarStream(uri, self._stream, self._head, self._limits)
        except _Stop as stop:
            yield MemberFailure(uri, stop.error_class, stop.message)
            return
        walker = _TarWalker(stream)
        kind = f"{stream.compression}-compressed tar" if stream.compression else "tar"
        seen: set[str] = set()
        links: list[tuple[int, bytes, bytes]] = []  # (position, link name, target name) of hard links to resolve
        current = None  # the entry whose data is being read, for messages
        current_has_row = False
        found_header = False
        try:
            for item in walker.entries():
                current, current_has_row = None, False
                if isinstance(item, _TarDamage):
                    if not found_header and item.offset == 0 and item.end is None:
                        yield MemberFailure(uri, images.CORRUPT_ARCHIVE,
                                            f"not a {kind} archive: no valid tar header in its "
                                            f"{stream.position:,} bytes ({item.reason})")
                        return
                    found_header = True
                    yield self._damage(item, kind)
                    continue
                found_header = True
                current = item
                event = self._entry_event(item, seen, links, walker)
                if event is not None:
                    current_has_row = True
                    yield event
        except _Truncated:
            if current is not None and not current_has_row:
                yield MemberFailure(sources.member_uri(uri, current.name), images.CORRUPT_ARCHIVE,
                                    f"member #{current.position} is truncated: the {kind} ends before its "
                                    f"{current.size:,} bytes")
            else:
                where = f" inside member #{current.position}" if current is not None else ""
                yield MemberFailure(uri, images.CORRUPT_ARCHIVE,
                                    f"the {kind} is truncated: it ends{where} at byte {stream.position:,}")
            yield from self._unresolved(links, "the archive is truncated before its end")
            return
        except _Stop as stop:
            if current is not None and not current_has_row:
                yield MemberFailure(sources.member_uri(uri, current.name), stop.error_class,
                                    f"member #{current.position}: {stop.message}")
            yield MemberFailure(uri, stop.error_class,
                                f"reading stopped at byte {stream.position:,} after {walker.entries_seen:,} entries: "
                                f"{stop.message}; the rest of the archive is not read")
            yield from self._unresolved(links, "the archive was not read to its end")
            return
        except _STREAM_ERRORS as error:
            message = (f"the {kind} is damaged at byte {stream.position:,} of its content "
                       f"({_describe_error(error)})")
            if current is not None and not current_has_row:
                yield MemberFailure(sources.member_uri(uri, current.name), images.CORRUPT_ARCHIVE,
                                    f"member #{current.position}: {message}")
            else:
                yield MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{message}; the rest of the archive is lost")
            yield from self._unresolved(links, "the archive is damaged before its end")
            return
        if not walker.entries_seen and not found_header:
            yield MemberFailure(uri, images.EMPTY_FILE, f"the {kind} archive holds no entries")
            return
        if links:
            yield from self._resolve_links(links, kind)

    def _damage(self, damage: _TarDamage, kind: str) -> MemberFailure:
        if damage.end is None:
            extent = "to the end of the archive; whatever was stored there is lost"
        else:
            extent = (f"{damage.end - damage.offset:,} bytes skipped to the next valid header at byte "
                      f"{damage.end:,}; the entry stored there is lost")
        return MemberFailure(sources.position_uri(self._uri, damage.position), images.CORRUPT_ARCHIVE,
                             f"bad header of entry #{damage.position} at byte {damage.offset:,} of the {kind} "
                             f"({damage.reason}); {extent}")

    def _entry_event(self, entry: _TarEntry, seen: set, links: list, walker: _TarWalker):
        """The event of one entry (None: no row); reads the data of image members."""
        if entry.type in _NO_INPUT_TYPES:
            return None
        member = self._member(entry.name)
        uri = f"{self._uri}!{member}"
        where = f"member #{entry.position}"
        if member in self._skip:
            return MemberSkipped(uri, SKIPPED_DONE)
        if member in seen:
            return MemberSkipped(uri, SKIPPED_DUPLICATE)
        seen.add(member)
        if entry.problem:
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} has {entry.problem}; skipped")
        if not _is_image_name(entry.name):
            return MemberFailure(uri, images.NOT_AN_IMAGE, _not_an_image(entry.name))
        if entry.type == tarfile.LNKTYPE:
            links.append((entry.position, entry.name, entry.link))
            return None
        if entry.type in _SPECIAL_TYPES:
            target = f" to {sources.escape_member_name(entry.link)}" if entry.type == tarfile.SYMTYPE else ""
            return MemberFailure(uri, images.UNSUPPORTED_MEMBER,
                                 f"{where} is {_SPECIAL_TYPES[entry.type]}{target}, not a file; not followed")
        if entry.type not in _REGULAR_TYPES and not entry.type.isalpha() and entry.type not in b"0123456789":
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} has an invalid type {entry.type!r}")
        # Regular files, and unknown types, which POSIX says to read as regular files.
        if entry.size > self._limits.max_member_bytes:
            return MemberFailure(uri, images.TOO_LARGE, _too_large_message(entry.size, self._limits.max_member_bytes))
        return MemberData(uri, entry.position, walker.read_data(entry.size))

    def _unresolved(self, links: list, why: str) -> Iterator[MemberFailure]:
        for position, name, target in links:
            yield MemberFailure(sources.member_uri(self._uri, name), images.UNSUPPORTED_MEMBER,
                                f"member #{position} is a hard link to {sources.escape_member_name(target)}, "
                                f"which was not read: {why}")

    def _resolve_links(self, links: list, kind: str) -> Iterator[Event]:
        """A second pass over the archive reads the targets of hard links (the earlier member of that name)."""
        wanted = {}
        for position, name, target in links:
            wanted.setdefault(target, []).append((position, name))
        found: dict[bytes, tuple[int, bytes | str]] = {}  # target -> (position, data or failure message)
        try:
            with self._open() as raw:
                head = raw.read(BLOCK)
                walker = _TarWalker(_TarStream(self._uri, raw, head, self._limits))
                last_link = max(position for position, _, _ in links)
                for item in walker.entries():
                    if isinstance(item, _TarDamage):
                        continue
                    if item.position >= last_link:
                        break
                    if item.name not in wanted:
                        continue
                    if item.type in _REGULAR_TYPES and item.size <= self._limits.max_member_bytes:
                        found[item.name] = (item.position, walker.read_data(item.size))
                    elif item.type in _REGULAR_TYPES:
                        found[item.name] = (item.position, _too_large_message(item.size,
                                                                              self._limits.max_member_bytes))
                    else:
                        found[item.name] = (item.position, "which is not a regular file")
        except (_Stop, _Truncated, *_STREAM_ERRORS) as error:
            reason = error.message if isinstance(error, _Stop) else _describe_error(error)
            for target in wanted:
                found.setdefault(target, (0, f"which could not be read again ({reason})"))
        for target, pointing in wanted.items():
            target_position, outcome = found.get(target, (0, "which is not an earlier member of the archive"))
            for position, name in pointing:
                uri = sources.member_uri(self._uri, name)
                if isinstance(outcome, bytes) and target_position < position:
                    yield MemberData(uri, position, outcome)
                else:
                    message = outcome if isinstance(outcome, str) else "which is not an earlier member"
                    yield MemberFailure(uri, images.UNSUPPORTED_MEMBER,
                                        f"member #{position} is a hard link to "
                                        f"{sources.escape_member_name(target)}, {message}")


# ---------------------------------------------------------------------------------------------------------------
# Zip

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_STORED, _DEFLATED, _BZIP2, _LZMA = 0, 8, 12, 14
_METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64", 10: "PKWARE Implode", 18: "IBM TERSE", 19: "LZ77",
                 93: "Zstandard", 95: "XZ", 96: "JPEG variant", 97: "WavPack", 98: "PPMd", 99: "AES encryption"}
_UNIX_TYPES = {0o120000: "a symbolic link", 0o020000: "a character device", 0o060000: "a block device",
               0o010000: "a FIFO", 0o140000: "a socket", 0o040000: None}  # None: a directory (no row)


class _ZipEntry(typing.NamedTuple):
    position: int
    name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    creator: int
    external: int


class _ZipReader:
    """Reads a zip from its central directory (streamed in chunks), each member by seeking to its data."""

    def __init__(self, uri: str, stream, skip, limits: Limits):
        self._uri, self._stream, self._skip, self._limits = uri, stream, skip, limits
        self._produced = 0  # decompressed bytes of all members so far

    def events(self) -> Iterator[Event]:
        uri = self._uri
        try:
            self._stream.seek(0, io.SEEK_END)
            self._size = self._stream.tell()
            directory = self._find_directory()
        except _Stop as stop:
            yield MemberFailure(uri, stop.error_class, stop.message)
            return
        except Exception as error:
            yield MemberFailure(uri, images.READ_ERROR, f"cannot read the zip archive: {_describe_error(error)}")
            return
        count, start, length, shift = directory
        if count == 0:
            yield MemberFailure(uri, images.EMPTY_FILE, "the zip archive holds no entries")
            return
        seen: set[str] = set()
        entries = 0
        try:
            for entry in self._central_directory(count, start, length, shift):
                entries += 1
                event = self._entry_event(entry, seen)
                if event is not None:
                    yield event
        except _Stop as stop:
            yield MemberFailure(uri, stop.error_class, f"after {entries:,} of {count:,} entries: {stop.message}")

    def _find_directory(self) -> tuple[int, int, int, int]:
        """(entries, central directory offset, its length, offset of the zip inside the file)."""
        tail_length = min(self._size, _EOCD.size + 0xFFFF)
        self._stream.seek(self._size - tail_length)
        tail = self._stream.read(tail_length)
        index = _end_record_index(tail)
        if index < 0:
            raise _Stop(images.CORRUPT_ARCHIVE, "no zip end-of-central-directory record: not a zip archive, or a "
                                                "truncated one (e.g. an incomplete download)")
        eocd_offset = self._size - tail_length + index
        (_, disk, cd_disk, _, count, length, start, _) = _EOCD.unpack_from(tail, index)
        if disk or cd_disk:
            raise _Stop(images.UNSUPPORTED_FORMAT, "a multi-disk (split) zip archive is not supported")
        if (count == 0xFFFF or length == 0xFFFFFFFF or start == 0xFFFFFFFF) and index >= _EOCD64_LOCATOR.size:
            locator = _EOCD64_LOCATOR.unpack_from(tail, index - _EOCD64_LOCATOR.size)
            if locator[0] == b"PK\x06\x07":
                self._stream.seek(locator[2])
                record = self._stream.read(_EOCD64.size)
                if len(record) == _EOCD64.size and record[:4] == b"PK\x06\x06":
                    fields = _EOCD64.unpack(record)
                    count, length, start = fields[7], fields[8], fields[9]
                    eocd_offset = locator[2]
        shift = eocd_offset - length - start  # bytes before the zip (self-extracting archives)
        if shift < 0 or start + shift + length > self._size:
            raise _Stop(images.CORRUPT_ARCHIVE, "the zip central directory lies outside the file: a truncated or "
                                                "damaged archive")
        return count, start + shift, length, shift

    def _central_directory(self, count: int, start: int, length: int, shift: int) -> Iterator[_ZipEntry]:
        """The central directory's entries, read in chunks (memory does not grow with the number of members)."""
        buffer, buffer_start, cursor, end = b"", start, start, start + length

        def ensure(size: int, position: int) -> int:
            nonlocal buffer, buffer_start
            if cursor + size > end:
                raise _Stop(images.CORRUPT_ARCHIVE, f"the central directory ends inside entry #{position} (it "
                                                    f"states {count:,} entries in {length:,} bytes)")
            if cursor - buffer_start + size > len(buffer) or cursor < buffer_start:
                self._stream.seek(cursor)
                buffer, buffer_start = self._stream.read(max(_CHUNK, size)), cursor
                if len(buffer) < size:
                    raise _Stop(images.CORRUPT_ARCHIVE, f"the central directory is truncated at entry #{position}")
            return cursor - buffer_start

        for position in range(1, count + 1):
            relative = ensure(_CENTRAL.size, position)
            fields = _CENTRAL.unpack_from(buffer, relative)
            if fields[0] != b"PK\x01\x02":
                raise _Stop(images.CORRUPT_ARCHIVE, f"the central directory is damaged at entry #{position} "
                                                    f"(byte {cursor:,})")
            name_length, extra_length, comment_length = fields[12], fields[13], fields[14]
            record_length = _CENTRAL.size + name_length + extra_length + comment_length
            relative = ensure(record_length, position)
            name_start = relative + _CENTRAL.size
            name = buffer[name_start:name_start + name_length]
            extra = buffer[name_start + name_length:name_start + name_length + extra_length]
            compressed, size, offset = _zip64_sizes(extra, fields[10], fields[11], fields[18])
            yield _ZipEntry(position=position, name=name, flags=fields[5], method=fields[6], crc=fields[9],
                            compressed_size=compressed, size=size, header_offset=offset + shift,
                            creator=fields[2], external=fields[17])
            cursor += record_length

    def _entry_event(self, entry: _ZipEntry, seen: set) -> Event | None:
        member = sources.escape_member_name(entry.name)
        uri = f"{self._uri}!{member}"
        where = f"member #{entry.position}"
        if entry.name.endswith(b"/") and entry.size == 0:
            return None
        unix_type = (entry.external >> 16) & 0o170000 if entry.creator == 3 else 0
        if unix_type == 0o040000:
            return None
        if member in self._skip:
            return MemberSkipped(uri, SKIPPED_DONE)
        if member in seen:
            return MemberSkipped(uri, SKIPPED_DUPLICATE)
        seen.add(member)
        if not _is_image_name(entry.name):
            return MemberFailure(uri, images.NOT_AN_IMAGE, _not_an_image(entry.name))
        if unix_type in _UNIX_TYPES:
            return MemberFailure(uri, images.UNSUPPORTED_MEMBER, f"{where} is {_UNIX_TYPES[unix_type]}, not a file; "
                                                                 "not followed")
        if entry.flags & 0x1 or entry.method == 99:
            return MemberFailure(uri, images.ENCRYPTED_MEMBER, f"{where} is encrypted; decrypt the archive first")
        if entry.method not in (_STORED, _DEFLATED, _BZIP2, _LZMA):
            method = _METHOD_NAMES.get(entry.method, "unknown")
            return MemberFailure(uri, images.UNSUPPORTED_MEMBER,
                                 f"{where} uses compression method {entry.method} ({method}), which is not supported; "
                                 "re-create the archive with deflate or store")
        if entry.size > self._limits.max_member_bytes:
            return MemberFailure(uri, images.TOO_LARGE, _too_large_message(entry.size, self._limits.max_member_bytes))
        if self._produced + entry.size > self._limits.max_archive_bytes:
            return MemberFailure(uri, images.EXPANSION_LIMIT,
                                 f"{where} would take the archive past {self._limits.max_archive_bytes:,} "
                                 "decompressed bytes (--max_archive_bytes)")
        if entry.size > RATIO_FLOOR_BYTES and entry.size > self._limits.max_ratio * max(entry.compressed_size, 1):
            return MemberFailure(uri, images.EXPANSION_LIMIT,
                                 f"{where} states {entry.size:,} bytes from {entry.compressed_size:,} stored, a ratio "
                                 f"above {self._limits.max_ratio:g} (--max_compression_ratio)")
        try:
            data = self._read_member(entry)
        except _Stop as stop:
            return MemberFailure(uri, stop.error_class, f"{where}: {stop.message}")
        except (*_STREAM_ERRORS, _Truncated) as error:
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} cannot be decompressed: "
                                                              f"{_describe_error(error)}")
        return MemberData(uri, entry.position, data)

    def _read_member(self, entry: _ZipEntry) -> bytes:
        self._stream.seek(entry.header_offset)
        header = self._stream.read(_LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise _Stop(images.CORRUPT_ARCHIVE, f"no local header at byte {entry.header_offset:,}")
        fields = _LOCAL.unpack(header)
        data_start = entry.header_offset + _LOCAL.size + fields[10] + fields[11]
        if data_start + entry.compressed_size > self._size:
            raise _Stop(images.CORRUPT_ARCHIVE, f"its data runs past the end of the file ({self._size:,} bytes): "
                                                "a truncated archive")
        self._stream.seek(data_start)
        decompressor = _Decompressor(entry.method)
        output, produced, crc = [], 0, 0
        left = entry.compressed_size
        while left > 0 or decompressor.has_more():
            chunk = b""
            if left > 0 and not decompressor.has_more():
                chunk = self._stream.read(min(left, _CHUNK))
                if not chunk:
                    raise _Truncated()
                left -= len(chunk)
            # never more than one byte past what the directory states: a lying header cannot inflate memory
            part = decompressor.decompress(chunk, entry.size + 1 - produced)
            produced += len(part)
            self._produced += len(part)
            if produced > entry.size:
                raise _Stop(images.CORRUPT_ARCHIVE, f"decompresses to more than the {entry.size:,} bytes its header "
                                                    "states (a damaged archive or a zip bomb)")
            if self._produced > RATIO_FLOOR_BYTES and self._produced > self._limits.max_ratio * max(self._size, 1):
                raise _Stop(images.EXPANSION_LIMIT,
                            f"the archive expands more than {self._limits.max_ratio:g} times its {self._size:,} "
                            "bytes (--max_compression_ratio)")
            crc = zlib.crc32(part, crc)
            output.append(part)
        if not decompressor.finished():
            raise _Stop(images.CORRUPT_ARCHIVE, "its compressed data ends before the end of its stream")
        if produced != entry.size:
            raise _Stop(images.CORRUPT_ARCHIVE, f"decompresses to {produced:,} bytes, not the {entry.size:,} its "
                                                "header states")
        if crc != entry.crc:
            raise _Stop(images.CORRUPT_ARCHIVE, f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc:08x}): "
                                                "the member's data is damaged")
        return b"".join(output)


def _end_record_index(tail: bytes) -> int:
    """The end-of-central-directory record in the file's tail: the last candidate whose comment length reaches
    exactly the end of the file (a comment may itself hold the signature), else the last candidate that fits."""
    fallback, index = -1, tail.rfind(b"PK\x05\x06")
    while index >= 0:
        if len(tail) - index >= _EOCD.size:
            if fallback < 0:
                fallback = index
            if index + _EOCD.size + _EOCD.unpack_from(tail, index)[7] == len(tail):
                return index
        index = tail.rfind(b"PK\x05\x06", 0, index)
    return fallback


def _zip64_sizes(extra: bytes, compressed: int, size: int, offset: int) -> tuple[int, int, int]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, position)
        if tag == 0x0001:
            values = extra[position + 4:position + 4 + length]
            index = 0
            if size == 0xFFFFFFFF and index + 8 <= len(values):
                size = struct.unpack_from("<Q", values, index)[0]
                index += 8
            if compressed == 0xFFFFFFFF and index + 8 <= len(values):
                compressed = struct.unpack_from("<Q", values, index)[0]
                index += 8
            if offset == 0xFFFFFFFF and index + 8 <= len(values):
                offset = struct.unpack_from("<Q", values, index)[0]
            break
        position += 4 + length
    return compressed, size, offset


class _Decompressor:
    """One zip compression method behind decompress(data, max_length) / has_more() / finished()."""

    def __init__(self, method: int):
        self._method = method
        self._engine = {_DEFLATED: lambda: zlib.decompressobj(-15), _BZIP2: bz2.BZ2Decompressor,
                        _STORED: lambda: None, _LZMA: lambda: None}[method]()
        self._header = b""  # LZMA in zip: version (2 bytes), properties size (2), properties (5), then the stream
        self._pending = b""

    def _start_lzma(self, data: bytes) -> bytes:
        self._header += data
        if len(self._header) < 9:
            return b""
        properties_length = struct.unpack_from("<H", self._header, 2)[0]
        if properties_length != 5:
            raise _Stop(images.CORRUPT_ARCHIVE, "its LZMA properties are malformed")
        code, dictionary = self._header[4], struct.unpack_from("<L", self._header, 5)[0]
        if code >= 9 * 5 * 5:
            raise _Stop(images.CORRUPT_ARCHIVE, "its LZMA properties are malformed")
        self._engine = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
            "id": lzma.FILTER_LZMA1, "dict_size": dictionary, "lc": code % 9, "lp": (code // 9) % 5,
            "pb": code // 45}])
        rest, self._header = self._header[9:], b""
        return rest

    def decompress(self, data: bytes, max_length: int) -> bytes:
        max_length = max(max_length, 1)
        if self._method == _STORED:
            data = self._pending + data
            self._pending = data[max_length:]
            return data[:max_length]
        if self._method == _LZMA and self._engine is None:
            data = self._start_lzma(data)
            if self._engine is None:
                return b""
        if self._method == _DEFLATED:
            output = self._engine.decompress(self._pending + data, max_length)
            self._pending = self._engine.unconsumed_tail
            return output
        if self._engine.eof:
            if data:
                raise _Stop(images.CORRUPT_ARCHIVE, "data follows the end of its compressed stream")
            return b""
        return self._engine.decompress(data, max_length)

    def has_more(self) -> bool:
        """Whether output may be pending without more input."""
        if self._method in (_STORED, _DEFLATED):
            return bool(self._pending)
        return self._engine is not None and not self._engine.eof and not self._engine.needs_input

    def finished(self) -> bool:
        if self._method == _STORED:
            return True
        return self._engine is not None and self._engine.eof
