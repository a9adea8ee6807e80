"""The tar format as a stream: decompression (gzip, bzip2, xz with a memory limit), expansion limits, and the
headers of a tar in order (`TarWalker`: pax and GNU extended headers, resynchronization after a damaged header)."""
import bz2
import gzip
import io
import lzma
import tarfile
import typing
from typing import Iterator

from beam_jobs.caption.archives.common import (
    BLOCK,
    CHUNK,
    MAX_LZMA_DICTIONARY,
    RATIO_FLOOR_BYTES,
    Limits,
    Stop,
    Truncated,
    compression_of,
)
from schemas import images

_ZERO_BLOCK = bytes(BLOCK)
_MAX_EXTENDED_HEADER = 1 << 20  # pax / GNU long-name data above this is damage, not a name
# No file is larger than 2**63 - 1 bytes (off_t), a number of 19 digits. A longer pax number is damage, and it must
# not reach int(): Python refuses to convert more than 4,300 digits with a ValueError, which would end the reading of
# the whole archive as stream damage instead of costing the one entry.
_MAX_SIZE = 2**63 - 1
_MAX_SIZE_DIGITS = len(str(_MAX_SIZE))


class Prepended(io.RawIOBase):
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


class XzReader(io.RawIOBase):
    """xz decompression with a memory limit (an xz header may ask for a dictionary of gigabytes, allocated up front),
    concatenated streams read in turn; trailing data that is no xz stream is ignored, as `lzma.LZMAFile` does."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self._engine = self._new_engine()
        self._finished = self._trailing = False

    @staticmethod
    def _new_engine():
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_LZMA_DICTIONARY + (64 << 20))

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._finished:
            if self._engine.eof:
                rest = self._engine.unused_data.lstrip(b"\0")  # stream padding is NUL bytes
                while not rest:
                    more = self._raw.read(CHUNK)
                    if not more:
                        self._finished = True
                        return 0
                    rest = more.lstrip(b"\0")
                self._engine = self._new_engine()
                self._trailing = True  # until it gives a byte, this may be trailing data that is no xz stream
                try:
                    data = self._engine.decompress(rest, len(buffer))
                except lzma.LZMAError:
                    self._finished = True
                    return 0
            else:
                chunk = b""
                if self._engine.needs_input:
                    chunk = self._raw.read(CHUNK)
                    if not chunk:
                        if self._trailing:
                            self._finished = True
                            return 0
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                try:
                    data = self._engine.decompress(chunk, len(buffer))
                except lzma.LZMAError as error:
                    if "memory" in str(error).lower():
                        raise Stop(images.UNSUPPORTED_FORMAT,
                                   f"the xz stream needs more than {MAX_LZMA_DICTIONARY:,} bytes of dictionary "
                                   "(xz -9 uses 64 MiB)") from None
                    raise
            if data:
                self._trailing = False
                buffer[:len(data)] = data
                return len(data)
        return 0


def _size_if_seekable(stream) -> int | None:
    try:
        if not stream.seekable():
            return None
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        return size
    except Exception:  # a stream that says it seeks but cannot
        return None


class TarStream:
    """The uncompressed tar bytes with a position, skipping and the expansion limits of compressed archives.

    An uncompressed tar on a seekable stream (a local file, a ranged object-store reader) skips data longer than
    `CHUNK` by seeking, so that walking its headers reads headers only; ``size`` is then its length (else None)."""

    def __init__(self, uri: str, stream, head: bytes, limits: Limits):
        compression = None if valid_header(head) else compression_of(head)
        if compression == "zstd":
            raise Stop(images.UNSUPPORTED_FORMAT, "a zstd-compressed archive is not supported; use gzip, bzip2 or "
                                                   "xz, or an uncompressed tar")
        self.compression = compression
        self._raw = Prepended(head, stream)
        self.size = _size_if_seekable(stream) if compression is None else None
        if self.size is not None:  # read from the start again: the head's bytes are the file's first bytes
            self._stream = stream
        else:
            buffered = io.BufferedReader(self._raw, buffer_size=CHUNK)
            self._stream = {"gzip": lambda: gzip.GzipFile(fileobj=buffered, mode="rb"),
                            "bzip2": lambda: bz2.BZ2File(buffered),
                            "xz": lambda: io.BufferedReader(XzReader(buffered), buffer_size=CHUNK),
                            None: lambda: buffered}[compression]()
        self._uri, self._limits = uri, limits
        self.position = 0

    def _check_limits(self) -> None:
        if self.compression is None:
            return  # an uncompressed tar holds exactly its bytes: nothing to cap
        if self.position > self._limits.max_archive_bytes:
            raise Stop(images.EXPANSION_LIMIT, f"the {self.compression} archive expands to more than "
                                                f"{self._limits.max_archive_bytes:,} bytes (--max_archive_bytes)")
        if (self.position > RATIO_FLOOR_BYTES
                and self.position > self._limits.max_ratio * max(self._raw.consumed, 1)):
            raise Stop(images.EXPANSION_LIMIT,
                        f"the {self.compression} archive expands more than {self._limits.max_ratio:g} times "
                        f"({self.position:,} bytes from {self._raw.consumed:,}; --max_compression_ratio): "
                        "a decompression bomb or data that is no photo")

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes; fewer only at the end of the data."""
        parts, wanted = [], count
        while wanted > 0:
            part = self._stream.read(min(wanted, CHUNK))
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
            self.position += len(part)
            self._check_limits()
        return b"".join(parts)

    def skip(self, count: int) -> None:
        """Passes over ``count`` bytes; `Truncated` if the data ends first."""
        if self.size is not None and count > CHUNK:
            target = self.position + count
            if target > self.size:
                self._stream.seek(self.size)
                self.position = self.size
                raise Truncated()
            self._stream.seek(target)
            self.position = target
            return
        while count > 0:
            part = self.read(min(count, CHUNK))
            if not part:
                raise Truncated()
            count -= len(part)


