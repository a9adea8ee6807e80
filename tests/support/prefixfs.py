"""An in-memory Beam filesystem whose "directories" are only name prefixes, as on GCS and S3 (tests only).

Importing this module registers the ``prefixfs://`` scheme with Beam (a `FileSystem` subclass is found by its
scheme, as in Beam's own filesystem_test.py). Objects live in one dict per process, so the jobs must run in-process
(the LocalRunner) to see them. As on GCS: there are no directory objects (``exists('prefixfs://b/dir')`` is False
even when ``prefixfs://b/dir/x`` exists), ``mkdirs`` does nothing, a path ending in ``/`` deletes every object under
it, and deleting a path that names no object deletes nothing.
"""
import io
import threading
import time

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "prefixfs"
_objects: dict[str, tuple[bytes, float]] = {}
_lock = threading.Lock()


def clear() -> None:
    with _lock:
        _objects.clear()


def paths(prefix: str = f"{SCHEME}://") -> list[str]:
    with _lock:
        return sorted(path for path in _objects if path.startswith(prefix))


def put(path: str, data: bytes) -> None:
    with _lock:
        _objects[path] = (bytes(data), time.time())


def delete_object(path: str) -> None:
    with _lock:
        del _objects[path]


def get(path: str) -> bytes:
    with _lock:
        return _objects[path][0]


class _ObjectWriter(io.BytesIO):
    """Becomes an object when closed, in one piece (as an upload does)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            put(self._path, self.getvalue())
        super().close()


class PrefixFileSystem(FileSystem):

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        path = basepath
        for part in paths:
            path = path.rstrip("/") + "/" + part.lstrip("/")
        return path

    def split(self, path):
        stripped = path.rstrip("/")
        head, _, tail = stripped.rpartition("/")
        if head.endswith(":/"):  # 'prefixfs://bucket' is a root
            return stripped, ""
        return head, tail

    def mkdirs(self, path):
        pass  # nothing to make: a "directory" exists when an object's name starts with it

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with _lock:
            listed = [(path, len(data), stamp) for path, (data, stamp) in _objects.items()
                      if path.startswith(dir_or_prefix)]
        for path, size, stamp in listed:
            yield FileMetadata(path, size, stamp)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        self._check_compression(path, compression_type)
        return _ObjectWriter(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        self._check_compression(path, compression_type)
        with _lock:
            if path not in _objects:
                raise FileNotFoundError(f"{path}: no such object")
            return io.BytesIO(_objects[path][0])

    @staticmethod
    def _check_compression(path, compression_type):
        if compression_type not in (CompressionTypes.AUTO, CompressionTypes.UNCOMPRESSED):
            raise ValueError(f"prefixfs does not compress ({compression_type})")
        if compression_type == CompressionTypes.AUTO and CompressionTypes.detect_compression_type(path) != \
                CompressionTypes.UNCOMPRESSED:
            raise ValueError(f"prefixfs does not compress ({path})")

    def copy(self, source_file_names, destination_file_names):
        errors = {}
        for source, destination in zip(source_file_names, destination_file_names):
            with _lock:
                if source in _objects:
                    _objects[destination] = (_objects[source][0], time.time())
                else:
                    errors[(source, destination)] = FileNotFoundError(source)
        if errors:
            raise BeamIOError("copy failed", errors)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        with _lock:
            for source in source_file_names:
                _objects.pop(source, None)

    def exists(self, path):
        with _lock:
            return path in _objects

    def size(self, path):
        return self.metadata(path).size_in_bytes

    def last_updated(self, path):
        return self.metadata(path).last_updated_in_seconds

    def checksum(self, path):
        return str(hash(get(path)))

    def metadata(self, path):
        with _lock:
            if path not in _objects:
                raise BeamIOError("metadata failed", {path: FileNotFoundError(path)})
            data, stamp = _objects[path]
        return FileMetadata(path, len(data), stamp)

    def delete(self, paths):
        with _lock:
            for path in paths:
                if path.endswith("/"):
                    for name in [name for name in _objects if name.startswith(path)]:
                        del _objects[name]
                else:
                    _objects.pop(path, None)
