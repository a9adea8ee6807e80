"""How the caption job lists its inputs: symbolic links inside an input folder (followed by no scan, so that links
that loop cannot hang the job; each link to a directory is one row) and the lines of list files (every line end,
read in one pass with bounded memory)."""
import codecs
import collections
import io
import os
import shutil
import subprocess
import sys
import tracemalloc

import pytest

from beam_jobs import naming
from beam_jobs.caption import inputs
from beam_jobs.caption import job as caption_job
from beam_jobs.elements import ERRORS
from schemas import fileio, images, tables
from tests.conftest import REPO_ROOT, local_test_pipeline
from tests.support.builders import argv, check_every_input_once, read_outputs
from tests.support.fakes import FAKE_MODELS

JOB_TIMEOUT_S = 60  # the job takes seconds; before the fix it was still listing two loops after 120 s


def _photos(sample_dataset):
    directory = os.path.join(sample_dataset, "Flicker8k_Dataset")
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory))]


@pytest.fixture
def linked_folder(tmp_path, sample_dataset):
    """An input folder with links of every kind, and a folder outside it that one of them points to.

    in/a.jpg, in/sub/b.jpg           photos
    in/loop -> .                     a link to a directory that holds it
    in/elsewhere -> ../outside       a link to a directory outside the input (outside/c.jpg)
    in/linked.jpg -> ../outside/c.jpg  a link to a file
    in/dangling.jpg -> nowhere.jpg   a link to nothing
    in/album.tar/                    a directory named like an archive
    """
    photos = _photos(sample_dataset)
    folder, outside = tmp_path / "in", tmp_path / "outside"
    os.makedirs(folder / "sub")
    os.makedirs(outside)
    os.makedirs(folder / "album.tar")
    shutil.copy(photos[0], folder / "a.jpg")
    shutil.copy(photos[1], folder / "sub" / "b.jpg")
    shutil.copy(photos[2], outside / "c.jpg")
    os.symlink(".", folder / "loop")
    os.symlink("../outside", folder / "elsewhere")
    os.symlink("../outside/c.jpg", folder / "linked.jpg")
    os.symlink("nowhere.jpg", folder / "dangling.jpg")
    return str(folder)


def test_links_that_loop_do_not_hang_the_job(tmp_path, fake_bundle, sample_dataset):
    photos = _photos(sample_dataset)
    folder = tmp_path / "in"
    os.makedirs(folder / "sub")
    shutil.copy(photos[0], folder / "a.jpg")
    shutil.copy(photos[1], folder / "sub" / "b.jpg")
    os.symlink(".", folder / "l1")  # two loops: a scan that follows them lists 2**depth paths
    os.symlink(".", folder / "l2")
    in_folder = {str(folder / "a.jpg"), str(folder / "sub" / "b.jpg")}
    assert set(fileio.glob(inputs.effective_pattern(str(folder)))) == in_folder  # the launcher's check
    prefix = str(tmp_path / "out" / "c")
    command = [sys.executable, "-m", "tests.support.fakes", "caption", *argv([str(folder)], fake_bundle, prefix)]
    done = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, {**dict.fromkeys(in_folder), str(folder / "l1"): images.READ_ERROR,
                                              str(folder / "l2"): images.READ_ERROR})
    assert all(row[tables.MESSAGE] == inputs.DIRECTORY_LINK for row in errors)


def test_links_inside_a_folder_get_one_row_each_and_are_not_followed(linked_folder, fake_bundle, tmp_path):
    prefix = str(tmp_path / "out" / "c")
    caption_job.run(argv([linked_folder], fake_bundle, prefix), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, {  # nothing under loop/ or elsewhere/, nothing twice
        os.path.join(linked_folder, "a.jpg"): None, os.path.join(linked_folder, "sub", "b.jpg"): None,
        os.path.join(linked_folder, "linked.jpg"): None,  # a link to a file is a file, as Beam lists it
        os.path.join(linked_folder, "dangling.jpg"): images.MISSING_FILE,
        os.path.join(linked_folder, "album.tar"): images.READ_ERROR,
        os.path.join(linked_folder, "loop"): images.READ_ERROR,
        os.path.join(linked_folder, "elsewhere"): images.READ_ERROR})
    messages = {row[tables.IMAGE_URI]: row[tables.MESSAGE] for row in errors}
    assert messages[os.path.join(linked_folder, "elsewhere")] == inputs.DIRECTORY_LINK
    assert "give its target as an --input" in inputs.DIRECTORY_LINK


