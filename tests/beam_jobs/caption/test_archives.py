"""Streaming tar and zip reading: every entry of a damaged, odd or hostile archive ends in exactly one event."""
import bz2
import gzip
import io
import lzma
import os
import struct
import tarfile
import urllib.parse
import zipfile
import zlib

import pytest

from beam_jobs import naming
from beam_jobs.caption import archives
from beam_jobs.caption.archives import Limits, MemberData, MemberFailure, MemberSkipped
from schemas import images
from tests.support.builders import tar_bytes


def _tar_bytes(members, fmt=tarfile.GNU_FORMAT, encoding="utf-8"):
    return tar_bytes(members, fmt=fmt, encoding=encoding)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _events(path, **kwargs):
    return list(archives.read_archive(path, **kwargs))


def _summary(events):
    """(uri, class or 'data' or 'skipped:<reason>', data or None) per event, with the archive path cut off."""
    out = []
    for event in events:
        if isinstance(event, MemberData):
            out.append((event.uri, "data", event.data))
        elif isinstance(event, MemberSkipped):
            out.append((event.uri, f"skipped:{event.reason}", None))
        else:
            out.append((event.uri, event.error_class, None))
    return out


def _member(path, name):
    return f"{path}!{name}"


FIVE = [(f"m{i}.jpg", bytes([65 + i]) * (700 + i)) for i in range(5)]


def test_tar_members_stream_with_limits(tmp_path):
    path = _write(tmp_path / "b.tar", _tar_bytes([("d/one.jpg", b"1" * 10), ("d/big.png", b"2" * 100),
                                                  ("d/notes.txt", b"hi"), ("d/inner.tar.gz", b"x")]))
    assert _summary(_events(path, limits=Limits(max_member_bytes=50))) == [
        (_member(path, "d/one.jpg"), "data", b"1" * 10),
        (_member(path, "d/big.png"), images.TOO_LARGE, None),
        (_member(path, "d/notes.txt"), images.NOT_AN_IMAGE, None),
        (_member(path, "d/inner.tar.gz"), images.NOT_AN_IMAGE, None),
    ]
    assert "archive inside an archive" in _events(path)[3].message


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"),
                                          ("w:xz", ".tar.xz")])
def test_every_compression_is_found_from_the_bytes(tmp_path, mode, suffix):
    path = str(tmp_path / f"a{suffix}")
    with tarfile.open(path, mode) as archive:
        for name, data in FIVE:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    misnamed = _write(tmp_path / "misnamed.tar", open(path, "rb").read())  # a .tar that is compressed
    for candidate in (path, misnamed):
        assert _summary(_events(candidate)) == [(_member(candidate, n), "data", d) for n, d in FIVE]


def test_a_bad_header_costs_its_entry_and_the_rest_is_read(tmp_path):
    data = bytearray(_tar_bytes(FIVE))
    third = 2 * (512 + 1024)  # each member: a header block and two data blocks
    data[third + 148:third + 156] = b"0000000\0"  # a wrong checksum
    path = _write(tmp_path / "bad.tar", bytes(data))
    events = _events(path)
    assert _summary(events) == [
        (_member(path, "m0.jpg"), "data", FIVE[0][1]), (_member(path, "m1.jpg"), "data", FIVE[1][1]),
        (_member(path, "#3"), images.CORRUPT_ARCHIVE, None),
        (_member(path, "m3.jpg"), "data", FIVE[3][1]), (_member(path, "m4.jpg"), "data", FIVE[4][1])]
    assert "bad header of entry #3 at byte 3,072" in events[2].message
    assert "bad checksum" in events[2].message and "next valid header at byte 4,608" in events[2].message


def test_two_damaged_regions_and_garbage_at_the_end(tmp_path):
    data = bytearray(_tar_bytes(FIVE))
    for index in (1, 3):
        offset = index * (512 + 1024)
        data[offset:offset + 512] = os.urandom(512)
    data = bytes(data[:-1024]) + os.urandom(700)  # no end marker, trailing junk
    path = _write(tmp_path / "bad.tar", data)
    assert [(uri, kind) for uri, kind, _ in _summary(_events(path))] == [
        (_member(path, "m0.jpg"), "data"), (_member(path, "#2"), images.CORRUPT_ARCHIVE),
        (_member(path, "m2.jpg"), "data"), (_member(path, "#4"), images.CORRUPT_ARCHIVE),
        (_member(path, "m4.jpg"), "data"), (_member(path, "#6"), images.CORRUPT_ARCHIVE)]


