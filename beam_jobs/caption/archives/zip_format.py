"""The zip format: record layouts, end-record search, zip64 sizes and the member decompressors (store, deflate,
bzip2, LZMA) behind one interface whose output is capped per call."""
import bz2
import lzma
import struct
import typing
import zlib

from beam_jobs.caption.archives.common import MAX_LZMA_DICTIONARY, Stop
from schemas import images

EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
EOCD64_LOCATOR = struct.Struct("<4sLQL")
EOCD64 = struct.Struct("<4sQ2H2L4Q")
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
LOCAL = struct.Struct("<4s2B4HL2L2H")
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64", 10: "PKWARE Implode", 18: "IBM TERSE", 19: "LZ77",
                 93: "Zstandard", 95: "XZ", 96: "JPEG variant", 97: "WavPack", 98: "PPMd", 99: "AES encryption"}
UNIX_TYPES = {0o120000: "a symbolic link", 0o020000: "a character device", 0o060000: "a block device",
               0o010000: "a FIFO", 0o140000: "a socket", 0o040000: None}  # None: a directory (no row)


class ZipEntry(typing.NamedTuple):
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


def end_record_index(tail: bytes) -> int:
    """The end-of-central-directory record in the file's tail: the last candidate whose comment length reaches
    exactly the end of the file (a comment may itself hold the signature), else the last candidate that fits."""
    fallback, index = -1, tail.rfind(b"PK\x05\x06")
    while index >= 0:
        if len(tail) - index >= EOCD.size:
            if fallback < 0:
                fallback = index
            if index + EOCD.size + EOCD.unpack_from(tail, index)[7] == len(tail):
                return index
        index = tail.rfind(b"PK\x05\x06", 0, index)
    return fallback


def zip64_sizes(extra: bytes, compressed: int, size: int, offset: int) -> tuple[int, int, int]:
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


class Decompressor:
    """One zip compression method behind decompress(data, max_length) / has_more() / finished()."""

    def __init__(self, method: int):
        self._method = method
        self._engine = {DEFLATED: lambda: zlib.decompressobj(-15), BZIP2: bz2.BZ2Decompressor,
                        STORED: lambda: None, LZMA: lambda: None}[method]()
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
        if self._method == STORED:
            data = self._pending + data
            self._pending = data[max_length:]
            return data[:max_length]
        if self._method == LZMA and self._engine is None:
            data = self._start_lzma(data)
            if self._engine is None:
                return b""
        if self._method == DEFLATED:
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
        if self._method in (STORED, DEFLATED):
            return bool(self._pending)
        return self._engine is not None and not self._engine.eof and not self._engine.needs_input

    def finished(self) -> bool:
        if self._method == STORED:
            return True
        return self._engine is not None and self._engine.eof
