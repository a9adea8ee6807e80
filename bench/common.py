"""Helpers shared by the benchmark scripts: subsets of Flickr8k, timing, medians, peak memory.

Benchmarks are not tests: they print measurements. Competing variants run side by side in one process or one
script run, repeated, and are reported as medians and ratios, because this kind of machine is noisy.
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATASET = os.path.join(REPO_ROOT, "..", "shared", "datasets", "flickr8k")
DEFAULT_WEIGHTS = os.path.expanduser("~/.cache/imcap/xception_imagenet_notop.weights.h5")
IMAGES_DIR = "Flicker8k_Dataset"
TEXT_DIR = "Flickr8k_text"


def read_caption_outputs(output_dir: str, run: int | None = None) -> tuple[list, list]:
    """(caption rows, error rows) in the caption job's output directory (only run ``run``'s shards if given)."""
    import pyarrow.parquet as pq

    from schemas import fileio, tables
    rows = {}
    for table in (tables.CAPTIONS_TABLE, tables.ERRORS_TABLE):
        paths = sorted(fileio.glob(fileio.join(tables.table_dir(output_dir, table), "*.parquet")))
        rows[table] = [row for path in paths if run is None or tables.shard_run(os.path.basename(path)) == run
                       for row in pq.read_table(path).to_pylist()]
    return rows[tables.CAPTIONS_TABLE], rows[tables.ERRORS_TABLE]


def split_names(dataset_dir: str, split: str) -> list[str]:
    path = os.path.join(dataset_dir, TEXT_DIR, f"Flickr_8k.{split}Images.txt")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def image_paths(dataset_dir: str, names: list[str]) -> list[str]:
    return [os.path.join(dataset_dir, IMAGES_DIR, name) for name in names]


def write_split_file(directory: str, split: str, names: list[str]) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{split}-{len(names)}.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    return path


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def median(values) -> float:
    return float(statistics.median(values))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def peak_rss_of_command(command: list[str], env: dict | None = None, cwd: str = REPO_ROOT) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a command run as the only child of a fresh helper process."""
    probe = ("import resource, subprocess, sys, time, json; start = time.perf_counter(); "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(json.dumps({'code': code, 'seconds': time.perf_counter() - start, "
             "'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, env=env, cwd=cwd)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return result["seconds"], result["rss_kib"] / 1024.0


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


def self_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
