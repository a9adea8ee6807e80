"""The caption job on a corpus of broken, odd and hostile files, lists and archives: it finishes, and every input
is in exactly one row, with the class it deserves. Also: an unexpected exception on one input is a row, not a
failed run."""
import gzip
import io
import os
import shutil
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from beam_jobs import runtime
from beam_jobs.caption import archives
from beam_jobs.caption import job as caption_job
from beam_jobs.tools import gallery
from schemas import images
from tests.conftest import local_test_pipeline
from tests.support.builders import argv, check_every_input_once, png_claiming, read_outputs, tar_bytes
from tests.support.fakes import FAKE_MODELS

MAX_IMAGE_BYTES = 200_000


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _tar(path, members, mode="w", fmt=tarfile.GNU_FORMAT, encoding="utf-8"):
    return _write(path, tar_bytes(members, mode, fmt, encoding))


def _link(name, kind, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return path


@pytest.fixture(scope="module")
def corpus(sample_dataset, tmp_path_factory):
    """(patterns, {uri: None or error class}) for a corpus of odd inputs."""
    root = str(tmp_path_factory.mktemp("corpus"))
    photos = sorted(os.path.join(sample_dataset, "Flicker8k_Dataset", name)
                    for name in os.listdir(os.path.join(sample_dataset, "Flicker8k_Dataset")))
    jpeg = [open(path, "rb").read() for path in photos]
    expected = {}
    files, lists, packs = (os.path.join(root, name) for name in ("files", "lists", "archives"))
    for directory in (files, lists, packs):
        os.makedirs(directory)

    def expect(path, outcome):
        expected[path] = outcome
        return path

    # Loose files.
    expect(_write(os.path.join(files, "good.jpg"), jpeg[0]), None)
    expect(_write(os.path.join(files, "wide.png"), _encode(Image.open(photos[2]).resize((120, 80)), "PNG")), None)
    upright = Image.Exif()
    upright[0x0112] = 6  # stored 120x80, shown rotated by 90 degrees: 80x120
    expect(_write(os.path.join(files, "turned.jpg"), _encode(Image.open(photos[3]).resize((120, 80)), "JPEG",
                                                             exif=upright)), None)
    expect(_write(os.path.join(files, "zero.jpg"), b""), images.EMPTY_FILE)
    expect(_write(os.path.join(files, "truncated.jpg"), jpeg[1][: len(jpeg[1]) // 3]), images.DECODE_ERROR)
    expect(_write(os.path.join(files, "text.jpg"), b"plain text wearing a .jpg name"), images.UNSUPPORTED_FORMAT)
    expect(_write(os.path.join(files, "script.jpg"), b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                                                     b"(pwned) print showpage\n"), images.UNSUPPORTED_FORMAT)
    expect(_write(os.path.join(files, "bomb.png"), png_claiming(40_000, 40_000)), images.TOO_LARGE)
    expect(_write(os.path.join(files, "huge.bmp"), _encode(Image.new("RGB", (300, 300)), "BMP")), images.TOO_LARGE)
    os.makedirs(os.path.join(files, "folder.jpg"))
    expect(os.path.join(files, "folder.jpg"), images.READ_ERROR)
    os.mkfifo(os.path.join(files, "pipe.jpg"))
    expect(os.path.join(files, "pipe.jpg"), images.READ_ERROR)
    os.symlink("/dev/zero", os.path.join(files, "zeros.jpg"))
    expect(os.path.join(files, "zeros.jpg"), images.READ_ERROR)
    os.symlink("nowhere.jpg", os.path.join(files, "dangling.jpg"))
    expect(os.path.join(files, "dangling.jpg"), images.MISSING_FILE)
    os.symlink("loop.jpg", os.path.join(files, "loop.jpg"))
    expect(os.path.join(files, "loop.jpg"), images.READ_ERROR)
    latin = os.path.join(files, "caf\udce9.jpg")  # a file name that is not UTF-8 (b"caf\xe9.jpg")
    _write(latin, jpeg[2])
    expect("file://" + os.path.join(files, "caf%E9.jpg"), None)
    expect(_write(os.path.join(files, "caf%E9.jpg"), jpeg[3]), None)  # another file, whose name is that text
    expect(_write(os.path.join(files, "notes.md"), b"# photos\n"), images.NOT_AN_IMAGE)
    gray16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    expect(_write(os.path.join(files, "gray16.png"), _encode(gray16, "PNG")), None)
    expect(_write(os.path.join(files, "cmyk.jpg"), _encode(Image.open(photos[3]).convert("CMYK"), "JPEG")), None)
    frames = [Image.new("P", (40, 40), color) for color in (1, 2, 3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    expect(_write(os.path.join(files, "animated.gif"), animated.getvalue()), None)
    expect(_write(os.path.join(files, "photo.webp"), _encode(Image.open(photos[4]), "WEBP")), None)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = bytearray(_encode(Image.open(photos[5]), "JPEG", exif=exif))
    start = rotated.find(b"Exif\0\0")
    rotated[start + 10:start + 18] = b"\xff" * 8  # a malformed EXIF block: the photo is shown as stored
    expect(_write(os.path.join(files, "bad_exif.jpg"), bytes(rotated)), None)

    # An archive and a loose file whose name reads as one of its members: one input, one row.
    _tar(os.path.join(packs, "x.tar"), [("y.jpg", jpeg[6]), ("z.jpg", jpeg[7])])
    expect(_write(os.path.join(packs, "x.tar!y.jpg"), jpeg[8]), None)
    expect(os.path.join(packs, "x.tar!z.jpg"), None)

    # An archive whose own name holds "!" and reads as a member of another archive's name.
    _tar(os.path.join(packs, "a.tar!b.tar"), [("in.jpg", jpeg[4])])
    expect(os.path.join(packs, "a.tar!b.tar!in.jpg"), None)

    # Archives.
    members = [(f"m{i}.jpg", jpeg[i]) for i in range(5)]
    data = bytearray(open(_tar(os.path.join(packs, "bad_header.tar"), members), "rb").read())
    third = data.find(b"m2.jpg")
    data[third + 148:third + 156] = b"0000000\0"
    _write(os.path.join(packs, "bad_header.tar"), bytes(data))
    for name in ("m0.jpg", "m1.jpg", "m3.jpg", "m4.jpg"):
        expect(os.path.join(packs, f"bad_header.tar!{name}"), None)
    expect(os.path.join(packs, "bad_header.tar!#3"), images.CORRUPT_ARCHIVE)
    _tar(os.path.join(packs, "latin.tar"), [("\u00e9t\u00e9.jpg", jpeg[9])], encoding="latin-1")
    expect(os.path.join(packs, "latin.tar!%E9t%E9.jpg"), None)
    data = open(_tar(os.path.join(packs, "cut.tar"), members[:3]), "rb").read()
    _write(os.path.join(packs, "cut.tar"), data[: 512 + len(jpeg[0]) + 512 + 200])
    expect(os.path.join(packs, "cut.tar!m0.jpg"), None)
    expect(os.path.join(packs, "cut.tar!m1.jpg"), images.CORRUPT_ARCHIVE)
    _tar(os.path.join(packs, "links.tar"), [
        ("a.jpg", jpeg[10]), _link("hard.jpg", tarfile.LNKTYPE, "a.jpg"), _link("soft.jpg", tarfile.SYMTYPE, "a.jpg"),
        _link("tty.jpg", tarfile.CHRTYPE), _link("outside.jpg", tarfile.LNKTYPE, "../../etc/passwd"),
        _link("subdir", tarfile.DIRTYPE)])
    expected.update({os.path.join(packs, f"links.tar!{name}"): outcome for name, outcome in (
        ("a.jpg", None), ("hard.jpg", None), ("soft.jpg", images.UNSUPPORTED_MEMBER),
        ("tty.jpg", images.UNSUPPORTED_MEMBER), ("outside.jpg", images.UNSUPPORTED_MEMBER))})
    with zipfile.ZipFile(os.path.join(packs, "mixed.zip"), "w") as archive:
        archive.writestr("lzma.jpg", jpeg[11], compress_type=zipfile.ZIP_LZMA)
        archive.writestr("ok.jpg", jpeg[0], compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("inner.tar", b"an archive in an archive")
        archive.writestr("ok.jpg", jpeg[1])  # the same name twice: the first one counts
    raw = bytearray(open(os.path.join(packs, "mixed.zip"), "rb").read())
    raw[60:120] = os.urandom(60)  # inside lzma.jpg's data
    _write(os.path.join(packs, "mixed.zip"), bytes(raw))
    expected.update({os.path.join(packs, f"mixed.zip!{name}"): outcome for name, outcome in (
        ("lzma.jpg", images.CORRUPT_ARCHIVE), ("ok.jpg", None), ("inner.tar", images.NOT_AN_IMAGE))})
    with zipfile.ZipFile(os.path.join(packs, "secret.zip"), "w") as archive:
        archive.writestr("secret.jpg", jpeg[2])
    raw = bytearray(open(os.path.join(packs, "secret.zip"), "rb").read())
    for offset in (6, raw.find(b"PK\x01\x02") + 8):
        raw[offset] |= 0x1  # the "encrypted" flag, in the local and the central header
    _write(os.path.join(packs, "secret.zip"), bytes(raw))
    expect(os.path.join(packs, "secret.zip!secret.jpg"), images.ENCRYPTED_MEMBER)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb_header = tarfile.TarInfo("zeros.jpg")
    bomb_header.size = 4 << 30
    chunks = [compressor.compress(bomb_header.tobuf(format=tarfile.GNU_FORMAT))]
    chunks += [compressor.compress(bytes(1 << 20)) for _ in range(100)] + [compressor.flush()]
    _write(os.path.join(packs, "bomb.tar.gz"), b"".join(chunks))
    expect(os.path.join(packs, "bomb.tar.gz!zeros.jpg"), images.TOO_LARGE)
    expect(os.path.join(packs, "bomb.tar.gz"), images.EXPANSION_LIMIT)
    expect(_write(os.path.join(packs, "empty.tar"), b""), images.EMPTY_FILE)
    with zipfile.ZipFile(os.path.join(packs, "empty.zip"), "w"):
        pass
    expect(os.path.join(packs, "empty.zip"), images.EMPTY_FILE)
    expect(_write(os.path.join(packs, "garbage.tar.gz"), b"\x1f\x8b\x08" + os.urandom(700)), images.CORRUPT_ARCHIVE)
    _write(os.path.join(packs, "tar_named.zip"), open(_tar(os.path.join(root, "t.tar"), members[:1]), "rb").read())
    expect(os.path.join(packs, "tar_named.zip!m0.jpg"), None)
    _write(os.path.join(packs, "gz.tgz"), gzip.compress(open(os.path.join(root, "t.tar"), "rb").read()))
    expect(os.path.join(packs, "gz.tgz!m0.jpg"), None)
    os.makedirs(os.path.join(packs, "folder.tar"))
    expect(os.path.join(packs, "folder.tar"), images.READ_ERROR)

    # Lists: a BOM, CRLF, comments, entries that normalize to one file, a missing file, a list inside a list.
    _write(os.path.join(lists, "nested.txt"), b"../files/good.jpg\n")
    _write(os.path.join(lists, "list.txt"), "\ufeff# to caption\r\n../files/good.jpg\r\n../files/./good.jpg\r\n"
           "../lists/../files/notes.md\r\n\r\nmissing.jpg\r\nnested.txt\r\n../archives/x.tar\r\n".encode("utf-8"))
    expect(os.path.join(lists, "missing.jpg"), images.MISSING_FILE)
    expect(os.path.join(lists, "nested.txt"), images.NOT_AN_IMAGE)
    expect(_write(os.path.join(lists, "README.txt"), b"These are my holiday photos.\nEnjoy!\n"), images.NOT_AN_IMAGE)
    expect(_write(os.path.join(lists, "binary.txt"), b"\xff\xfe\x00\x81" + os.urandom(300)), images.NOT_AN_IMAGE)
    expect(_write(os.path.join(lists, "long.txt"), b"x" * 100_000 + b".jpg\n"), images.NOT_AN_IMAGE)
    _write(os.path.join(lists, "odd_lines.txt"), b"../files/good.jpg\n../files/caf\xe9.jpg\nbad\0line.jpg\n" +
           b"y" * 70_000 + b"\n../files/cmyk.jpg\n../files/latin1_missing_\xff.jpg\n")
    expect(os.path.join(lists, "odd_lines.txt"), images.READ_ERROR)  # the NUL line and the 70 kB line
    expect("file://" + os.path.join(files, "latin1_missing_%FF.jpg"), images.MISSING_FILE)

    # Line ends of every kind, UTF-16, and the job's own file:// spelling of a path that is not UTF-8.
    _write(os.path.join(lists, "cr_only.txt"), b"../files/good.jpg\r../files/gray16.png\r../files/cmyk.jpg\r")
    _write(os.path.join(lists, "utf16.txt"), "../files/tiny_utf16.jpg\r\n../files/good.jpg\n".encode("utf-16"))
    expect(os.path.join(files, "tiny_utf16.jpg"), images.MISSING_FILE)
    _write(os.path.join(lists, "retry.txt"), ("file://" + os.path.join(files, "caf%E9.jpg") + "\n").encode())

    patterns = [os.path.join(files, "*"), os.path.join(packs, "*"), os.path.join(lists, "list.txt"),
                os.path.join(lists, "cr_only.txt"), os.path.join(lists, "utf16.txt"), os.path.join(lists, "retry.txt"),
                os.path.join(lists, "README.txt"), os.path.join(lists, "binary.txt"), os.path.join(lists, "long.txt"),
                os.path.join(lists, "odd_lines.txt"), os.path.join(files, "good.jpg")]
    return patterns, expected


@pytest.mark.integration
def test_every_hostile_input_is_exactly_one_row(corpus, fake_bundle, tmp_path):
    patterns, expected = corpus
    prefix = str(tmp_path / "out" / "captions")
    result = caption_job.run(argv(patterns, fake_bundle, prefix, "--max_image_bytes", str(MAX_IMAGE_BYTES)),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, expected)
    counters = runtime.metric_counters(result)
    page = str(tmp_path / "gallery.html")
    assert gallery.main(["--captions", prefix, "--output", page, "--limit", "1000"]) == 0
    assert open(page, encoding="utf-8").read().count("data:image/jpeg;base64,") == len(captions)  # every one found
    rerun = caption_job.run(argv(patterns, fake_bundle, prefix, "--max_image_bytes", str(MAX_IMAGE_BYTES),
                                    "--skip_existing"), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(prefix), expected)  # the rerun found everything done, damage included
    assert runtime.metric_counters(rerun).get("images_captioned", 0) == 0
    assert counters["duplicate_inputs"] >= 5  # good.jpg thrice more, notes.md, x.tar, the zip's second ok.jpg, ...
    assert "errors_internal_error" not in counters
    messages = {row["image_uri"]: row["message"] for row in errors}
    assert "a directory" in messages[os.path.join(corpus[0][0][:-2], "folder.jpg")]
    assert "above the limit of 200,000" in messages[os.path.join(corpus[0][0][:-2], "huge.bmp")]
    sizes = {os.path.basename(row["image_uri"]): (row["width"], row["height"]) for row in captions}
    assert sizes["wide.png"] == (120, 80) and sizes["turned.jpg"] == (80, 120)  # as shown, width first
    odd_lines = next(uri for uri in messages if uri.endswith("odd_lines.txt"))
    assert "2 lines name no file: line 3 holds a NUL byte; line 4 is longer than 64 KiB" in messages[odd_lines]


def test_an_unexpected_exception_on_one_input_is_a_row(corpus, fake_bundle, tmp_path, monkeypatch):
    patterns, expected = corpus
    failing_uri = next(uri for uri in expected if uri.endswith("files/cmyk.jpg"))
    failing_photo = open(failing_uri, "rb").read()
    original_prepare = images.prepare_image

    def prepare_or_fail(data, image_size, max_pixels=images.DEFAULT_MAX_PIXELS):
        if data == failing_photo:
            raise RuntimeError("a bug that only this photo triggers")
        return original_prepare(data, image_size, max_pixels)

    original_index = archives.index_archive

    def index_or_fail(uri, *args, **kwargs):
        for count, event in enumerate(original_index(uri, *args, **kwargs)):
            if uri.endswith("bad_header.tar") and count == 2:
                raise KeyError("a bug in the middle of an archive")
            yield event

    monkeypatch.setattr(images, "prepare_image", prepare_or_fail)
    monkeypatch.setattr(archives, "index_archive", index_or_fail)
    prefix = str(tmp_path / "out" / "captions")
    result = caption_job.run(argv(patterns, fake_bundle, prefix, "--max_image_bytes", str(MAX_IMAGE_BYTES)),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    packs = os.path.dirname(next(uri for uri in expected if uri.endswith("bad_header.tar!m0.jpg")))
    changed = dict(expected)
    for uri in list(changed):
        if uri.startswith(os.path.join(packs, "bad_header.tar!")) and not uri.endswith(("m0.jpg", "m1.jpg")):
            del changed[uri]  # never reached: the exception stopped the reading after two members
    changed[failing_uri] = images.INTERNAL_ERROR
    changed[os.path.join(packs, "bad_header.tar")] = images.INTERNAL_ERROR
    check_every_input_once(captions, errors, changed)
    messages = {row["image_uri"]: row["message"] for row in errors}
    assert "RuntimeError: a bug that only this photo triggers" in messages[failing_uri]
    assert "KeyError" in messages[os.path.join(packs, "bad_header.tar")]
    assert runtime.metric_counters(result)["errors_internal_error"] == 2


def test_a_hostile_list_cannot_make_a_loop_or_escape_its_rows(tmp_path, fake_bundle, sample_dataset):
    """A list naming itself, a list naming a list that names it back, and the same file under many spellings."""
    photo = os.path.join(sample_dataset, "Flicker8k_Dataset", sorted(os.listdir(
        os.path.join(sample_dataset, "Flicker8k_Dataset")))[0])
    shutil.copy(photo, tmp_path / "p.jpg")
    (tmp_path / "a.txt").write_text("a.txt\nb.txt\np.jpg\n./p.jpg\nsub/../p.jpg\n" + str(tmp_path / "p.jpg") + "\n")
    (tmp_path / "b.txt").write_text("a.txt\np.jpg\n")
    prefix = str(tmp_path / "out" / "c")
    caption_job.run(argv([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], fake_bundle, prefix),
                       test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, {str(tmp_path / "p.jpg"): None})


def test_a_list_can_name_archive_members_by_their_uris(tmp_path, fake_bundle, sample_dataset):
    photos = sorted(os.path.join(sample_dataset, "Flicker8k_Dataset", name)
                    for name in os.listdir(os.path.join(sample_dataset, "Flicker8k_Dataset")))
    jpeg = [open(path, "rb").read() for path in photos[:4]]
    p_tar = _tar(str(tmp_path / "p.tar"), [("a.jpg", jpeg[0]), ("b.jpg", jpeg[1]), ("notes.txt", b"hi")])
    q_tar = _tar(str(tmp_path / "q.tar"), [("x.jpg", jpeg[2]), ("y.jpg", jpeg[3])])
    damaged = bytearray(open(_tar(str(tmp_path / "damaged.tar"), [(f"m{i}.jpg", jpeg[i]) for i in range(3)]),
                             "rb").read())
    second = damaged.find(b"m1.jpg")
    damaged[second + 148:second + 156] = b"0000000\0"
    _write(str(tmp_path / "damaged.tar"), bytes(damaged))
    (tmp_path / "members.txt").write_text("\n".join([
        "p.tar!a.jpg", "p.tar!%61.jpg", "p.tar!missing.jpg", "p.tar!notes.txt", "damaged.tar!m1.jpg",
        "damaged.tar!m2.jpg", "gone.tar!x.jpg", "q.tar!x.jpg", "q.tar!nothing.jpg", "p.tar!../../b.jpg"]) + "\n"
        + "p.tar!#\udcff\np.tar!caf\udce9.jpg\n", encoding="utf-8", errors="surrogateescape")
    prefix = str(tmp_path / "out" / "c")
    caption_job.run(argv([str(tmp_path / "members.txt"), q_tar], fake_bundle, prefix),
                       test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    check_every_input_once(captions, errors, {
        f"{p_tar}!a.jpg": None, f"{p_tar}!missing.jpg": images.MISSING_FILE, f"{p_tar}!notes.txt": images.NOT_AN_IMAGE,
        f"{tmp_path}/damaged.tar!m1.jpg": images.CORRUPT_ARCHIVE, f"{tmp_path}/damaged.tar!m2.jpg": None,
        f"{tmp_path}/gone.tar!x.jpg": images.MISSING_FILE, f"{q_tar}!x.jpg": None, f"{q_tar}!y.jpg": None,
        f"{q_tar}!nothing.jpg": images.MISSING_FILE, f"{p_tar}!../../b.jpg": images.MISSING_FILE,
        f"{p_tar}!%23%FF": images.MISSING_FILE, f"{p_tar}!caf%E9.jpg": images.MISSING_FILE})


def test_a_directory_input_means_every_file_under_it(tmp_path, fake_bundle, sample_dataset):
    photo = os.path.join(sample_dataset, "Flicker8k_Dataset", sorted(os.listdir(
        os.path.join(sample_dataset, "Flicker8k_Dataset")))[0])
    os.makedirs(tmp_path / "photos" / "2024" / "june")
    shutil.copy(photo, tmp_path / "photos" / "a.jpg")
    shutil.copy(photo, tmp_path / "photos" / "2024" / "june" / "b.jpg")
    (tmp_path / "photos" / "2024" / "notes.md").write_text("x")
    prefix = str(tmp_path / "out" / "c")
    caption_job.run(argv([str(tmp_path / "photos")], fake_bundle, prefix), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    check_every_input_once(*read_outputs(prefix), {
        str(tmp_path / "photos" / "a.jpg"): None, str(tmp_path / "photos" / "2024" / "june" / "b.jpg"): None,
        str(tmp_path / "photos" / "2024" / "notes.md"): images.NOT_AN_IMAGE})
