"""Reading archives and list files as streams: member URIs, limits, damaged archives."""
import io
import os
import tarfile
import zipfile

import pytest

from beam_jobs import sources
from schemas import images


def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("name, kind", [
    ("a/b/photo.JPG", sources.IMAGE), ("x.webp", sources.IMAGE), ("batch.tar.gz", sources.ARCHIVE),
    ("batch.tgz", sources.ARCHIVE), ("b.zip", sources.ARCHIVE), ("list.txt", sources.LIST),
    ("notes.md", sources.OTHER), ("gs://bucket/dir/img.png", sources.IMAGE),
])
def test_kind_by_name(name, kind):
    assert sources.kind_of(name) == kind


def test_member_uris_split_back():
    uri = sources.member_uri("gs://b/batch.tar.gz", "dir/a!b.jpg")
    assert uri == "gs://b/batch.tar.gz!dir/a!b.jpg"
    assert sources.split_member_uri(uri) == ("gs://b/batch.tar.gz", "dir/a!b.jpg")
    assert sources.split_member_uri("/photos/wow!.jpg") == ("/photos/wow!.jpg", None)


def test_tar_members_stream_with_limits(tmp_path):
    path = _tar(tmp_path / "b.tar.gz", {"d/one.jpg": b"1" * 10, "d/big.png": b"2" * 100, "d/notes.txt": b"hi"})
    items = list(sources.iter_archive(path, max_member_bytes=50))
    assert items[0] == ("image", f"{path}!d/one.jpg", b"1" * 10)
    assert items[1][:3] == ("error", f"{path}!d/big.png", images.TOO_LARGE)
    assert items[2][:3] == ("error", f"{path}!d/notes.txt", images.NOT_AN_IMAGE)


def test_zip_members_and_bomb_limit(tmp_path):
    path = _zip(tmp_path / "b.zip", {"a.jpg": b"x" * 10, "nested/b.jpg": b"y" * 1000, "dir/": b""})
    items = list(sources.iter_archive(path, max_member_bytes=100))
    assert items[0] == ("image", f"{path}!a.jpg", b"x" * 10)
    assert items[1][:3] == ("error", f"{path}!nested/b.jpg", images.TOO_LARGE)
    assert len(items) == 2


def test_truncated_tar_keeps_the_members_before_the_damage(tmp_path):
    big = os.urandom(200_000)
    path = _tar(tmp_path / "t.tar", {"a.jpg": b"a" * 100, "b.jpg": big}, mode="w")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    items = list(sources.iter_archive(path))
    assert items[0] == ("image", f"{path}!a.jpg", b"a" * 100)
    assert items[-1][:3] == ("error", path, images.CORRUPT_ARCHIVE)
    assert "after 1 members" in items[-1][3]


@pytest.mark.parametrize("name", ["junk.tar.gz", "junk.zip", "junk.tar"])
def test_garbage_archives_are_corrupt(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an archive at all" * 50)
    items = list(sources.iter_archive(str(path)))
    assert [item[:3] for item in items] == [("error", str(path), images.CORRUPT_ARCHIVE)]


def test_missing_archive(tmp_path):
    items = list(sources.iter_archive(str(tmp_path / "gone.zip")))
    assert [item[2] for item in items] == [images.MISSING_FILE]


def test_read_member(tmp_path):
    path = _tar(tmp_path / "b.tar", {"x/y.jpg": b"payload"}, mode="w")
    assert sources.read_member(f"{path}!x/y.jpg") == b"payload"
    with pytest.raises(FileNotFoundError):
        sources.read_member(f"{path}!x/missing.jpg")


def test_list_lines_resolve_relative_to_the_list():
    assert sources.resolve_listed("/data/lists/l.txt", "  img/a.jpg \n") == "/data/lists/img/a.jpg"
    assert sources.resolve_listed("gs://b/l.txt", "gs://c/a.jpg") == "gs://c/a.jpg"
    assert sources.resolve_listed("/l.txt", "# comment") is None
    assert sources.resolve_listed("/l.txt", "   ") is None
