"""Zip archives read from their central directory (streamed in chunks), each member decompressed with its size
and CRC-32 checked and its output capped; a zip without its directory is read from its local headers."""
import bz2
import io
import struct
import zlib
from typing import Iterator

from beam_jobs import naming
from beam_jobs.caption.archives.common import (
    CHUNK,
    MAX_SAMPLE_FIELD_BYTES,
    RATIO_FLOOR_BYTES,
    SKIPPED_UNWANTED,
    STREAM_ERRORS,
    ZIP_SPAN,
    Event,
    Limits,
    MemberData,
    MemberFailure,
    MemberSpan,
    MemberText,
    Stop,
    Truncated,
    is_image_name,
    is_sample_field_name,
    not_an_image_message,
    passed_over,
    too_large_message,
)
from beam_jobs.caption.archives.zip_format import (
    BZIP2,
    CENTRAL,
    DEFLATED,
    EOCD,
    EOCD64,
    EOCD64_LOCATOR,
    LOCAL,
    LZMA,
    METHOD_NAMES,
    STORED,
    UNIX_TYPES,
    Decompressor,
    ZipEntry,
    end_record_index,
    zip64_sizes,
)
from schemas import images
from schemas.images import describe_error


class ZipReader:
    """Reads a zip from its central directory (streamed in chunks), each member by seeking to its data.

    ``index``: image members are `MemberSpan`s (where their data is, for `read_zip_member` later) instead of their
    bytes; the archive's expansion limits are then checked on the sizes the directory states, and each member's
    read checks its own (no more than its stated size, its CRC-32); small members that may describe a sample are
    `MemberText`."""

    def __init__(self, uri: str, stream, skip, only, limits: Limits, index: bool = False):
        self._uri, self._stream, self._skip, self._only, self._limits = uri, stream, skip, only, limits
        self._index = index
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
            while offset + LOCAL.size <= self._size:
                self._stream.seek(offset)
                header = self._stream.read(LOCAL.size)
                if header[:4] != b"PK\x03\x04":
                    break  # the central directory's start, or damage
                fields = LOCAL.unpack(header)
                flags, method, name_length, extra_length = fields[3], fields[4], fields[10], fields[11]
                name = self._stream.read(name_length)
                extra = self._stream.read(extra_length)
                if len(name) < name_length or len(extra) < extra_length:
                    raise Truncated()
                compressed, size, _ = zip64_sizes(extra, fields[8], fields[9], 0)
                crc = fields[7]
                data_start = offset + LOCAL.size + name_length + extra_length
                position += 1
                following = None
                member = naming.escape_member_name(name)
                truncated = MemberFailure(f"{self._uri}!{member}", images.CORRUPT_ARCHIVE,
                                          f"member #{position} is truncated: the file ends inside its data")
                reported = (member in self._skip or member in seen
                            or (self._only is not None and member not in self._only))
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
                entry = ZipEntry(position=position, name=name, flags=flags, method=method, crc=crc,
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
        if method == DEFLATED:
            engine = zlib.decompressobj(-15)
        elif method == BZIP2:
            engine = bz2.BZ2Decompressor()
        elif method == STORED:
            return self._measure_stored(data_start, position)
        else:
            raise Stop(images.CORRUPT_ARCHIVE, f"member #{position} has no sizes in its local header and its method "
                                               f"({method}) does not mark its end; nothing after it can be found")
        self._stream.seek(data_start)
        consumed = produced = crc = 0
        while not engine.eof:
            if method == DEFLATED and engine.unconsumed_tail:
                part = engine.decompress(engine.unconsumed_tail, CHUNK)
            elif method == BZIP2 and not engine.needs_input:
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
        tail_length = min(self._size, EOCD.size + 0xFFFF)
        self._stream.seek(self._size - tail_length)
        tail = self._stream.read(tail_length)
        index = end_record_index(tail)
        if index < 0:
            raise Stop(images.CORRUPT_ARCHIVE, "no zip end-of-central-directory record: not a zip archive, or a "
                                                "truncated one (e.g. an incomplete download)")
        eocd_offset = self._size - tail_length + index
        (_, disk, cd_disk, _, count, length, start, _) = EOCD.unpack_from(tail, index)
        if disk or cd_disk:
            raise Stop(images.UNSUPPORTED_FORMAT, "a multi-disk (split) zip archive is not supported")
        if (count == 0xFFFF or length == 0xFFFFFFFF or start == 0xFFFFFFFF) and index >= EOCD64_LOCATOR.size:
            locator = EOCD64_LOCATOR.unpack_from(tail, index - EOCD64_LOCATOR.size)
            if locator[0] == b"PK\x06\x07":
                self._stream.seek(locator[2])
                record = self._stream.read(EOCD64.size)
                if len(record) == EOCD64.size and record[:4] == b"PK\x06\x06":
                    fields = EOCD64.unpack(record)
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

    def _central_directory(self, count: int, start: int, length: int, shift: int) -> Iterator[ZipEntry]:
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
            relative = ensure(CENTRAL.size, position)
            fields = CENTRAL.unpack_from(buffer, relative)
            if fields[0] != b"PK\x01\x02":
                raise Stop(images.CORRUPT_ARCHIVE, f"the central directory is damaged at entry #{position} "
                                                    f"(byte {cursor:,})")
            name_length, extra_length, comment_length = fields[12], fields[13], fields[14]
            record_length = CENTRAL.size + name_length + extra_length + comment_length
            relative = ensure(record_length, position)
            name_start = relative + CENTRAL.size
            name = buffer[name_start:name_start + name_length]
            extra = buffer[name_start + name_length:name_start + name_length + extra_length]
            compressed, size, offset = zip64_sizes(extra, fields[10], fields[11], fields[18])
            yield ZipEntry(position=position, name=name, flags=fields[5], method=fields[6], crc=fields[9],
                            compressed_size=compressed, size=size, header_offset=offset + shift,
                            creator=fields[2], external=fields[17])
            cursor += record_length
        if position == 0:
            raise Stop(images.CORRUPT_ARCHIVE, f"the end record states {count:,} entries but a central directory of "
                                                "0 bytes")

    def _entry_event(self, entry: ZipEntry, seen: set) -> Event | None:
        member = naming.escape_member_name(entry.name)
        uri = f"{self._uri}!{member}"
        where = f"member #{entry.position}"
        if entry.name.endswith(b"/") and entry.size == 0:
            return None
        unix_type = (entry.external >> 16) & 0o170000 if entry.creator == 3 else 0
        if unix_type == 0o040000:
            return None
        skipped = passed_over(uri, member, self._skip, self._only, seen)
        sample_field = (self._index and not unix_type and not entry.flags & 0x1 and entry.size <= MAX_SAMPLE_FIELD_BYTES
                        and entry.method in (STORED, DEFLATED, BZIP2, LZMA) and is_sample_field_name(entry.name))
        if skipped and not (sample_field and skipped.reason == SKIPPED_UNWANTED):
            return skipped
        if not is_image_name(entry.name):
            if sample_field:  # unwanted (not listed) too: maybe a field of a listed image's sample
                try:
                    return MemberText(uri, entry.position, self._read_member(entry))
                except (Stop, Truncated, *STREAM_ERRORS):
                    pass  # a sample's field that cannot be read: the member is reported as what it is
            return skipped or MemberFailure(uri, images.NOT_AN_IMAGE, not_an_image_message(entry.name))
        if unix_type in UNIX_TYPES:
            return MemberFailure(uri, images.UNSUPPORTED_MEMBER, f"{where} is {UNIX_TYPES[unix_type]}, not a file; "
                                                                 "not followed")
        if entry.flags & 0x1 or entry.method == 99:
            return MemberFailure(uri, images.ENCRYPTED_MEMBER, f"{where} is encrypted; decrypt the archive first")
        if entry.method not in (STORED, DEFLATED, BZIP2, LZMA):
            method = METHOD_NAMES.get(entry.method, "unknown")
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
        if self._index:
            # the archive's expansion, judged on the sizes its directory states (each member's read checks that it
            # gives no more than that): a directory whose entries all point at one big member is a bomb too
            if self._produced + entry.size > RATIO_FLOOR_BYTES and \
                    self._produced + entry.size > self._limits.max_ratio * max(self._size, 1):
                return MemberFailure(uri, images.EXPANSION_LIMIT,
                                     f"{where} would take the archive past {self._limits.max_ratio:g} times its "
                                     f"{self._size:,} bytes (--max_compression_ratio)")
            self._produced += entry.size
            return MemberSpan(uri, entry.position, ZIP_SPAN, entry.header_offset, entry.size,
                              stored_size=entry.compressed_size, method=entry.method, crc=entry.crc)
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

    def _read_member(self, entry: ZipEntry) -> bytes:
        data, self._produced = read_zip_member(self._stream, self._size, entry.header_offset, entry.compressed_size,
                                               entry.size, entry.method, entry.crc, self._limits, self._produced)
        return data


def read_zip_member(stream, file_size: int, header_offset: int, compressed_size: int, size: int, method: int,
                    expected_crc: int, limits: Limits, produced: int = 0) -> tuple[bytes, int]:
    """(the bytes of the zip member whose local header is at ``header_offset``, the archive's decompressed bytes so
    far: ``produced`` plus this member's), decompressed with its stated size and CRC-32 checked and the archive's
    expansion limit applied; raises `Stop`, `Truncated` or a decompressor's error. ``file_size``: the archive's."""
    stream.seek(header_offset)
    header = stream.read(LOCAL.size)
    if len(header) < LOCAL.size or header[:4] != b"PK\x03\x04":
        raise Stop(images.CORRUPT_ARCHIVE, f"no local header at byte {header_offset:,}")
    fields = LOCAL.unpack(header)
    data_start = header_offset + LOCAL.size + fields[10] + fields[11]
    if data_start + compressed_size > file_size:
        raise Stop(images.CORRUPT_ARCHIVE, f"its data runs past the end of the file ({file_size:,} bytes): "
                                            "a truncated archive")
    stream.seek(data_start)
    decompressor = Decompressor(method)
    output, made, crc = [], 0, 0
    left = compressed_size
    while left > 0 or decompressor.has_more():
        chunk = b""
        if left > 0 and not decompressor.has_more():
            chunk = stream.read(min(left, CHUNK))
            if not chunk:
                raise Truncated()
            left -= len(chunk)
        # never more than one byte past what the directory states: a lying header cannot inflate memory
        part = decompressor.decompress(chunk, size + 1 - made)
        made += len(part)
        produced += len(part)
        if made > size:
            raise Stop(images.CORRUPT_ARCHIVE, f"decompresses to more than the {size:,} bytes its header "
                                                "states (a damaged archive or a zip bomb)")
        if produced > RATIO_FLOOR_BYTES and produced > limits.max_ratio * max(file_size, 1):
            raise Stop(images.EXPANSION_LIMIT,
                        f"the archive expands more than {limits.max_ratio:g} times its {file_size:,} "
                        "bytes (--max_compression_ratio)")
        crc = zlib.crc32(part, crc)
        output.append(part)
    if not decompressor.finished() and not (method == LZMA and made == size):
        raise Stop(images.CORRUPT_ARCHIVE, "its compressed data ends before the end of its stream")
    if made != size:
        raise Stop(images.CORRUPT_ARCHIVE, f"decompresses to {made:,} bytes, not the {size:,} its header states")
    if crc != expected_crc:
        raise Stop(images.CORRUPT_ARCHIVE, f"CRC-32 mismatch (stored {expected_crc:08x}, computed {crc:08x}): "
                                            "the member's data is damaged")
    return b"".join(output), produced
