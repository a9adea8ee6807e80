"""Small-file I/O for the artifacts defined in `schemas` (vocabulary, metadata, bundle config).

Local paths are read and written with Python's own file functions; URLs (``gs://`` and any filesystem TensorFlow
has registered) with ``tf.io.gfile``, imported only then, so that reading a bundle's config or a vocabulary from
local disk costs no TensorFlow import. The stages read and write these files with these helpers only.
"""
import glob as local_glob
import json
import os
import posixpath
import sys


def _remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # imported lazily: schemas must stay cheap to import
    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', which is right for local POSIX paths and for URLs such as gs://."""
    return posixpath.join(base, *parts)


def exists(path: str) -> bool:
    return _gfile().exists(path) if _remote(path) else os.path.exists(path)


def glob(pattern: str) -> list[str]:
    if _remote(pattern) or sys.version_info < (3, 11):  # 3.10's glob has no include_hidden: gfile's matches '.a'
        return sorted(_gfile().glob(pattern))
    return sorted(local_glob.glob(pattern, include_hidden=True))


def makedirs(path: str) -> None:
    if _remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    if not exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not _remote(path):
        with open(path, encoding="utf-8", newline="") as handle:  # line ends as stored, as gfile reads them
            return handle.read()
    with _gfile().GFile(path, "r") as handle:
        return handle.read()


def write_text(path: str, text: str) -> None:
    parent = posixpath.dirname(path)
    if parent:
        makedirs(parent)
    if not _remote(path):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        return
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
