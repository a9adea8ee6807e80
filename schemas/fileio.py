"""Small-file I/O for the artifacts defined in `schemas` (vocabulary, metadata, bundle config).

Uses ``tf.io.gfile`` so the same calls work on local paths and on ``gs://`` (and any filesystem TensorFlow has
registered); the stages read and write these files with these helpers only.
"""
import json
import posixpath


def _gfile():
    import tensorflow as tf  # imported lazily: schemas must stay cheap to import
    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', which is right for local POSIX paths and for URLs such as gs://."""
    return posixpath.join(base, *parts)


def exists(path: str) -> bool:
    return _gfile().exists(path)


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern))


def makedirs(path: str) -> None:
    _gfile().makedirs(path)


def read_text(path: str) -> str:
    if not exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with _gfile().GFile(path, "r") as handle:
        return handle.read()


def write_text(path: str, text: str) -> None:
    parent = posixpath.dirname(path)
    if parent:
        makedirs(parent)
    with _gfile().GFile(path, "w") as handle:
        handle.write(text)


def read_json(path: str) -> dict:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
