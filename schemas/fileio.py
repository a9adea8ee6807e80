"""The one file layer of every stage: Beam's `FileSystems`, so that every scheme Beam reads (local paths, ``gs://``,
``s3://``, and any filesystem registered with Beam) works for datasets, images, archives, records, bundles, weights
and the jobs' outputs alike.

    fileio.read_json(path); fileio.write_text(path, text); fileio.glob(pattern)
    with fileio.open_read(uri) as stream: ...            # the stored bytes, seekable, no decompression by name
    fileio.local_copy(path)                               # for libraries that only open local files (Keras, TF)
    fileio.delete_owned(root, paths, directories)         # how the jobs delete: only their own files

Local paths that are FIFOs, devices or directories are refused before they are opened (reading one would block or
never end): `NotARegularFile`. `delete_owned` deletes only the paths it is given (names the caller matched against
its own naming rules), only regular files, never through a symbolic link, and directories only when empty.
"""
import hashlib
import json
import logging
import os
import posixpath
import stat
import tempfile
import urllib.parse

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', which is right for local POSIX paths and for URLs such as gs://."""
    return posixpath.join(base, *parts)


def local_path(path: str) -> str | None:
    """The local path of a path or ``file://`` URI; None for another filesystem's."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # no filesystem for its scheme, or one that cannot say
        return False


def path_of(uri: str) -> str:
    """The path to open for a file URI as the outputs spell it (the inverse of `text_path`)."""
    if uri.startswith("file://"):
        return urllib.parse.unquote_to_bytes(uri[len("file://"):]).decode("utf-8", "surrogateescape")
    return uri


def glob(pattern: str) -> list[str]:
    """The paths a glob matches on any Beam filesystem, sorted; none when nothing matches (some filesystems raise)."""
    try:
        return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # BeamIOError when nothing matches on some filesystems
        return []


def makedirs(path: str) -> None:
    """A directory and its parents (nothing to do on object stores, whose directories are name prefixes)."""
    local = local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=True)
    else:
        FileSystems.mkdirs(path)


class NotARegularFile(OSError):
    """A local path that is a directory, device, FIFO or socket: reading it could block or never end."""


class FileTooLarge(ValueError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"{size:,} bytes or more is above the limit of {limit:,}")
        self.size, self.limit = size, limit


def check_regular_file(uri: str) -> None:
    """Raises FileNotFoundError or `NotARegularFile` for a local path that cannot be read as a file."""
    path = local_path(uri)
    if path is None:
        return
    mode = os.stat(path).st_mode  # follows symbolic links: a link to /dev/zero is a device
    if not stat.S_ISREG(mode):
        what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise NotARegularFile(f"{what}, not a regular file")


def open_read(uri: str):
    """A binary, seekable stream of the stored bytes (no decompression by file extension)."""
    check_regular_file(uri)
    if not exists(uri) and local_path(uri) is None:
        raise FileNotFoundError(f"{uri}: no such file")
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """All bytes of a file, as stored; `FileTooLarge` past ``max_bytes``."""
    with open_read(uri) as handle:
        if max_bytes is None:
            return handle.read()
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(len(data), max_bytes)
    return data


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file whole (its parent made first where directories exist)."""
    parent = posixpath.dirname(path)
    if parent and local_path(path) is not None:
        makedirs(parent)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as sink:
        sink.write(data)


def read_text(path: str) -> str:
    """A UTF-8 text file, its line ends as stored."""
    try:
        return read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> dict:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_local_atomically(target: str, write, suffix: str = ".partial") -> str:
    """Writes the local file ``target`` with ``write(temporary_path)`` into a temporary file beside it, then renames
    it over ``target``: a reader, a concurrent writer or a kill never sees half a file. ``suffix``: the temporary
    file's (Keras wants ``.weights.h5``). Returns ``target``."""
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def _copy_to(path: str, local: str) -> None:
    with open_read(path) as source, open(local, "wb") as sink:
        while chunk := source.read(1 << 24):
            sink.write(chunk)


