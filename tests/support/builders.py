"""Helpers of the caption job's tests: a small mixed input set with the outcome of every input, and output checks."""
import io
import os
import posixpath
import shutil
import struct
import tarfile
import zipfile
import zlib

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import images, tables


def build_inputs(root: str, sample_dataset: str):
    """Input files under root and what must become of each: (patterns, {uri: None (a caption) or error class})."""
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    names = sorted(os.listdir(source))
    expected = {}

    folder = os.path.join(root, "folder")
    os.makedirs(folder)
    for name in names[0:4]:
        shutil.copy(os.path.join(source, name), folder)
        expected[os.path.join(folder, name)] = None
    open(os.path.join(folder, "zero.jpg"), "wb").close()
    expected[os.path.join(folder, "zero.jpg")] = images.EMPTY_FILE
    data = open(os.path.join(source, names[0]), "rb").read()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as handle:
        handle.write(data[: len(data) // 3])
    expected[os.path.join(folder, "truncated.jpg")] = images.DECODE_ERROR
    with open(os.path.join(folder, "text.jpg"), "w") as handle:
        handle.write("plain text wearing a .jpg name")
    expected[os.path.join(folder, "text.jpg")] = images.UNSUPPORTED_FORMAT
    with open(os.path.join(folder, "readme.md"), "w") as handle:
        handle.write("# photos\n")
    expected[os.path.join(folder, "readme.md")] = images.NOT_AN_IMAGE

    tar_path = os.path.join(root, "batch.tar")
    with tarfile.open(tar_path, "w") as archive:
        for name in names[4:6]:
            archive.add(os.path.join(source, name), arcname=f"pics/{name}")
            expected[f"{tar_path}!pics/{name}"] = None
        notes = os.path.join(root, "notes.txt")
        with open(notes, "w") as handle:
            handle.write("not an image")
        archive.add(notes, arcname="pics/notes.txt")
        expected[f"{tar_path}!pics/notes.txt"] = images.NOT_AN_IMAGE
    tgz_path = os.path.join(root, "batch.tar.gz")
    with tarfile.open(tgz_path, "w:gz") as archive:
        for name in names[6:8]:
            archive.add(os.path.join(source, name), arcname=name)
            expected[f"{tgz_path}!{name}"] = None
    zip_path = os.path.join(root, "batch.zip")
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in names[8:10]:
            archive.write(os.path.join(source, name), arcname=f"dir/{name}")
            expected[f"{zip_path}!dir/{name}"] = None
    corrupt = os.path.join(root, "corrupt.tar.gz")
    with open(corrupt, "wb") as handle:
        handle.write(b"\x1f\x8b\x08" + os.urandom(500))
    expected[corrupt] = images.CORRUPT_ARCHIVE

    listed_dir = os.path.join(root, "listed")
    os.makedirs(listed_dir)
    shutil.copy(os.path.join(source, names[11]), listed_dir)
    with open(os.path.join(root, "list.txt"), "w") as handle:
        handle.write(f"# images to caption\n{os.path.join(source, names[10])}\nlisted/{names[11]}\nlisted/gone.jpg\n")
    expected[os.path.join(source, names[10])] = None
    expected[os.path.join(listed_dir, names[11])] = None
    expected[os.path.join(listed_dir, "gone.jpg")] = images.MISSING_FILE

    patterns = [os.path.join(folder, "*"), tar_path, tgz_path, zip_path, corrupt, os.path.join(root, "list.txt")]
    return patterns, expected


def argv(patterns, model_dir, output_dir, *extra):
    args = ["--model_dir", model_dir, "--output_dir", output_dir, *extra]
    for pattern in patterns:
        args += ["--input", pattern]
    return args


def shard_paths(output_dir, table):
    """The committed shards of one table (``captions`` or ``errors``) in the output directory, any filesystem;
    every file in the table's folder must be one."""
    try:
        matched = FileSystems.match([posixpath.join(tables.table_dir(output_dir, table), "*")])[0].metadata_list
    except Exception:  # nothing matches
        matched = []
    paths = sorted(metadata.path for metadata in matched if not metadata.path.endswith("/"))  # no placeholders
    for path in paths:
        assert tables.shard_run(posixpath.basename(path)) is not None, f"not a shard in a table's folder: {path}"
    return paths


def read_outputs(output_dir):
    """(caption rows, error rows) of every committed shard in the output directory, on any Beam filesystem."""
    rows = {}
    for table, schema in ((tables.CAPTIONS_TABLE, tables.CAPTION_SCHEMA), (tables.ERRORS_TABLE, tables.ERROR_SCHEMA)):
        rows[table] = []
        for path in shard_paths(output_dir, table):
            with FileSystems.open(path) as handle:
                read = pq.read_table(io.BytesIO(handle.read()))
            assert read.schema.equals(schema, check_metadata=False), path
            rows[table].extend(read.to_pylist())
    return rows[tables.CAPTIONS_TABLE], rows[tables.ERRORS_TABLE]


def check_every_input_once(captions, errors, expected):
    """Each URI in exactly one row, and the row is what `expected` says (None: a caption, else the error class)."""
    uris = [row[tables.IMAGE_URI] for row in captions + errors]
    duplicates = sorted({uri for uri in uris if uris.count(uri) > 1})
    assert not duplicates, f"URIs in more than one row: {duplicates}"
    outcomes = {row[tables.IMAGE_URI]: None for row in captions}
    outcomes.update({row[tables.IMAGE_URI]: row[tables.ERROR] for row in errors})
    missing = {uri: expected[uri] for uri in expected if uri not in outcomes}
    unexpected = {uri: outcomes[uri] for uri in outcomes if uri not in expected}
    wrong = {uri: (outcomes[uri], expected[uri]) for uri in outcomes
             if uri in expected and outcomes[uri] != expected[uri]}
    assert not (missing or unexpected or wrong), f"missing {missing}; unexpected {unexpected}; (got, wanted) {wrong}"


class SimulatedCrash(Exception):
    pass


def crash_on_third_caption_batch(monkeypatch) -> list:
    """Makes the (fake) caption decoder fail on its third batch, as a lost worker would; returns the sizes of the
    batches it was called with. Undo with ``monkeypatch.undo()``."""
    from tests.support.fakes import FakeCaptionHandler
    original = FakeCaptionHandler.run_inference
    calls = []

    def run_inference(self, batch, model, inference_args=None):
        calls.append(len(batch))
        if len(calls) == 3:
            raise SimulatedCrash("simulated worker loss")
        return original(self, batch, model, inference_args)
    monkeypatch.setattr(FakeCaptionHandler, "run_inference", run_inference)
    return calls


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def tar_bytes(members, mode: str = "w", fmt: int = tarfile.GNU_FORMAT, encoding: str = "utf-8") -> bytes:
    """A tar archive in memory; members are (name, data) or ready TarInfos without data (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt, encoding=encoding) as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()