def test_non_utf8_names_are_escaped_reversibly(tmp_path):
    raw_name = "caf\u00e9 #1.jpg".encode("latin-1")
    path = _write(tmp_path / "latin.tar", _tar_bytes([("caf\u00e9 #1.jpg", b"abc")], encoding="latin-1"))
    [event] = _events(path)
    assert event.uri == _member(path, "caf%E9 %231.jpg") and event.data == b"abc"
    assert urllib.parse.unquote_to_bytes(event.uri.split("!", 1)[1]) == raw_name
    event.uri.encode("utf-8")


def test_zip_names_that_are_not_utf8_even_with_the_utf8_flag(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("\u00e9\u00e9.jpg", b"data")  # non-ASCII: Python sets the UTF-8 flag
    raw = buffer.getvalue().replace("\u00e9\u00e9".encode("utf-8"), b"\xff\xfe\xfd\x80")
    path = _write(tmp_path / "flag.zip", raw)
    assert _summary(_events(path)) == [(_member(path, "%FF%FE%FD%80.jpg"), "data", b"data")]


def test_long_names_and_pax_headers(tmp_path):
    long_name = "d/" + "x" * 150 + ".jpg"
    unicode_name = "\u65e5\u672c/\u5199\u771f.jpg"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = _write(tmp_path / f"long{fmt}.tar", _tar_bytes([(long_name, b"1"), (unicode_name, b"2")], fmt=fmt))
        assert _summary(_events(path)) == [(_member(path, long_name), "data", b"1"),
                                           (_member(path, unicode_name), "data", b"2")]


def test_links_devices_and_directories(tmp_path):
    def info(name, kind, link=""):
        entry = tarfile.TarInfo(name)
        entry.type, entry.linkname = kind, link
        return entry
    path = _write(tmp_path / "links.tar", _tar_bytes([
        info("dir", tarfile.DIRTYPE), ("dir/a.jpg", b"AAAA"),
        info("dir/hard.jpg", tarfile.LNKTYPE, "dir/a.jpg"), info("dir/soft.jpg", tarfile.SYMTYPE, "a.jpg"),
        info("dir/dev.jpg", tarfile.CHRTYPE), info("dir/fifo.jpg", tarfile.FIFOTYPE),
        info("dir/dangling.jpg", tarfile.LNKTYPE, "dir/nothing.jpg"), ("dir/b.jpg", b"BB"),
        info("dir/etc.jpg", tarfile.LNKTYPE, "/etc/passwd"), info("dir/chain.jpg", tarfile.LNKTYPE, "dir/hard.jpg"),
        info("dir/self.jpg", tarfile.LNKTYPE, "dir/self.jpg"),
    ]))
    assert sorted(_summary(_events(path))) == sorted([
        (_member(path, "dir/a.jpg"), "data", b"AAAA"), (_member(path, "dir/hard.jpg"), "data", b"AAAA"),
        (_member(path, "dir/soft.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "dir/dev.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "dir/fifo.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "dir/dangling.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "dir/b.jpg"), "data", b"BB"),
        (_member(path, "dir/etc.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "dir/chain.jpg"), "data", b"AAAA"),
        (_member(path, "dir/self.jpg"), images.UNSUPPORTED_MEMBER, None),
    ])


def test_a_name_stored_twice_is_read_once(tmp_path):
    path = _write(tmp_path / "twice.tar", _tar_bytes([("a.jpg", b"first"), ("a.jpg", b"second"), ("b.jpg", b"b")]))
    assert _summary(_events(path)) == [(_member(path, "a.jpg"), "data", b"first"),
                                       (_member(path, "a.jpg"), "skipped:duplicate", None),
                                       (_member(path, "b.jpg"), "data", b"b")]


def test_done_members_are_passed_over_without_reading(tmp_path):
    path = _write(tmp_path / "a.tar", _tar_bytes(FIVE))
    assert _summary(_events(path, skip={"m1.jpg", "m3.jpg"})) == [
        (_member(path, "m0.jpg"), "data", FIVE[0][1]), (_member(path, "m1.jpg"), "skipped:done", None),
        (_member(path, "m2.jpg"), "data", FIVE[2][1]), (_member(path, "m3.jpg"), "skipped:done", None),
        (_member(path, "m4.jpg"), "data", FIVE[4][1])]


def test_truncated_archives(tmp_path):
    data = _tar_bytes([("a.jpg", b"a" * 100), ("b.jpg", os.urandom(200_000))])
    path = _write(tmp_path / "t.tar", data[: len(data) // 2])
    events = _events(path)
    assert _summary(events) == [(_member(path, "a.jpg"), "data", b"a" * 100),
                                (_member(path, "b.jpg"), images.CORRUPT_ARCHIVE, None)]
    assert "truncated" in events[1].message
    compressed = gzip.compress(_tar_bytes(FIVE + [("z.png", os.urandom(100_000))]))
    path = _write(tmp_path / "t.tar.gz", compressed[: len(compressed) - 30_000])
    summary = _summary(_events(path))
    assert summary[:5] == [(_member(path, n), "data", d) for n, d in FIVE]
    assert summary[5:] == [(_member(path, "z.png"), images.CORRUPT_ARCHIVE, None)]
    inside_a_skipped_member = _tar_bytes([("notes.txt", os.urandom(50_000))])[:20_000]
    path = _write(tmp_path / "s.tar", inside_a_skipped_member)
    assert _summary(_events(path)) == [(_member(path, "notes.txt"), images.NOT_AN_IMAGE, None),
                                       (path, images.CORRUPT_ARCHIVE, None)]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_a_damaged_compressed_stream_ends_with_one_row(tmp_path, compress):
    data = bytearray(compress(_tar_bytes([(f"m{i}.jpg", os.urandom(30_000)) for i in range(8)])))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path = _write(tmp_path / "d.tar.gz", bytes(data))
    events = _events(path)
    failures = [event for event in events if isinstance(event, MemberFailure)]
    assert len(failures) == 1 and failures[0].error_class == images.CORRUPT_ARCHIVE
    assert len({event.uri for event in events}) == len(events)


@pytest.mark.parametrize("content, error_class", [
    (b"", images.EMPTY_FILE), (bytes(10240), images.EMPTY_FILE), (b"not an archive" * 200, images.CORRUPT_ARCHIVE),
    (b"\x28\xb5\x2f\xfd" + os.urandom(100), images.UNSUPPORTED_FORMAT), (b"\x1f\x8b\x08" + os.urandom(500),
                                                                         images.CORRUPT_ARCHIVE),
])
def test_files_that_are_no_tar_are_one_row(tmp_path, content, error_class):
    path = _write(tmp_path / "x.tar.gz", content)
    assert _summary(_events(path)) == [(path, error_class, None)]


def test_missing_and_unreadable_archives(tmp_path):
    assert _summary(_events(str(tmp_path / "gone.zip"))) == [(str(tmp_path / "gone.zip"), images.MISSING_FILE, None)]
    directory = tmp_path / "dir.tar"
    directory.mkdir()
    assert _summary(_events(str(directory))) == [(str(directory), images.READ_ERROR, None)]


def test_concatenated_tars_are_read_to_the_end(tmp_path):
    path = _write(tmp_path / "cat.tar", _tar_bytes(FIVE[:2]) + _tar_bytes(FIVE[2:]))
    assert _summary(_events(path)) == [(_member(path, n), "data", d) for n, d in FIVE]


def test_pax_sparse_members_are_unsupported_and_the_rest_is_read(tmp_path):
    sparse = tarfile.TarInfo("sparse.jpg")
    sparse.size = 512
    sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "4096"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(sparse, io.BytesIO(b"s" * 512))
        info = tarfile.TarInfo("after.jpg")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    path = _write(tmp_path / "sparse.tar", buffer.getvalue())
    assert _summary(_events(path)) == [(_member(path, "sparse.jpg"), images.UNSUPPORTED_MEMBER, None),
                                       (_member(path, "after.jpg"), "data", b"abc")]


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def _plain_entry(name: str, data: bytes, size: int | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info.tobuf(tarfile.USTAR_FORMAT) + _padded(data)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One "LEN key=value\\n" record, LEN counting its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body)
    while len(body) + len(str(length)) != length:
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _with_a_bad_pax_entry(records: bytes, ustar_size: int | None = None) -> bytes:
    """a.jpg, bad.jpg described by a pax header holding ``records`` (written by hand: tarfile checks its own), b.jpg
    and c.jpg; bad.jpg's ustar size field says ``ustar_size``, by default its true size."""
    extended = tarfile.TarInfo("././@PaxHeader")
    extended.type, extended.size = tarfile.XHDTYPE, len(records)
    return (_plain_entry(*ABC[0]) + extended.tobuf(tarfile.USTAR_FORMAT) + _padded(records)
            + _plain_entry("bad.jpg", b"x" * 700, ustar_size) + b"".join(_plain_entry(*member) for member in ABC[1:])
            + bytes(1024))


ABC = [(f"{letter}.jpg", letter.encode() * (600 + index)) for index, letter in enumerate("abc")]


def _around(path, bad_rows):
    """a.jpg, the rows of the bad entry, then b.jpg and c.jpg: what reading the archive should give."""
    return ([(_member(path, "a.jpg"), "data", ABC[0][1])] + bad_rows
            + [(_member(path, name), "data", data) for name, data in ABC[1:]])


def test_a_pax_size_of_thousands_of_digits_costs_only_its_entry(tmp_path):
    """int() refuses more than 4,300 digits: that must cost the entry, not the rest of the archive."""
    bad = tarfile.TarInfo("bad.jpg")
    bad.size, bad.pax_headers = 700, {"size": "9" * 5000}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for position, (name, data) in enumerate(ABC):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            if position == 0:
                archive.addfile(bad, io.BytesIO(b"x" * 700))
    path = _write(tmp_path / "huge_size.tar", buffer.getvalue())
    events = _events(path)
    assert _summary(events) == _around(path, [(_member(path, "bad.jpg"), images.CORRUPT_ARCHIVE, None)])
    assert "member #2 has a pax size of 5,000 digits" in events[1].message


def test_a_bad_pax_size_with_a_wrong_ustar_size_costs_its_entry_and_its_data(tmp_path):
    """The data is skipped by the ustar size field; when that is wrong too, the next header is damaged and the
    resynchronization finds b.jpg's."""
    path = _write(tmp_path / "wrong_sizes.tar", _with_a_bad_pax_entry(_pax_record(b"size", b"9" * 5000), 0))
    assert _summary(_events(path)) == _around(path, [(_member(path, "bad.jpg"), images.CORRUPT_ARCHIVE, None),
                                                     (_member(path, "#3"), images.CORRUPT_ARCHIVE, None)])


def test_a_pax_record_length_of_thousands_of_digits_costs_only_its_entry(tmp_path):
    path = _write(tmp_path / "huge_length.tar", _with_a_bad_pax_entry(b"9" * 5000 + b" path=bad.jpg\n"))
    events = _events(path)
    assert _summary(events) == _around(path, [(_member(path, "bad.jpg"), images.CORRUPT_ARCHIVE, None)])
    assert "a malformed pax header (malformed pax record length)" in events[1].message


def test_a_header_size_above_any_file_is_a_bad_header(tmp_path):
    """A base-256 size field holds up to 95 bits: 2**70 bytes is damage, not a member to skip to the end."""
    huge = tarfile.TarInfo("huge.jpg")
    huge.size = 2**70
    archive = (_plain_entry(*ABC[0]) + huge.tobuf(tarfile.GNU_FORMAT) + _padded(b"x" * 700)
               + b"".join(_plain_entry(*member) for member in ABC[1:]) + bytes(1024))
    path = _write(tmp_path / "huge_field.tar", archive)
    events = _events(path)
    assert _summary(events) == _around(path, [(_member(path, "#2"), images.CORRUPT_ARCHIVE, None)])
    assert f"a size of {2**70:,} bytes" in events[1].message


# ---------------------------------------------------------------------------------------------------------------
# Zip


def _zip(path, members, **kwargs):
    with zipfile.ZipFile(path, "w", **kwargs) as archive:
        for name, data, method in members:
            archive.writestr(name, data, compress_type=method)
    return str(path)


ZIP_MEMBERS = [("a.jpg", os.urandom(5000), zipfile.ZIP_LZMA), ("b.jpg", b"x" * 10_000, zipfile.ZIP_DEFLATED),
               ("c.jpg", b"y" * 10_000, zipfile.ZIP_BZIP2), ("d.jpg", b"z" * 100, zipfile.ZIP_STORED),
               ("dir/", b"", zipfile.ZIP_STORED), ("notes.md", b"hi", zipfile.ZIP_STORED)]


def test_zip_members_of_every_method(tmp_path):
    path = _zip(tmp_path / "z.zip", ZIP_MEMBERS)
    assert _summary(_events(path)) == [(_member(path, n), "data", d) for n, d, _ in ZIP_MEMBERS[:4]] + [
        (_member(path, "notes.md"), images.NOT_AN_IMAGE, None)]


def _zip_data_offset(path, name):
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = open(path, "rb").read()
    name_length, extra_length = struct.unpack_from("<2H", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


@pytest.mark.parametrize("name", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
def test_a_damaged_zip_member_is_one_row_and_the_others_are_read(tmp_path, name):
    path = _zip(tmp_path / "z.zip", ZIP_MEMBERS)
    offset, size = _zip_data_offset(path, name)
    raw = bytearray(open(path, "rb").read())
    for index in range(offset + size // 3, offset + size // 3 + max(4, size // 4)):
        raw[index] ^= 0x5A
    _write(tmp_path / "z.zip", bytes(raw))
    summary = _summary(_events(path))
    assert (_member(path, name), images.CORRUPT_ARCHIVE, None) in summary
    assert [s for s in summary if s[1] == "data"] == [
        (_member(path, n), "data", d) for n, d, _ in ZIP_MEMBERS[:4] if n != name]


def test_encrypted_unsupported_and_linked_zip_members(tmp_path):
    path = _zip(tmp_path / "odd.zip", [("secret.jpg", b"s" * 100, zipfile.ZIP_STORED),
                                       ("deflate64.jpg", b"d" * 100, zipfile.ZIP_DEFLATED),
                                       ("plain.jpg", b"p" * 100, zipfile.ZIP_STORED)])
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        secret = archive.getinfo("secret.jpg")
        directory_start = archive.start_dir
    for offset in (secret.header_offset + 6,):  # local header flags
        raw[offset] |= 0x1
    central = directory_start
    for _ in range(3):
        name_length, extra_length, comment_length = struct.unpack_from("<3H", raw, central + 28)
        name = bytes(raw[central + 46:central + 46 + name_length])
        if name == b"secret.jpg":
            raw[central + 8] |= 0x1
        if name == b"deflate64.jpg":
            struct.pack_into("<H", raw, central + 10, 9)
        central += 46 + name_length + extra_length + comment_length
    _write(tmp_path / "odd.zip", bytes(raw))
    link = zipfile.ZipInfo("link.jpg")
    link.create_system, link.external_attr = 3, 0o120777 << 16
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(link, b"plain.jpg")
    assert _summary(_events(path)) == [
        (_member(path, "secret.jpg"), images.ENCRYPTED_MEMBER, None),
        (_member(path, "deflate64.jpg"), images.UNSUPPORTED_MEMBER, None),
        (_member(path, "plain.jpg"), "data", b"p" * 100),
        (_member(path, "link.jpg"), images.UNSUPPORTED_MEMBER, None)]


def test_zip64_and_a_self_extracting_stub(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("big.jpg", "w", force_zip64=True) as handle:
            handle.write(b"q" * 1000)
        archive.writestr("small.jpg", b"r" * 10)
    path = _write(tmp_path / "z64.zip", buffer.getvalue())
    assert _summary(_events(path)) == [(_member(path, "big.jpg"), "data", b"q" * 1000),
                                       (_member(path, "small.jpg"), "data", b"r" * 10)]
    stub = _write(tmp_path / "sfx.zip", b"MZ" + os.urandom(3000) + buffer.getvalue())
    assert _summary(_events(stub)) == [(_member(stub, "big.jpg"), "data", b"q" * 1000),
                                       (_member(stub, "small.jpg"), "data", b"r" * 10)]


def test_truncated_and_garbage_zips(tmp_path):
    path = _zip(tmp_path / "z.zip", ZIP_MEMBERS)
    data = open(path, "rb").read()
    truncated = _write(tmp_path / "cut.zip", data[: len(data) // 2])  # ends inside a.jpg, the first member
    assert _summary(_events(truncated)) == [(_member(truncated, "a.jpg"), images.CORRUPT_ARCHIVE, None),
                                            (truncated, images.CORRUPT_ARCHIVE, None)]
    garbage = _write(tmp_path / "junk.zip", os.urandom(3000))
    assert _summary(_events(garbage)) == [(garbage, images.CORRUPT_ARCHIVE, None)]
    empty = _zip(tmp_path / "empty.zip", [])
    assert _summary(_events(empty)) == [(empty, images.EMPTY_FILE, None)]
    damaged_directory = bytearray(data)
    with zipfile.ZipFile(path) as archive:
        second_entry = archive.start_dir + 46 + len("a.jpg")
    damaged_directory[second_entry:second_entry + 4] = b"XXXX"
    damaged = _write(tmp_path / "dir.zip", bytes(damaged_directory))
    assert _summary(_events(damaged)) == [(_member(damaged, "a.jpg"), "data", ZIP_MEMBERS[0][1]),
                                          (damaged, images.CORRUPT_ARCHIVE, None)]


def test_a_header_that_understates_the_size_cannot_inflate_memory(tmp_path):
    path = _zip(tmp_path / "liar.zip", [("a.jpg", b"a" * 100_000, zipfile.ZIP_DEFLATED)])
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        start = archive.start_dir
    struct.pack_into("<L", raw, start + 24, 1000)  # the central directory says 1,000 bytes
    _write(tmp_path / "liar.zip", bytes(raw))
    events = _events(path)
    assert _summary(events) == [(_member(path, "a.jpg"), images.CORRUPT_ARCHIVE, None)]
    assert "more than the 1,000 bytes" in events[0].message


# ---------------------------------------------------------------------------------------------------------------
# Bombs


def test_zip_bomb_members_are_expansion_limit_rows(tmp_path):
    megabytes = 80
    path = _zip(tmp_path / "bomb.zip", [(f"z{i}.jpg", bytes(megabytes << 20), zipfile.ZIP_DEFLATED) for i in range(3)]
                + [("ok.jpg", b"fine", zipfile.ZIP_STORED)])
    limits = Limits(max_member_bytes=100 << 20)
    assert _summary(_events(path, limits=limits)) == [
        (_member(path, f"z{i}.jpg"), images.EXPANSION_LIMIT, None) for i in range(3)] + [
        (_member(path, "ok.jpg"), "data", b"fine")]
    small_total = Limits(max_member_bytes=100 << 20, max_archive_bytes=10, max_ratio=1e9)
    assert [s[1] for s in _summary(_events(path, limits=small_total))] == [images.EXPANSION_LIMIT] * 3 + ["data"]


def test_tar_gz_bomb_stops_with_an_expansion_limit_row(tmp_path):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = _tar_bytes([("a.jpg", b"a")])[:1024]  # a.jpg, then the huge member's header
    info = tarfile.TarInfo("zeros.jpg")
    info.size = 2 << 30  # 2 GiB of zeros: too large to read, and skipping it means inflating it
    chunks = [compressor.compress(header + info.tobuf(format=tarfile.GNU_FORMAT))]
    block = bytes(1 << 20)
    for _ in range(200):  # 200 MiB of zeros compress to ~200 KB
        chunks.append(compressor.compress(block))
    chunks.append(compressor.flush())
    path = _write(tmp_path / "bomb.tar.gz", b"".join(chunks))
    events = _events(path)
    assert _summary(events) == [(_member(path, "a.jpg"), "data", b"a"),
                                (_member(path, "zeros.jpg"), images.TOO_LARGE, None),
                                (path, images.EXPANSION_LIMIT, None)]
    assert "--max_compression_ratio" in events[2].message
    capped = _events(path, limits=Limits(max_archive_bytes=1 << 20))
    assert [s[1] for s in _summary(capped)] == ["data", images.TOO_LARGE, images.EXPANSION_LIMIT]
    assert "--max_archive_bytes" in capped[2].message


def test_a_zip_comment_that_holds_an_end_record_signature(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.jpg", b"aaa")
        archive.comment = b"PK\x05\x06" + b"\xff" * 30  # a decoy end-of-central-directory record
    path = _write(tmp_path / "decoy.zip", buffer.getvalue())
    assert _summary(_events(path)) == [(_member(path, "a.jpg"), "data", b"aaa")]


def test_an_archive_of_directories_only_is_one_row(tmp_path):
    path = _zip(tmp_path / "dirs.zip", [("a/", b"", zipfile.ZIP_STORED), ("a/b/", b"", zipfile.ZIP_STORED)])
    assert _summary(_events(path)) == [(path, images.EMPTY_FILE, None)]
    directory = tarfile.TarInfo("only_a_directory")
    directory.type = tarfile.DIRTYPE
    path = _write(tmp_path / "dirs.tar", _tar_bytes([directory]))
    assert _summary(_events(path)) == [(path, images.EMPTY_FILE, None)]


def _damaged_archives(tmp_path):
    plain = _tar_bytes([(f"m{i}.jpg", os.urandom(3000)) for i in range(6)] + [("notes.txt", os.urandom(3000))])
    bad = bytearray(plain)
    bad[(512 + 3072) * 2 + 148:(512 + 3072) * 2 + 156] = b"0000000\0"
    return {"cut.tar": plain[:9000], "cut_in_notes.tar": plain[:len(plain) - 2000],
            "cut.tar.gz": gzip.compress(plain)[:-3000], "bad.tar": bytes(bad),
            "damaged.tar.gz": bytes(bytearray(gzip.compress(plain))[:9000]) + os.urandom(400) +
            gzip.compress(plain)[9400:], "cut.zip": open(_zip(tmp_path / "z.zip", ZIP_MEMBERS), "rb").read()[:-60]}


def test_a_rerun_over_a_damaged_archive_reports_nothing_new(tmp_path):
    """Everything a first reading reported, passed as done, leaves a second reading with nothing to report."""
    for name, data in _damaged_archives(tmp_path).items():
        path = _write(tmp_path / name, data)
        first = _events(path)
        prefix = path + "!"
        done = {event.uri[len(prefix):] if event.uri.startswith(prefix) else "" for event in first}
        second = [event for event in _events(path, skip=done) if not isinstance(event, MemberSkipped)]
        assert all(event.uri in {e.uri for e in first} for event in second), (name, second)


class _Unseekable(io.RawIOBase):
    """Where zipfile writes members with data descriptors (no sizes in their local headers), as streaming tools do."""

    def __init__(self):
        super().__init__()
        self.buffer = io.BytesIO()

    def writable(self):
        return True

    def write(self, data):
        return self.buffer.write(data)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_a_truncated_zip_keeps_the_members_that_arrived(tmp_path, method, streamed):
    members = [(f"p{i}.jpg", os.urandom(5000)) for i in range(4)]
    target = _Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(target, "w", compression=method) as archive:
        for name, data in members:
            with archive.open(name, "w") as handle:
                handle.write(data)
    data = (target.buffer if streamed else target).getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        third = archive.getinfo("p2.jpg").header_offset
    path = _write(tmp_path / "cut.zip", data[:third + 100])  # ends inside p2.jpg
    events = _events(path)
    assert _summary(events) == [(_member(path, "p0.jpg"), "data", members[0][1]),
                                (_member(path, "p1.jpg"), "data", members[1][1]),
                                (_member(path, "p2.jpg"), images.CORRUPT_ARCHIVE, None),
                                (path, images.CORRUPT_ARCHIVE, None)]
    assert "2 whole members" in events[-1].message
    whole = _write(tmp_path / "whole.zip", data)
    assert _summary(_events(whole)) == [(_member(whole, n), "data", d) for n, d in members]


# ---------------------------------------------------------------------------------------------------------------
# Found by review: each once broke an exactly-once guarantee or the memory bound


def test_an_empty_member_name_is_not_the_archive_itself(tmp_path):
    data = _tar_bytes([("", b"no name"), ("p0.jpg", b"0" * 600), ("p1.jpg", os.urandom(30_000))])
    path = _write(tmp_path / "e.tar.gz", gzip.compress(data)[:-8000])  # the compressed stream ends inside p1.jpg
    assert _summary(_events(path)) == [(_member(path, ""), images.NOT_AN_IMAGE, None),
                                       (_member(path, "p0.jpg"), "data", b"0" * 600),
                                       (_member(path, "p1.jpg"), images.CORRUPT_ARCHIVE, None)]
    first = _events(path)  # and a rerun that passes over what was reported adds nothing
    done = {event.uri[len(path) + 1:] if event.uri != path else naming.ITSELF for event in first}
    assert all(isinstance(event, MemberSkipped) for event in _events(path, skip=done))


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.LNKTYPE])
def test_damage_right_after_an_entry_without_data_is_the_archives(tmp_path, kind):
    entry = tarfile.TarInfo("d.jpg")
    entry.type, entry.linkname = kind, "p0.jpg"
    data = _tar_bytes([("p0.jpg", b"0" * 600), entry] + [(f"q{i}.jpg", os.urandom(5000)) for i in range(4)])
    compressed = gzip.compress(data)
    path = _write(tmp_path / "t.tar.gz", compressed[:len(compressed) // 5])  # ends just after d.jpg
    summary = _summary(_events(path))
    uris = [uri for uri, _, _ in summary]
    assert len(uris) == len(set(uris))
    assert summary[0] == (_member(path, "p0.jpg"), "data", b"0" * 600)
    rows_of_d = [kind for uri, kind, _ in summary if uri == _member(path, "d.jpg")]
    assert rows_of_d == ([] if kind == tarfile.DIRTYPE else [images.UNSUPPORTED_MEMBER])
    assert any(kind == images.CORRUPT_ARCHIVE for _, kind, _ in summary)


def test_a_zip_stored_in_a_truncated_zip_is_not_taken_for_it(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("q0.jpg", b"inner")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("p0.jpg", b"outer")
        archive.writestr("inner.zip", inner.getvalue())  # stored: its end record is in the outer file as is
    data = outer.getvalue()
    path = _write(tmp_path / "outer.zip", data[:data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06")) - 40])
    assert _summary(_events(path))[:2] == [(_member(path, "p0.jpg"), "data", b"outer"),
                                           (_member(path, "inner.zip"), images.NOT_AN_IMAGE, None)]
    assert all("q0.jpg" not in uri for uri, _, _ in _summary(_events(path)))


def test_an_end_record_that_understates_the_count_loses_nothing(tmp_path):
    data = bytearray(open(_zip(tmp_path / "z.zip", ZIP_MEMBERS), "rb").read())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)  # says 1 entry (as a count past 65,535 wraps without zip64)
    path = _write(tmp_path / "z.zip", bytes(data))
    assert [uri for uri, kind, _ in _summary(_events(path)) if kind == "data"] == [
        _member(path, name) for name, _, _ in ZIP_MEMBERS[:4]]


def test_a_streamed_bomb_in_a_truncated_zip_is_measured_without_keeping_it(tmp_path):
    target = _Unseekable()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_BZIP2) as archive:
        with archive.open("zeros.jpg", "w") as handle:
            for _ in range(8):
                handle.write(bytes(1 << 20))
        with archive.open("after.jpg", "w") as handle:
            handle.write(b"x")
    data = target.buffer.getvalue()
    path = _write(tmp_path / "bomb.zip", data[:data.find(b"PK\x01\x02")])  # no central directory
    events = _summary(_events(path, limits=Limits(max_archive_bytes=1 << 20)))
    assert events == [(_member(path, "zeros.jpg"), images.EXPANSION_LIMIT, None), (path, images.CORRUPT_ARCHIVE, None)]


def test_an_unexpected_exception_on_one_zip_member_costs_only_that_member(tmp_path, monkeypatch):
    from beam_jobs.caption.archives import zip_format
    path = _zip(tmp_path / "z.zip", ZIP_MEMBERS)
    original = zip_format.Decompressor.decompress

    def decompress(self, data, max_length):
        if self._method == zipfile.ZIP_BZIP2:
            raise MemoryError("cannot allocate")
        return original(self, data, max_length)
    monkeypatch.setattr(zip_format.Decompressor, "decompress", decompress)
    summary = _summary(_events(path))
    assert (_member(path, "c.jpg"), images.INTERNAL_ERROR, None) in summary
    data_uris = [uri for uri, kind, _ in summary if kind == "data"]
    assert data_uris == [_member(path, n) for n in ("a.jpg", "b.jpg", "d.jpg")]


def test_a_tar_whose_first_name_looks_like_a_compression_signature(tmp_path):
    for name in ("BZh91AY&SY.jpg", "\x1f\x8b.jpg", "PK\x03\x04.jpg"):
        path = _write(tmp_path / "odd.zip", _tar_bytes([(name, b"x" * 100)]))
        assert _summary(_events(path)) == [(_member(path, naming.escape_member_name(name)), "data", b"x" * 100)]


def test_xz_padding_trailing_data_and_a_dictionary_too_large(tmp_path):
    first, second = _tar_bytes([("a.jpg", b"a" * 100)]), _tar_bytes([("b.jpg", b"b" * 100)])
    padded = _write(tmp_path / "padded.tar.xz", lzma.compress(first[:-1024]) + bytes(8) + lzma.compress(second))
    assert _summary(_events(padded)) == [(_member(padded, "a.jpg"), "data", b"a" * 100),
                                         (_member(padded, "b.jpg"), "data", b"b" * 100)]
    trailing = _write(tmp_path / "trailing.tar.xz", lzma.compress(first) + b"not xz")
    assert _summary(_events(trailing)) == [(_member(trailing, "a.jpg"), "data", b"a" * 100)]
    huge = _write(tmp_path / "huge.tar.xz", lzma.compress(first, filters=[
        {"id": lzma.FILTER_LZMA2, "dict_size": 1536 << 20}]))
    assert _summary(_events(huge)) == [(huge, images.UNSUPPORTED_FORMAT, None)]
