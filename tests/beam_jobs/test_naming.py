"""Input names and URIs: kinds, escaped member names, normalization, list lines, reading with limits."""
import os
import urllib.parse

import pytest

from beam_jobs import naming
from schemas import fileio


@pytest.mark.parametrize("name, kind", [
    ("a/b/photo.JPG", naming.IMAGE), ("x.webp", naming.IMAGE), ("batch.tar.gz", naming.ARCHIVE),
    ("batch.tgz", naming.ARCHIVE), ("b.zip", naming.ARCHIVE), ("b.tar.xz", naming.ARCHIVE),
    ("list.txt", naming.LIST), ("notes.md", naming.OTHER), ("gs://bucket/dir/img.png", naming.IMAGE),
    ("photo.jpg.exe", naming.OTHER), ("", naming.OTHER),
])
def test_kind_by_name(name, kind):
    assert naming.kind_of(name) == kind


def test_member_uris_split_back():
    uri = naming.member_uri("gs://b/batch.tar.gz", "dir/a!b.jpg")
    assert uri == "gs://b/batch.tar.gz!dir/a!b.jpg"
    assert naming.split_member_uri(uri) == ("gs://b/batch.tar.gz", "dir/a!b.jpg")
    assert naming.split_member_uri("/photos/wow!.jpg") == ("/photos/wow!.jpg", None)
    assert naming.split_member_uri("/a/b.tar!#3") == ("/a/b.tar", "#3")


@pytest.mark.parametrize("raw", [
    b"plain/name.jpg", "caf\u00e9.jpg".encode("latin-1"), "caf\u00e9.jpg".encode("utf-8"), b"100%.jpg",
    b"%41.jpg", b"#1.jpg", b"tab\there\n.jpg", b"\xff\xfe\x00.jpg", "\u65e5\u672c.jpg".encode("shift_jis"),
    "\u0085 c1 control.jpg".encode("utf-8"), b"",
])
def test_member_names_are_text_and_reversible(raw):
    escaped = naming.escape_member_name(raw)
    escaped.encode("utf-8")  # valid text: no surrogates
    assert escaped.isprintable() or not escaped
    assert "#" not in escaped  # so that ARCHIVE!#N positions can never be a member's name
    assert urllib.parse.unquote_to_bytes(escaped) == raw
    assert naming.unescape_member_name(escaped) == raw


def test_valid_names_stay_readable():
    name = "photos/\u00e9t\u00e9 2024/IMG_0001.JPG"
    assert naming.escape_member_name(name) == name
    assert naming.escape_member_name(b"caf\xe9.jpg") == "caf%E9.jpg"


def test_position_uris_cannot_be_member_uris():
    assert naming.position_uri("a.tar", 3) == "a.tar!#3"
    assert naming.member_uri("a.tar", "#3") == "a.tar!%233"


def test_paths_that_are_not_utf8_become_file_uris_that_no_other_path_can_be():
    path = b"/data/caf\xe9 100%.jpg".decode("utf-8", "surrogateescape")
    uri = naming.text_path(path)
    assert uri == "file:///data/caf%E9%20100%25.jpg"
    assert fileio.path_of(uri) == path and fileio.path_of("/data/x.jpg") == "/data/x.jpg"
    assert naming.text_path("/data/caf%E9 100%.jpg") == "/data/caf%E9 100%.jpg"  # a UTF-8 path is itself


def test_every_way_to_read_a_member_uri():
    assert naming.member_splits("/d/a.tar!b.tar!c.jpg") == [("/d/a.tar", "b.tar!c.jpg"), ("/d/a.tar!b.tar", "c.jpg")]
    assert naming.member_splits("/d/x!y.jpg") == []
    assert naming.canonical_member("caf%e9.jpg") == naming.canonical_member("caf%E9.jpg") == "caf%E9.jpg"
    assert naming.canonical_member("#12") == "#12" and naming.canonical_member("#x") == "%23x"


@pytest.mark.parametrize("uri, normalized", [
    ("/data/a/../b.jpg", "/data/b.jpg"), ("/data/./b.jpg", "/data/b.jpg"), ("//data//b.jpg", "/data/b.jpg"),
    ("gs://bucket/a/../b.jpg", "gs://bucket/b.jpg"), ("gs://bucket//x/./y.jpg", "gs://bucket/x/y.jpg"),
    ("s3://bucket/../../b.jpg", "s3://bucket/b.jpg"), ("rel/./b.jpg", "rel/b.jpg"),
])
def test_uris_are_normalized(uri, normalized):
    assert naming.normalize_uri(uri) == normalized


def test_list_lines_resolve_relative_to_the_list():
    assert naming.resolve_listed("/data/lists/l.txt", "  img/a.jpg \n") == "/data/lists/img/a.jpg"
    assert naming.resolve_listed("/data/lists/l.txt", "../img/./a.jpg") == "/data/img/a.jpg"
    assert naming.resolve_listed("/data/lists/l.txt", "../lists/b.jpg") == \
        naming.resolve_listed("/data/lists/l.txt", "b.jpg")
    assert naming.resolve_listed("gs://b/l.txt", "gs://c/x/../a.jpg") == "gs://c/a.jpg"
    assert naming.resolve_listed("/l.txt", "# comment") is None
    assert naming.resolve_listed("/l.txt", "   ") is None
    assert naming.resolve_listed("/data/l.txt", "sub/../t.tar!../x/./y.jpg") == "/data/t.tar!../x/./y.jpg"


def test_glob_characters_are_found():
    assert naming.has_glob_characters("out/cap*") and naming.has_glob_characters("out/[ab]")
    assert not naming.has_glob_characters("gs://bucket/out/captions")


def test_reading_with_a_limit_and_refusing_non_files(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    assert fileio.read_bytes(str(path), 100) == b"x" * 100
    with pytest.raises(fileio.FileTooLarge):
        fileio.read_bytes(str(path), 99)
    with pytest.raises(fileio.NotARegularFile, match="a directory"):
        fileio.read_bytes(str(tmp_path))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(fileio.NotARegularFile, match="a FIFO"):  # opening it would block forever
        fileio.read_bytes(str(fifo))
    with pytest.raises(FileNotFoundError):
        fileio.read_bytes(str(tmp_path / "gone.jpg"))