class TarEntry(typing.NamedTuple):
    position: int  # 1-based among the archive's entries
    offset: int  # of its (first) header in the uncompressed tar
    name: bytes
    link: bytes
    type: bytes
    size: int
    problem: str | None  # an extended header that could not be used


class TarDamage(typing.NamedTuple):
    position: int
    offset: int
    end: int | None  # offset of the next valid header; None: the damage runs to the end
    reason: str


DATALESS_TYPES = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
                   tarfile.DIRTYPE)
REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
NO_INPUT_TYPES = (tarfile.DIRTYPE, b"V", b"D")  # directories, volume labels, GNU dump directories
SPECIAL_TYPES = {tarfile.SYMTYPE: "a symbolic link", tarfile.CHRTYPE: "a character device",
                  tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
                  tarfile.GNUTYPE_SPARSE: "a GNU sparse file", b"M": "the continuation of a multi-volume file",
                  b"N": "an old GNU long-name entry"}


def valid_header(block: bytes) -> bool:
    """A tar header whose checksum holds (a plain tar starts with one, whatever its first member's name is)."""
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _pax_number(text: bytes) -> int | None:
    """A pax decimal number (a size, a record length), or None when it is no number or above any file's size."""
    digits = text.lstrip(b"0") or b"0"
    if not text.isdigit() or len(digits) > _MAX_SIZE_DIGITS:
        return None
    value = int(digits)
    return value if value <= _MAX_SIZE else None