def local_copy(path: str) -> str:
    """A local copy of a file on any Beam filesystem (the path itself when it is local), for the libraries that open
    only local files (Keras' weights and models, OpenVINO).

    The copy is named after the file's path and its version (size and modification time, where the filesystem
    reports one), so a file replaced under the same name is copied again; the copies of older versions of the same
    path are removed then."""
    if local_path(path) is not None:
        return local_path(path)
    try:
        metadata = FileSystems.get_filesystem(path).metadata(path)  # the path itself, never a glob
    except Exception as error:
        if not FileSystems.exists(path):
            raise FileNotFoundError(f"{path}: no such file") from None
        raise ValueError(f"{path}: cannot read its size and modification time ({error})") from None
    if not metadata.last_updated_in_seconds:
        logging.info("%s: its filesystem reports no modification time; a replacement of the same size is not "
                     "noticed by the local copy", path)
    version = f"{metadata.size_in_bytes}\0{metadata.last_updated_in_seconds}"
    stem = "imcap-" + hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]
    suffix = "-" + posixpath.basename(path)
    target = os.path.join(tempfile.gettempdir(),
                          f"{stem}-{hashlib.sha256(version.encode('utf-8')).hexdigest()[:8]}{suffix}")
    if not os.path.exists(target):
        write_local_atomically(target, lambda local: _copy_to(path, local))  # concurrent copies are harmless
        for older in os.listdir(os.path.dirname(target)):
            if older.startswith(stem + "-") and older.endswith(suffix) and older != os.path.basename(target):
                try:
                    os.remove(os.path.join(os.path.dirname(target), older))
                except OSError:  # another process removed it first
                    pass
    return target


# ---------------------------------------------------------------------------------------------------------------
# Deleting: only the jobs' own files


def _linked_component(root: str, path: str) -> str | None:
    """The first component of ``path`` below ``root`` that is a symbolic link (the file itself included), if any;
    ``root`` itself may be a link (the user named it)."""
    root, path = os.path.abspath(root), os.path.abspath(path)
    relative = os.path.relpath(path, root)
    if relative == os.curdir or relative.startswith(os.pardir):
        return path if os.path.islink(path) else None
    current = root
    for part in relative.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            return current
    return None


def _refusal(root: str, path: str) -> str | None:
    """Why ``path`` must not be deleted (a link on the way, or not a regular file), or None (gone, or deletable)."""
    local = local_path(path)
    if local is None:
        return None
    try:
        mode = os.lstat(local).st_mode
    except FileNotFoundError:
        return None
    link = _linked_component(local_path(root) or root, local)
    if link is not None:
        return f"{link} is a symbolic link"
    return None if stat.S_ISREG(mode) else "not a regular file"


def undeletable(root: str, paths) -> list[str]:
    """The paths `delete_owned` would refuse: check them all before deleting any."""
    return [path for path in paths if _refusal(root, path)]


def delete_owned(root: str, paths, directories=()) -> list[str]:
    """Deletes the given files under ``root`` (then ``directories``, deepest first, where they are left empty);
    returns the paths it refused to delete (a symbolic link, something under a linked folder, not a regular file).

    Local paths are checked with lstat, component by component below ``root``; object stores have no links and no
    directories (their "folders" vanish with their last object)."""
    refused = []
    for path in paths:
        local = local_path(path)
        if local is None:
            try:
                FileSystems.delete([path])
            except Exception as error:  # already gone (a concurrent cleanup), or the filesystem's own error
                if FileSystems.exists(path):
                    raise OSError(f"cannot delete {path}: {error}") from error
            continue
        why = _refusal(root, path)
        if why:
            refused.append(path)
            logging.warning("not deleting %s: %s", path, why)
            continue
        try:
            os.unlink(local)
        except FileNotFoundError:  # gone meanwhile
            pass
    for directory in sorted(directories, key=lambda d: -d.count("/")):
        local = local_path(directory)
        if local is None or os.path.islink(local) or not os.path.isdir(local):
            continue
        try:
            os.rmdir(local)  # only when empty: a file someone else put there keeps it
        except OSError:
            pass
    return refused
