"""Zip archives read from their central directory (streamed in chunks), each member decompressed with its size
and CRC-32 checked and its output capped."""
import bz2
import io
import lzma
import struct
import typing
import zlib
from typing import Iterator

from beam_jobs import sources
from beam_jobs.archives.common import (CHUNK, MAX_LZMA_DICTIONARY, RATIO_FLOOR_BYTES, STREAM_ERRORS, Event, Limits, MemberData,
                                       MemberFailure, MemberSkipped, SKIPPED_DONE, SKIPPED_DUPLICATE, Stop, Truncated,
                                       describe_error, is_image_name, not_an_image_message, too_large_message)
from schemas import images

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


class ZipReader:
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
        except Stop as stop:
            if stop.error_class == images.CORRUPT_ARCHIVE and self._starts_with_a_member():
                yield from self._recover(stop.message)
            else:
                yield MemberFailure(uri, stop.error_class, stop.message)
            return
        except Exception as error:
            yield MemberFailure(uri, images.READ_ERROR, f"cannot read the zip archive: {describe_error(error)}")
            return
        count, start, length, shift = directory
        if count == 0 and length == 0:
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
        except Stop as stop:
            yield MemberFailure(uri, stop.error_class, f"after {entries:,} of {count:,} entries: {stop.message}")

    def _starts_with_a_member(self) -> bool:
        self._stream.seek(0)
        return self._stream.read(4) == b"PK\x03\x04"

    def _recover(self, why: str) -> Iterator[Event]:
        """A zip without its central directory (an incomplete download, a truncated copy): the members are recovered
        from their local headers, in order, until the data ends; then one row on the archive says so."""
        seen: set[str] = set()
        offset, position, stopped, complete = 0, 0, None, 0
        try:
            while offset + _LOCAL.size <= self._size:
                self._stream.seek(offset)
                header = self._stream.read(_LOCAL.size)
                if header[:4] != b"PK\x03\x04":
                    break  # the central directory's start, or damage
                fields = _LOCAL.unpack(header)
                flags, method, name_length, extra_length = fields[3], fields[4], fields[10], fields[11]
                name = self._stream.read(name_length)
                extra = self._stream.read(extra_length)
                if len(name) < name_length or len(extra) < extra_length:
                    raise Truncated()
                compressed, size, _ = _zip64_sizes(extra, fields[8], fields[9], 0)
                crc = fields[7]
                data_start = offset + _LOCAL.size + name_length + extra_length
                position += 1
                following = None
                member = sources.escape_member_name(name)
                truncated = MemberFailure(f"{self._uri}!{member}", images.CORRUPT_ARCHIVE,
                                          f"member #{position} is truncated: the file ends inside its data")
                reported = member in self._skip or member in seen
                if flags & 0x08:  # sizes and CRC follow the data: find where the compressed stream ends
                    try:
                        compressed, size, crc, following = self._measure_streamed(data_start, method, position)
                    except Truncated:
                        if not reported:
                            yield truncated
                        break
                    except Stop as stop:
                        if not reported:
                            yield MemberFailure(truncated.uri, stop.error_class, stop.message)
                        raise
                entry = _ZipEntry(position=position, name=name, flags=flags, method=method, crc=crc,
                                  compressed_size=compressed, size=size, header_offset=offset, creator=0, external=0)
                if data_start + compressed > self._size:
                    if not reported:
                        yield truncated
                    break
                event = self._entry_event(entry, seen)
                if event is not None:
                    yield event
                offset = following if following is not None else data_start + compressed
                complete += 1
        except Stop as stop:
            stopped = stop.message
        except Truncated:
            stopped = "the file ends inside a member's header"
        except STREAM_ERRORS as error:
            stopped = describe_error(error)
        ending = f"; then: {stopped}" if stopped else ""
        yield MemberFailure(self._uri, images.CORRUPT_ARCHIVE,
                            f"{why}; read instead from the local headers: {complete:,} whole members in the first "
                            f"{offset:,} of {self._size:,} bytes{ending}; whatever the archive held after that is lost")

    def _measure_streamed(self, data_start: int, method: int, position: int) -> tuple[int, int, int, int]:
        """(compressed size, size, CRC-32, offset after the data descriptor) of a member written without sizes in
        its local header, by decompressing it (output counted against the limits, then dropped)."""
        if method == _DEFLATED:
            engine = zlib.decompressobj(-15)
        elif method == _BZIP2:
            engine = bz2.BZ2Decompressor()
        elif method == _STORED:
            return self._measure_stored(data_start, position)
        else:
            raise Stop(images.CORRUPT_ARCHIVE, f"member #{position} has no sizes in its local header and its method "
                                               f"({method}) does not mark its end; nothing after it can be found")
        self._stream.seek(data_start)
        consumed = produced = crc = 0
        while not engine.eof:
            if method == _DEFLATED and engine.unconsumed_tail:
                part = engine.decompress(engine.unconsumed_tail, CHUNK)
            elif method == _BZIP2 and not engine.needs_input:
                part = engine.decompress(b"", CHUNK)
            else:
                chunk = self._stream.read(CHUNK)
                if not chunk:
                    raise Truncated()
                consumed += len(chunk)
                part = engine.decompress(chunk, CHUNK)
            produced += len(part)
            self._produced += len(part)
            crc = zlib.crc32(part, crc)
            del part  # measured, not kept
            if self._produced > self._limits.max_archive_bytes or (
                    self._produced > RATIO_FLOOR_BYTES and self._produced > self._limits.max_ratio * self._size):
                raise Stop(images.EXPANSION_LIMIT, f"member #{position} expands past the limits "
                                                   "(--max_archive_bytes, --max_compression_ratio)")
        compressed = consumed - len(engine.unused_data)
        after = data_start + compressed
        self._stream.seek(after)
        descriptor = self._stream.read(24)
        skip = 4 if descriptor[:4] == b"PK\x07\x08" else 0
        wide = len(descriptor) >= skip + 20 and struct.unpack_from("<Q", descriptor, skip + 4)[0] == compressed
        return compressed, produced, crc, after + skip + (20 if wide else 12)

    def _measure_stored(self, data_start: int, position: int) -> tuple[int, int, int, int]:
        """A stored member without sizes ends where a data descriptor (signature, CRC-32, sizes) matches the bytes
        before it; the data is scanned for one, at most --max_image_bytes plus a margin far."""
        limit = self._limits.max_member_bytes + CHUNK
        self._stream.seek(data_start)
        data = bytearray()
        search_from = 0
        while True:
            index = data.find(b"PK\x07\x08", search_from)
            while index >= 0:
                descriptor = data[index + 4:index + 16]
                if len(descriptor) < 12:
                    break
                crc, compressed, size = struct.unpack("<3L", descriptor)
                if compressed == size == index and zlib.crc32(memoryview(data)[:index]) == crc:
                    return index, index, crc, data_start + index + 16
                index = data.find(b"PK\x07\x08", index + 1)
            search_from = max(len(data) - 16, 0)
            chunk = self._stream.read(CHUNK)
            if not chunk:
                raise Truncated()
            data += chunk
            if len(data) > limit:
                raise Stop(images.CORRUPT_ARCHIVE, f"member #{position} is stored without sizes and no data "
                                                   f"descriptor follows it within {limit:,} bytes")

    def _find_directory(self) -> tuple[int, int, int, int]:
        """(entries, central directory offset, its length, offset of the zip inside the file)."""
        tail_length = min(self._size, _EOCD.size + 0xFFFF)
        self._stream.seek(self._size - tail_length)
        tail = self._stream.read(tail_length)
        index = _end_record_index(tail)
        if index < 0:
            raise Stop(images.CORRUPT_ARCHIVE, "no zip end-of-central-directory record: not a zip archive, or a "
                                                "truncated one (e.g. an incomplete download)")
        eocd_offset = self._size - tail_length + index
        (_, disk, cd_disk, _, count, length, start, _) = _EOCD.unpack_from(tail, index)
        if disk or cd_disk:
            raise Stop(images.UNSUPPORTED_FORMAT, "a multi-disk (split) zip archive is not supported")
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
            raise Stop(images.CORRUPT_ARCHIVE, "the zip central directory lies outside the file: a truncated or "
                                                "damaged archive")
        if shift and self._starts_with_a_member():
            raise Stop(images.CORRUPT_ARCHIVE, "the only end-of-central-directory record found belongs to data "
                                                "inside the archive (a zip stored in a truncated zip)")
        return count, start + shift, length, shift

    def _central_directory(self, count: int, start: int, length: int, shift: int) -> Iterator[_ZipEntry]:
        """The central directory's entries, read in chunks (memory does not grow with the number of members)."""
        buffer, buffer_start, cursor, end = b"", start, start, start + length

        def ensure(size: int, position: int) -> int:
            nonlocal buffer, buffer_start
            if cursor + size > end:
                raise Stop(images.CORRUPT_ARCHIVE, f"the central directory ends inside entry #{position} (it "
                                                    f"states {count:,} entries in {length:,} bytes)")
            if cursor - buffer_start + size > len(buffer) or cursor < buffer_start:
                self._stream.seek(cursor)
                buffer, buffer_start = self._stream.read(max(CHUNK, size)), cursor
                if len(buffer) < size:
                    raise Stop(images.CORRUPT_ARCHIVE, f"the central directory is truncated at entry #{position}")
            return cursor - buffer_start

        position = 0
        while cursor < end:  # by the directory's length: a count above 65,535 wraps in zips without zip64
            position += 1
            relative = ensure(_CENTRAL.size, position)
            fields = _CENTRAL.unpack_from(buffer, relative)
            if fields[0] != b"PK\x01\x02":
                raise Stop(images.CORRUPT_ARCHIVE, f"the central directory is damaged at entry #{position} "
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
        if position == 0:
            raise Stop(images.CORRUPT_ARCHIVE, f"the end record states {count:,} entries but a central directory of "
                                                "0 bytes")

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
        if not is_image_name(entry.name):
            return MemberFailure(uri, images.NOT_AN_IMAGE, not_an_image_message(entry.name))
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
            return MemberFailure(uri, images.TOO_LARGE, too_large_message(entry.size, self._limits.max_member_bytes))
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
        except Stop as stop:
            return MemberFailure(uri, stop.error_class, f"{where}: {stop.message}")
        except (*STREAM_ERRORS, Truncated) as error:
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} cannot be decompressed: "
                                                              f"{describe_error(error)}")
        except Exception as error:  # e.g. MemoryError: this member's row; the others are read
            return MemberFailure(uri, images.INTERNAL_ERROR, f"{where}: {describe_error(error)}")
        return MemberData(uri, entry.position, data)

    def _read_member(self, entry: _ZipEntry) -> bytes:
        self._stream.seek(entry.header_offset)
        header = self._stream.read(_LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise Stop(images.CORRUPT_ARCHIVE, f"no local header at byte {entry.header_offset:,}")
        fields = _LOCAL.unpack(header)
        data_start = entry.header_offset + _LOCAL.size + fields[10] + fields[11]
        if data_start + entry.compressed_size > self._size:
            raise Stop(images.CORRUPT_ARCHIVE, f"its data runs past the end of the file ({self._size:,} bytes): "
                                                "a truncated archive")
        self._stream.seek(data_start)
        decompressor = _Decompressor(entry.method)
        output, produced, crc = [], 0, 0
        left = entry.compressed_size
        while left > 0 or decompressor.has_more():
            chunk = b""
            if left > 0 and not decompressor.has_more():
                chunk = self._stream.read(min(left, CHUNK))
                if not chunk:
                    raise Truncated()
                left -= len(chunk)
            # never more than one byte past what the directory states: a lying header cannot inflate memory
            part = decompressor.decompress(chunk, entry.size + 1 - produced)
            produced += len(part)
            self._produced += len(part)
            if produced > entry.size:
                raise Stop(images.CORRUPT_ARCHIVE, f"decompresses to more than the {entry.size:,} bytes its header "
                                                    "states (a damaged archive or a zip bomb)")
            if self._produced > RATIO_FLOOR_BYTES and self._produced > self._limits.max_ratio * max(self._size, 1):
                raise Stop(images.EXPANSION_LIMIT,
                            f"the archive expands more than {self._limits.max_ratio:g} times its {self._size:,} "
                            "bytes (--max_compression_ratio)")
            crc = zlib.crc32(part, crc)
            output.append(part)
        if not decompressor.finished() and not (entry.method == _LZMA and produced == entry.size):
            raise Stop(images.CORRUPT_ARCHIVE, "its compressed data ends before the end of its stream")
        if produced != entry.size:
            raise Stop(images.CORRUPT_ARCHIVE, f"decompresses to {produced:,} bytes, not the {entry.size:,} its "
                                                "header states")
        if crc != entry.crc:
            raise Stop(images.CORRUPT_ARCHIVE, f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc:08x}): "
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
            raise Stop(images.CORRUPT_ARCHIVE, "its LZMA properties are malformed")
        code, dictionary = self._header[4], struct.unpack_from("<L", self._header, 5)[0]
        if code >= 9 * 5 * 5:
            raise Stop(images.CORRUPT_ARCHIVE, "its LZMA properties are malformed")
        if dictionary > MAX_LZMA_DICTIONARY:
            raise Stop(images.UNSUPPORTED_MEMBER, f"its LZMA dictionary of {dictionary:,} bytes is above "
                                                  f"{MAX_LZMA_DICTIONARY:,} (xz -9 uses 64 MiB)")
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
                raise Stop(images.CORRUPT_ARCHIVE, "data follows the end of its compressed stream")
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