def _pax_size_problem(text: bytes) -> str:
    if not text.isdigit():
        return "a pax size that is not a number"
    return f"a pax size of {len(text.lstrip(b'0')):,} digits, larger than any file can be"


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """pax extended header records ("LEN key=value\\n"); ValueError when malformed."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position)
        length = _pax_number(data[position:space]) if space >= 0 else None
        if length is None:
            raise ValueError("malformed pax record length")
        record = data[space + 1:position + length]
        if length <= 0 or position + length > len(data) or not record.endswith(b"\n"):
            raise ValueError("malformed pax record")
        key, equals, value = record[:-1].partition(b"=")
        if not equals:
            raise ValueError("pax record without '='")
        records[key] = value
        position += length
    return records


class TarWalker:
    """Headers of a tar stream, in order: `TarEntry`s and `TarDamage`s. After an entry the caller may read
    its data (`read_data`); whatever it leaves is skipped before the next header."""

    def __init__(self, stream: TarStream):
        self._stream = stream
        self._left = 0  # data bytes of the current entry not yet read, padding included
        self._data_left = 0
        self.position = 0
        self.entries_seen = 0

    @property
    def data_position(self) -> int:
        """Where the data of the entry just yielded starts (while none of it is read)."""
        return self._stream.position

    @property
    def stream_size(self) -> int | None:
        return self._stream.size

    def read_data(self, count: int) -> bytes:
        count = min(count, self._data_left)
        data = self._stream.read(count)
        self._left -= len(data)
        self._data_left -= len(data)
        if len(data) < count:
            raise Truncated()
        return data

    def _finish_entry(self) -> None:
        left, self._left, self._data_left = self._left, 0, 0
        self._stream.skip(left)

    def _set_data(self, size: int) -> None:
        self._data_left = size
        self._left = size + (-size) % BLOCK

    def _read_header(self):
        """(offset, TarInfo) of the next header, None at the end, or a `TarDamage` (then the header after it)."""
        while True:
            offset = self._stream.position
            block = self._stream.read(BLOCK)
            if not block:
                return None
            if len(block) < BLOCK:
                if block.strip(b"\0"):
                    self.position += 1
                    return TarDamage(self.position, offset, None, "the archive ends inside a header")
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
                return TarDamage(damage_position, offset, None, reason)
            if block == _ZERO_BLOCK:
                continue
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError:
                continue
            self._pending = (candidate, info)
            return TarDamage(damage_position, offset, candidate, reason)

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
            if isinstance(header, TarDamage):
                long_name = long_link = None
                pax, problem, first_offset = {}, None, None
                yield header
                continue
            offset, info = header
            if first_offset is None:
                first_offset = offset
            size = info.size
            if size < 0 or size > _MAX_SIZE:  # base-256 size fields hold up to 95 bits
                header = self._resynchronize(offset, "negative size" if size < 0 else
                                             f"a size of {size:,} bytes, larger than any file can be")
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
                        pax.update(parse_pax(data))
                    except ValueError as error:
                        problem = f"a malformed pax header ({error})"
                continue  # global pax headers ('g') describe no entry; their values are not needed here
            if info.type == tarfile.GNUTYPE_SPARSE and getattr(info, "_sparse_structs", ((), False, 0))[1]:
                extended = True
                while extended:  # old GNU sparse: more 512-byte sparse maps follow the header, before the data
                    block = self._stream.read(BLOCK)
                    if len(block) < BLOCK:
                        raise Truncated()
                    extended = bool(block[504])
            self.position += 1
            self.entries_seen += 1
            name = pax.get(b"path") or long_name or info.name.encode("utf-8", "surrogateescape")
            link = pax.get(b"linkpath") or long_link or info.linkname.encode("utf-8", "surrogateescape")
            if b"size" in pax:
                pax_size = _pax_number(pax[b"size"])
                if pax_size is None:  # the entry is a row of its own; its data is skipped by the ustar size
                    problem = problem or _pax_size_problem(pax[b"size"])
                else:
                    size = pax_size
            entry_type = info.type
            if any(key.startswith(b"GNU.sparse.") for key in pax):
                entry_type = tarfile.GNUTYPE_SPARSE
            # As in tarfile: links, devices, FIFOs and directories store no data; everything else stores `size`.
            self._set_data(0 if entry_type in DATALESS_TYPES else size)
            yield TarEntry(self.position, first_offset, name, link, entry_type, size, problem)
            long_name = long_link = None
            pax, problem, first_offset = {}, None, None