def test_a_link_given_as_an_input_is_followed(linked_folder, fake_bundle, tmp_path):
    prefix = str(tmp_path / "out" / "c")
    given = [os.path.join(linked_folder, "elsewhere"), os.path.join(linked_folder, "linked.jpg")]
    caption_job.run(argv(given, fake_bundle, prefix), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(prefix), {
        os.path.join(linked_folder, "elsewhere", "c.jpg"): None, os.path.join(linked_folder, "linked.jpg"): None})


@pytest.mark.parametrize("pattern, unreadable, links", [
    ("**", ["album.tar", "dangling.jpg"], ["elsewhere", "loop"]),
    ("*", ["album.tar", "dangling.jpg"], []),  # nothing under a link to a directory could match: no row for it
    ("*/*.jpg", [], ["elsewhere", "loop"]),  # elsewhere/c.jpg would match
    ("s*/**", [], []),
    ("*.jpg", ["dangling.jpg"], []),
    ("dangling.jpg", ["dangling.jpg"], []),  # no glob: Beam looks up that one path
    ("a.jpg", [], []),
])
def test_the_scan_finds_what_beams_match_finds_and_what_it_passes_over(linked_folder, pattern, unreadable, links):
    """The walk gives every file Beam's match gives, plus what Beam passes over that looks like an input (each
    then gets its row), and the links to directories it does not follow."""
    def under(names):
        return [os.path.join(linked_folder, name) for name in names]
    full = os.path.join(linked_folder, pattern)
    found_by_beam = fileio.glob(full)
    if naming.has_glob_characters(pattern):
        walked = list(inputs._walk_local(full))
        found = sorted(path for kind, path in walked if kind == inputs.INPUT)
        found_links = sorted(path for kind, path in walked if kind == inputs.DIRECTORY_LINK_FOUND)
    else:
        found, found_links = sorted(found_by_beam + inputs._passed_over_path(full)), []
    assert found == sorted(set(found_by_beam) | set(under(unreadable)))
    assert found_links == under(links)


def _scan(pattern):
    walked = list(inputs._walk_local(pattern))
    return ([path for kind, path in walked if kind == inputs.INPUT],
            [path for kind, path in walked if kind == inputs.DIRECTORY_LINK_FOUND])


def test_the_scan_of_a_relative_pattern_lists_from_the_same_directory(linked_folder, monkeypatch):
    monkeypatch.chdir(os.path.dirname(linked_folder))
    found, links = _scan("in/**")
    assert "in/album.tar" in found and "in/dangling.jpg" in found and links == ["in/elsewhere", "in/loop"]
    assert sorted(_scan("*/a.jpg")[0]) == ["in/a.jpg"]  # a glob in the first part: listed from "."


def test_the_scan_does_not_follow_links_to_directories(tmp_path):
    """Ten links at each of three levels, each to the top: a scan that follows them lists 30**depth paths."""
    for depth in range(3):
        level = tmp_path.joinpath("in", *["d"] * depth)
        os.makedirs(level, exist_ok=True)
        for number in range(10):
            os.symlink(str(tmp_path / "in"), level / f"l{number}")
    found, links = _scan(str(tmp_path / "in" / "**"))
    assert found == [] and len(links) == 30


# ---------------------------------------------------------------------------------------------------------------
# Lines of list files

MAX = 16
LINE_ENDS = (b"a.jpg\n"  # LF
             b"b.jpg\r\n"  # CRLF
             b"c.jpg\r"  # a lone CR
             b"\r\n"  # three empty lines: CRLF, LF, CR
             b"\n"
             b"\r"
             + b"x" * 40 + b"\r"  # over-long, ended by CR
             + b"d.jpg\r\n"
             + b"y" * 40 + b"\r\n"  # over-long, ended by CRLF
             + b"e.jpg\n"
             + b"z" * 17 + b"\n"  # one byte over
             + b"f" * 16 + b"\r"  # exactly at the limit
             + b"last.jpg")  # no line end
