"""A corpus of about 110 broken, odd and hostile files, lists and archives, run through the caption job.

    python bench/hostile_corpus.py [--work_dir DIR] [--model_dir MODEL --weights PATH]

Writes the corpus under --work_dir/corpus (generated from scratch: no dataset needed), runs
`python -m beam_jobs.caption_images` on all of it in a fresh process and checks what a user relies on:

- the job exits 0 and prints its summary;
- no URI is in two rows (captions and errors together);
- every file and archive given as an input has a row (its own URI, or ``URI!...`` for an archive's entries), and
  every entry of every list has one;
- nothing is an ``internal_error`` (a row of that class means a bug to fix here);
- no message quotes a file's bytes (files holding a marker, a link to /etc/passwd);
- a directory input whose links loop or lead out of it ends: one row per link, its photo captioned once;
- a rerun with --skip_existing exits 0 and writes no row (everything is done, damage included).

It prints the rows by class and a table of the inputs with their outcome; exit status 1 if a check fails. Without
--model_dir it builds a tiny bundle (random-init Xception at 71 px), as bench/archive_scale.py does.
"""
import argparse
import collections
import gzip
import io
import json
import lzma
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np
from common import REPO_ROOT, read_caption_outputs
from PIL import Image

sys.path.insert(0, REPO_ROOT)
from tests.support.builders import png_claiming, tar_bytes  # noqa: E402  (the same builders as the tests')


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(seed, size=(160, 120)):
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return Image.fromarray(base)


def jpeg(seed, **kwargs):
    return encode(photo(seed), "JPEG", **kwargs)


def png_with_chunk(kind: bytes, payload: bytes):
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:33] + chunk + data[33:]


