"""Compares two `make demo` output directories: the records, vocabulary, metadata, int8 model, bundle decisions and
captions a refactoring must leave unchanged.

    make demo DEMO_DIR=/tmp/demo_before     # on the old commit
    make demo DEMO_DIR=/tmp/demo_after      # on the new one
    python bench/compare_demo.py /tmp/demo_before /tmp/demo_after

Records are compared example by example (sorted by image id; every feature, bytes and floats exactly); metadata.json
and bundle.json without what names the directory, times and speeds; the caption table row by row (image URIs relative to
each directory). Prints one line per artifact and exits 1 when any differs.
"""
import glob
import json
import os
import sys

import pyarrow.parquet as pq
import tensorflow as tf


def examples(directory: str) -> dict:
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "features", "*.tfrecord"))):
        split = os.path.basename(path).split("-")[0]
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = tf.train.Example.FromString(raw)
            features = {key: example.features.feature[key].SerializeToString(deterministic=True)
                        for key in sorted(example.features.feature)}
            key = example.features.feature["image_id"].bytes_list.value[0] if "image_id" in features else raw[:64]
            found[(split, key)] = features
    return found


def without_paths(value, root: str):
    """A JSON value with the directory's own path taken out of every string, and times dropped."""
    if isinstance(value, dict):
        return {key: without_paths(item, root) for key, item in value.items()
                if not any(word in key for word in ("time", "seconds", "per_second", "created", "date"))}
    if isinstance(value, list):
        return [without_paths(item, root) for item in value]
    if isinstance(value, str):
        return value.replace(os.path.abspath(root), "<DIR>").replace(root.rstrip("/"), "<DIR>")
    return value


def json_of(directory: str, relative: str):
    with open(os.path.join(directory, relative), encoding="utf-8") as handle:
        return without_paths(json.load(handle), directory)


def caption_rows(directory: str, table: str) -> list:
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "captions", table, "*.parquet"))):
        for row in pq.read_table(path).to_pylist():
            rows.append(without_paths(row, directory))
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def read_bytes(directory: str, relative: str) -> bytes:
    with open(os.path.join(directory, relative), "rb") as handle:
        return handle.read()


def main(before: str, after: str) -> int:
    checks = {
        "records (every example, every feature)": (examples(before), examples(after)),
        "features/vocab.txt": (read_bytes(before, "features/vocab.txt"), read_bytes(after, "features/vocab.txt")),
        "features/metadata.json": (json_of(before, "features/metadata.json"), json_of(after, "features/metadata.json")),
        "features/extractor_int8/extractor.bin": (read_bytes(before, "features/extractor_int8/extractor.bin"),
                                                  read_bytes(after, "features/extractor_int8/extractor.bin")),
        "model/bundle.json": (json_of(before, "model/bundle.json"), json_of(after, "model/bundle.json")),
        "captions table": (caption_rows(before, "captions"), caption_rows(after, "captions")),
        "errors table": (caption_rows(before, "errors"), caption_rows(after, "errors")),
    }
    different = 0
    for name, (old, new) in checks.items():
        size = len(old) if hasattr(old, "__len__") else ""
        same = old == new
        different += not same
        unit = "bytes" if isinstance(old, bytes) else "items"
        print(f"{'identical' if same else 'DIFFERENT'}  {name} ({size} {unit})")
    return 1 if different else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