LINES = [b"a.jpg", b"b.jpg", b"c.jpg", b"", b"", b"", inputs.TOO_LONG, b"d.jpg", inputs.TOO_LONG, b"e.jpg",
         inputs.TOO_LONG, b"f" * 16, b"last.jpg"]


def _lines(data: bytes, chunk_bytes: int | None, max_bytes: int = MAX) -> list:
    """The lines of ``data`` read in chunks of ``chunk_bytes`` (None: the job's own chunk size)."""
    if chunk_bytes is None:
        return list(inputs._lines(io.BytesIO(data), max_bytes))
    return list(inputs._lines(io.BytesIO(data), max_bytes, chunk_bytes))


@pytest.mark.parametrize("chunk_bytes", [None, 1, 2, 3, 7])
def test_every_line_end_in_any_chunks_gives_the_same_lines(chunk_bytes):
    assert _lines(LINE_ENDS, chunk_bytes) == LINES


@pytest.mark.parametrize("chunk_bytes", [None, 1, 2, 3, 7])
def test_a_wide_list_gives_the_same_lines(chunk_bytes):
    assert _lines(codecs.BOM_UTF16_LE + LINE_ENDS.decode("ascii").encode("utf-16-le"), chunk_bytes) == LINES


@pytest.mark.parametrize("data", [b"abc\r\ndef\r\n", b"abc\r\ndef"])
def test_a_crlf_split_between_two_chunks_is_one_line_end(data):
    assert _lines(data, None) == [b"abc", b"def"]
    assert _lines(data, 2) == [b"abc", b"def"]  # chunks abc\r (the 4-byte head), \nd, ef, ...


@pytest.mark.parametrize("chunk_bytes", [None, 1, 7, 64])
def test_an_over_long_line_among_cr_line_ends_is_reported_once(chunk_bytes):
    data = b"a.jpg\r" + b"x" * 1000 + b"\rb.jpg\rc.jpg\r"
    assert _lines(data, chunk_bytes) == [b"a.jpg", inputs.TOO_LONG, b"b.jpg", b"c.jpg"]


@pytest.mark.parametrize("chunk_bytes", [None, 1, 3])
def test_a_list_without_a_line_end(chunk_bytes):
    assert _lines(b"", chunk_bytes) == []
    assert _lines(b"only.jpg", chunk_bytes) == [b"only.jpg"]
    assert _lines(b"o" * 1000, chunk_bytes) == [inputs.TOO_LONG]


def test_a_cr_only_list_is_read_in_bounded_memory():
    """22 MB with CR line ends, one line of 16 MiB: what is held is a chunk (with its pieces) and the start of one
    line, less than that line alone; the whole file was held before (55 MiB traced at the peak)."""
    short = b"".join(b"photos/2024/june/IMG_%07d.jpg\r" % number for number in range(100_000))
    data = short + b"x" * (16 << 20) + b"\r" + short
    lines = inputs._lines(io.BytesIO(data), inputs.MAX_LIST_LINE_BYTES)
    tracemalloc.start()
    try:
        kinds = collections.Counter(line is inputs.TOO_LONG for line in lines)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"peak {peak:,} bytes for a {len(data):,}-byte list"
    assert kinds == {False: 200_000, True: 1}


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"])
def test_error_rows_count_each_line_end_once(tmp_path, line_end):
    path = tmp_path / "list.txt"
    path.write_bytes(line_end.join([b"a.jpg", b"b.jpg", b"bad\0.jpg", b"c.jpg", b""]))
    outputs = list(inputs.ReadListFiles().process(str(path).encode()))
    errors = [output.value for output in outputs if getattr(output, "tag", None) == ERRORS]
    assert [row.message for row in errors] == [
        "1 line names no file: line 3 holds a NUL byte; the other 3 entries were read"]