def jpeg_with_size(width, height):
    data = bytearray(jpeg(1))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def link(name, kind, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def zip_bytes(members, method=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def corrupt(data: bytes, start: float, length: int = 64) -> bytes:
    data = bytearray(data)
    offset = int(len(data) * start)
    data[offset:offset + length] = bytes(b ^ 0x5A for b in data[offset:offset + length])
    return bytes(data)


def _pax_record(key: str, value: str) -> bytes:
    """One pax record, "LEN key=value\\n", LEN counting itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def _with_pax_record(tar: bytes, record: bytes, before: int = 1) -> bytes:
    """``tar`` with a pax extended header holding ``record`` inserted before its member number ``before``."""
    offsets, position = [], 0
    while position + 512 <= len(tar) and tar[position:position + 512].strip(b"\0"):
        offsets.append(position)
        size = int(tar[position + 124:position + 136].strip(b"\0 ") or b"0", 8)
        position += 512 + (size + 511) // 512 * 512
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(record)
    block = header.tobuf(format=tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)
    return tar[:offsets[before]] + block + tar[offsets[before]:]


def files_corpus(write):
    gray16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    animated = io.BytesIO()
    frames = [Image.new("P", (40, 40), color) for color in range(3)]
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    apng = io.BytesIO()
    photo(2).save(apng, format="PNG", save_all=True, append_images=[photo(3)])
    multipage = io.BytesIO()
    photo(4).save(multipage, format="TIFF", save_all=True, append_images=[photo(5)], compression="tiff_lzw")
    webp_anim = io.BytesIO()
    photo(6).save(webp_anim, format="WEBP", save_all=True, append_images=[photo(7)])
    exif = Image.Exif()
    exif[0x0112] = 8
    bad_exif = bytearray(jpeg(8, exif=exif))
    start = bad_exif.find(b"Exif\0\0")
    bad_exif[start + 10:start + 18] = b"\xff" * 8
    zero_height = bytearray(jpeg(9))
    sof = zero_height.find(b"\xff\xc0")
    struct.pack_into(">H", zero_height, sof + 5, 0)
    write("good.jpg", jpeg(0))
    write("zero.jpg", b"")
    write("truncated.jpg", jpeg(10)[:300])
    write("text.jpg", b"just text with a .jpg name\n")
    write("postscript.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(x) show showpage\n")
    write("vector.jpg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>')
    write("document.jpg", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    write("heic.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(200))
    write("bomb.png", png_claiming(50_000, 50_000))
    write("bomb.gif", b"GIF89a\xff\xff\xff\xff\x00\x00\x00;")
    write("bomb.jpg", jpeg_with_size(65_000, 65_000))
    write("zero_height.jpg", bytes(zero_height))
    write("ztxt_bomb.png", png_with_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(50 << 20), 9)))
    write("iccp_bomb.png", png_with_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(50 << 20), 9)))
    write("progressive.jpg", jpeg(11, progressive=True, quality=90))
    write("apng.png", apng.getvalue())
    write("multipage.tif", multipage.getvalue())
    write("gray16.png", encode(gray16, "PNG"))
    write("float.tif", encode(Image.fromarray(np.random.default_rng(0).random((50, 60), dtype=np.float32)), "TIFF"))
    write("rle.bmp", encode(photo(12).convert("P"), "BMP"))
    write("bad_header.bmp", b"BM" + struct.pack("<IHHI", 10 ** 9, 0, 0, 54)
          + struct.pack("<IiiHH", 40, -9999999, 9999999, 1, 24) + bytes(100))
    write("icon.ico", encode(photo(13), "ICO"))
    write("animated.webp", webp_anim.getvalue())
    write("truncated.webp", encode(photo(14), "WEBP")[:100])
    write("sixteen.ppm", b"P5 20 20 65535\n" + bytes(800))
    write("huge.pgm", b"P5 100000 100000 255\n" + bytes(100))
    write("bits.pbm", encode(photo(15).convert("1"), "PPM"))
    write("png_named.jpg", encode(photo(16), "PNG"))
    write("jpeg_named.gif", jpeg(17))
    write("polyglot.jpg", jpeg(18) + zip_bytes([("inside.jpg", jpeg(19))]))
    write("spaces and \u00fcnicode \u65e5\u672c.jpg", jpeg(20))
    write("odd %41 #1 !x [y] {z}.jpg", jpeg(21))
    write("new\nline.jpg", jpeg(22))
    write(b"caf\xe9 latin1.jpg", jpeg(23))
    write("cmyk.jpg", encode(photo(24).convert("CMYK"), "JPEG"))
    write("bad_exif.jpg", bytes(bad_exif))
    write("tiny.png", encode(Image.new("RGB", (1, 1)), "PNG"))
    write("transparent.gif", encode(Image.new("P", (1, 1)), "GIF", transparency=0))
    write("notes.md", b"# notes\n")
    write(".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100))
    write("Thumbs.db", b"\xd0\xcf\x11\xe0" + bytes(100))
    write("noext", jpeg(25))
    write("secret.jpg", b"SECRET-TOKEN-4711 root:x:0:0:root:/root:/bin/bash\n")  # no message may quote it
    write("secret.ppm", b"P6 SECRET-TOKEN-4711" + b"9" * 80 + b" 10 255\n")  # Pillow quotes header tokens
    rgba = np.zeros((600, 800, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(800, dtype=np.uint16)[None, :] * 255 // 799
    write("rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    write("la.png", encode(Image.fromarray(rgba[..., 2:], "LA"), "PNG"))


def special_files(directory, good):
    os.makedirs(os.path.join(directory, "folder.png"))
    os.mkfifo(os.path.join(directory, "fifo.jpg"))
    os.symlink("/dev/urandom", os.path.join(directory, "random.jpg"))
    os.symlink("nothing-here.jpg", os.path.join(directory, "dangling.jpg"))
    os.symlink("loop.jpg", os.path.join(directory, "loop.jpg"))
    os.symlink(good, os.path.join(directory, "link_to_good.jpg"))
    os.symlink("/etc/passwd", os.path.join(directory, "passwd.jpg"))  # no message may quote its bytes
    with open(os.path.join(directory, "sparse_huge.jpg"), "wb") as handle:
        handle.truncate(300 << 20)  # 300 MiB of holes: too large, and never read


def archives_corpus(write):
    photos = [(f"p{i}.jpg", jpeg(100 + i)) for i in range(4)]
    plain = tar_bytes(photos)
    bad_header = bytearray(plain)
    second = bad_header.find(b"p1.jpg")
    bad_header[second + 148:second + 156] = b"0000000\0"
    big_pax = tarfile.TarInfo("pax.jpg")
    big_pax.size = 3
    big_pax.pax_headers = {"comment": "x" * (2 << 20)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(big_pax, io.BytesIO(b"abc"))
        info = tarfile.TarInfo("after_pax.jpg")
        info.size = len(photos[0][1])
        archive.addfile(info, io.BytesIO(photos[0][1]))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = tarfile.TarInfo("zeros.jpg")
    bomb.size = 8 << 30
    bomb_data = compressor.compress(bomb.tobuf(format=tarfile.GNU_FORMAT))
    bomb_data += b"".join(compressor.compress(bytes(1 << 20)) for _ in range(100)) + compressor.flush()
    encrypted = bytearray(zip_bytes(photos[:2]))
    encrypted[6] |= 1
    encrypted[encrypted.find(b"PK\x01\x02") + 8] |= 1
    deflate64 = bytearray(zip_bytes(photos[:1]))
    struct.pack_into("<H", deflate64, deflate64.find(b"PK\x01\x02") + 10, 9)
    count_lie = bytearray(zip_bytes(photos))
    eocd = count_lie.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", count_lie, eocd + 8, 900, 900)
    streamed = io.BytesIO()
    with zipfile.ZipFile(streamed, "w") as archive:
        with archive.open("streamed.jpg", "w") as handle:
            handle.write(photos[0][1])
    unseekable_style = streamed.getvalue()
    zip64 = io.BytesIO()
    with zipfile.ZipFile(zip64, "w") as archive:
        with archive.open("z64.jpg", "w", force_zip64=True) as handle:
            handle.write(photos[1][1])
    overlap = bytearray(zip_bytes([("a.jpg", bytes(20 << 20)), ("b.jpg", b"b")]))
    central = overlap.find(b"PK\x01\x02")
    second_entry = overlap.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", overlap, second_entry + 42, 0)  # b.jpg's data is a.jpg's: a lying directory
    write("plain.tar", plain)
    write("bad_header.tar", bytes(bad_header))
    write("truncated.tar", plain[: len(plain) // 2])
    write("truncated.tgz", gzip.compress(plain)[:-200])
    write("corrupt_middle.tar.gz", corrupt(gzip.compress(plain), 0.5))
    write("corrupt.tar.bz2", corrupt(__import__("bz2").compress(plain), 0.4))
    write("fine.tar.xz", lzma.compress(plain))
    write("big_pax.tar", buffer.getvalue())
    write("many_members.tar", tar_bytes([(f"n/{i}.txt", b"x") for i in range(2000)] + [photos[0]]))
    write("links.tar", tar_bytes([photos[0], link("hard.jpg", tarfile.LNKTYPE, "p0.jpg"),
                                  link("chain.jpg", tarfile.LNKTYPE, "hard.jpg"),
                                  link("self.jpg", tarfile.LNKTYPE, "self.jpg"),
                                  link("sym.jpg", tarfile.SYMTYPE, "/etc/passwd"), link("dev.jpg", tarfile.BLKTYPE),
                                  link("pipe.jpg", tarfile.FIFOTYPE), link("d", tarfile.DIRTYPE)]))
    write("names.tar", tar_bytes([("/abs/olute.jpg", photos[0][1]), ("../../up.jpg", photos[1][1]),
                                  ("", photos[2][1]), ("odd !#%[].jpg", photos[3][1]), ("./p0.jpg", photos[0][1]),
                                  ("tab\there.jpg", photos[1][1])]))
    write("latin1.tar", tar_bytes([("\u00e9t\u00e9.jpg", photos[0][1])], encoding="latin-1"))
    write("nested.tar", tar_bytes([("inner.tar", plain), ("inner.zip", zip_bytes(photos))]))
    write("tar_named.zip", plain)
    write("zip_named.tar", zip_bytes(photos))
    write("lzma.zip", corrupt(zip_bytes(photos, zipfile.ZIP_LZMA), 0.3))
    write("bzip2.zip", zip_bytes(photos, zipfile.ZIP_BZIP2))
    write("encrypted.zip", bytes(encrypted))
    write("deflate64.zip", bytes(deflate64))
    write("streamed.zip", unseekable_style)
    write("zip64.zip", zip64.getvalue())
    write("sfx.zip", b"MZ" + os.urandom(4000) + zip_bytes(photos))
    write("truncated.zip", zip_bytes(photos)[:-100])
    write("count_lie.zip", bytes(count_lie))
    write("overlap.zip", bytes(overlap))
    write("bomb.zip", zip_bytes([(f"zeros{i}.jpg", bytes(100 << 20)) for i in range(3)]))
    write("dup_names.zip", zip_bytes([("same.jpg", photos[0][1]), ("same.jpg", photos[1][1])]))
    write("dirs_only.zip", zip_bytes([("a/", b""), ("a/b/", b"")]))
    write("empty.zip", zip_bytes([]))
    write("empty.tar", b"")
    write("zeros.tar", bytes(10240))
    write("garbage.tar.gz", b"\x1f\x8b\x08" + os.urandom(1000))
    write("zstd.tar", b"\x28\xb5\x2f\xfd" + os.urandom(200))
    write("sevenzip.zip", b"7z\xbc\xaf\x27\x1c" + os.urandom(300))
    write("rar.tar", b"Rar!\x1a\x07\x00" + os.urandom(300))
    write("bomb.tar.gz", bomb_data)
    write("png_bomb_inside.tar", tar_bytes([("bomb.png", png_claiming(60_000, 60_000))]))
    for name, key, value in (("pax_huge_size.tar", "size", "9" * 5000), ("pax_negative_size.tar", "size", "-5"),
                             ("pax_huge_mtime.tar", "mtime", "1" * 5000)):
        write(name, _with_pax_record(tar_bytes(photos[:3], fmt=tarfile.PAX_FORMAT), _pax_record(key, value)))
    write("pax_long_length.tar", _with_pax_record(tar_bytes(photos[:3], fmt=tarfile.PAX_FORMAT),
                                                  b"1" * 5000 + b" path=x\n", before=1))
    comment = io.BytesIO()
    with zipfile.ZipFile(comment, "w") as archive:
        archive.writestr("a.jpg", photos[0][1])
        archive.comment = b"PK\x05\x06" + b"\xff" * 40
    write("decoy.zip", comment.getvalue())


def lists_corpus(directory, write):
    files = os.path.join(os.path.dirname(directory), "files")
    archives = os.path.join(os.path.dirname(directory), "archives")
    write("good.txt", "\ufeff# photos\r\n../files/good.jpg\r\n../files/./good.jpg\r\n../files/sub/../good.jpg\r\n"
          f"{files}/cmyk.jpg\r\n\r\nmissing.jpg\r\n../archives/plain.tar\r\n".encode("utf-8"))
    write("README.txt", b"Holiday photos, 2024.\nAsk me for the originals.\n")
    write("binary.txt", os.urandom(5000))
    write("nul_line.txt", b"../files/good.jpg\nbad\0name.jpg\n../files/tiny.png\n")
    write("long_line.txt", b"../files/good.jpg\n" + b"z" * 200_000 + b"\n../files/icon.ico\n")
    write("self.txt", b"self.txt\n../files/good.jpg\n")
    write("of_lists.txt", b"good.txt\nself.txt\n")
    write("urls.txt", b"http://example.com/a.jpg\nhttps://example.com/b.tar\ngs://no-such-bucket/c.jpg\n"
                      b"s3://bucket/d.png\n")
    write("members.txt", f"{archives}/plain.tar!p1.jpg\n{archives}/plain.tar!gone.jpg\n"
                         f"{archives}/links.tar!hard.jpg\n{archives}/nothere.tar!x.jpg\n".encode("utf-8"))
    write("flood.txt", "".join(f"missing/{i}.jpg\n" for i in range(5000)).encode("utf-8"))
    write("empty.txt", b"")
    write("comments.txt", b"# nothing\n# at all\n")
    write("windows.txt", b"C:\\photos\\a.jpg\r\n..\\files\\good.jpg\r\n")
    write("latin1.txt", b"../files/caf\xe9 latin1.jpg\n")
    write("cr_only.txt", b"../files/good.jpg\r" + b"y" * 300_000 + b"\r../files/tiny.png\r../files/icon.ico")
    write("crlf_split.txt", b"../files/good.jpg\r\n" * 3 + b"../files/cmyk.jpg\r\n")
    os.makedirs(os.path.join(directory, "dir.txt"))


def build(root: str) -> list[str]:
    corpus = os.path.join(root, "corpus")
    if os.path.exists(corpus):
        import shutil
        shutil.rmtree(corpus)
    patterns = []
    for name, maker in (("files", files_corpus), ("archives", archives_corpus)):
        directory = os.path.join(corpus, name)
        os.makedirs(directory)

        def write(file_name, data, directory=directory):
            path = os.path.join(directory.encode() if isinstance(file_name, bytes) else directory, file_name)
            with open(path, "wb") as handle:
                handle.write(data)
        maker(write)
        patterns.append(os.path.join(directory, "*"))
    special_files(os.path.join(corpus, "files"), os.path.join(corpus, "files", "good.jpg"))
    lists = os.path.join(corpus, "lists")
    os.makedirs(lists)

    def write_list(file_name, data):
        with open(os.path.join(lists, file_name), "wb") as handle:
            handle.write(data)
    lists_corpus(lists, write_list)
    patterns.append(os.path.join(lists, "*"))
    tree = os.path.join(corpus, "tree")  # a directory input (DIR/**) whose links loop or lead out of it
    os.makedirs(os.path.join(tree, "sub"))
    with open(os.path.join(tree, "sub", "deep.jpg"), "wb") as handle:
        handle.write(jpeg(30))
    for name, target in (("l1", "."), ("l2", "."), ("sub/up", ".."), ("outside", "../archives")):
        os.symlink(target, os.path.join(tree, name))
    patterns.append(tree)
    return patterns


def tiny_bundle(work_dir: str) -> str:
    from archive_scale import tiny_bundle as build_tiny
    return build_tiny(work_dir)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "imcap-hostile"))
    parser.add_argument("--model_dir")
    parser.add_argument("--weights", default="none")
    parser.add_argument("beam_args", nargs="*", help="Beam options for the job, after --, e.g. -- "
                        "--direct_running_mode=multi_processing --direct_num_workers=2")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    patterns = build(args.work_dir)
    model_dir = args.model_dir or tiny_bundle(args.work_dir)
    prefix = os.path.join(args.work_dir, "out", "captions")
    command = [sys.executable, "-m", "beam_jobs.caption_images", "--model_dir", model_dir, "--weights", args.weights,
               "--output_dir", prefix, "--overwrite"]
    for pattern in patterns:
        command += ["--input", pattern]
    command += args.beam_args
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    print(done.stderr[-2500:] if done.returncode else "\n".join(
        line for line in done.stderr.splitlines() if "caption job finished" in line or line.startswith("  ")))
    failures = []
    if done.returncode != 0:
        failures.append(f"exit status {done.returncode}")
    captions, errors = read_caption_outputs(prefix)
    rows = captions + errors
    uris = collections.Counter(row["image_uri"] for row in rows)
    failures += [f"in {count} rows: {uri}" for uri, count in uris.items() if count > 1]
    classes = collections.Counter(row.get("error", "captioned") for row in rows)
    print(json.dumps(dict(sorted(classes.items())), indent=1))
    from beam_jobs import naming
    corpus = os.path.join(args.work_dir, "corpus")
    for kind in ("files", "archives"):
        directory = os.path.join(corpus, kind)
        for name in sorted(os.listdir(directory.encode())):
            path = naming.text_path(os.path.join(directory, os.fsdecode(name)))
            related = sorted(uri for uri in uris if uri == path or uri.startswith(path + "!"))
            outcome = collections.Counter(next(row.get("error", "captioned") for row in rows if row["image_uri"] == u)
                                          for u in related)
            print(f"  {kind}/{os.fsdecode(name)!r:<42} {dict(outcome)}")
            if not related:
                failures.append(f"no row for {path}")
    leaked = [row["image_uri"] for row in rows if row.get("message") and any(
        secret in row["message"] for secret in ("SECRET-TOKEN", "root:x:0", "/bin/bash"))]
    failures += [f"a message quotes the file's bytes: {uri}" for uri in leaked]
    tree = os.path.join(corpus, "tree")
    tree_uris = sorted(uri for uri in uris if uri.startswith(tree + "/"))
    print(f"  tree/ (links that loop or lead out): {[os.path.relpath(uri, tree) for uri in tree_uris]}")
    if sorted(os.path.relpath(uri, tree) for uri in tree_uris) != ["l1", "l2", "outside", "sub/deep.jpg", "sub/up"]:
        failures.append(f"tree/: expected one row per link and one caption, got {tree_uris}")
    internal = [row for row in rows if row.get("error") == "internal_error"]
    failures += [f"internal_error: {row['image_uri']}: {row['message']}" for row in internal]
    print(f"\n{len(rows)} rows, {len(uris)} URIs")
    rerun = subprocess.run([arg for arg in command if arg != "--overwrite"] + ["--skip_existing"], cwd=REPO_ROOT,
                           capture_output=True, text=True)
    again_captions, again_errors = read_caption_outputs(prefix, run=2)
    again = again_captions + again_errors
    print(f"rerun with --skip_existing: exit {rerun.returncode}, {len(again)} new rows")
    if rerun.returncode != 0 or again:
        failures.append(f"the rerun with --skip_existing exited {rerun.returncode} and wrote {len(again)} rows: "
                        f"{sorted(row['image_uri'] for row in again)[:10]}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
