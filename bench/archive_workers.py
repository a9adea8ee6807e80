"""One archive, many workers: each worker's share of the caption job's CPU on the local multi-process runner.

    python bench/archive_workers.py [--images 1000] [--workers 2 4] [--weights PATH] [--work_dir DIR]

Inputs, from the first N Flickr8k train photos (real photos, ~27 KB each): one .zip, one .tar, one .tar.gz, and the
same photos as 4 tars (the way users spread work before). Each is captioned by a fresh `python -m
beam_jobs.caption_images` with ``--direct_running_mode=multi_processing --direct_num_workers=W``, for each W, and
once more for the single archives with ``--archive_unit_members`` above N (one unit per archive: how the job behaved
before work units). The bundle: a merge decoder trained for one epoch on features of 64 train photos (Xception at
299 px, Keras float32: the cost of a real model; its captions do not matter here).

While a run goes, the CPU time of each SDK worker process (a descendant whose command line runs Beam's worker) is
sampled every 0.5 s; a worker's share is its CPU time over all the workers'. Prints, per input and W: wall seconds,
images/s, each worker's share, and min/max of the shares (the goal: >= 0.75 for two workers, zip and tar).
"""
import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile

from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    REPO_ROOT,
    image_paths,
    machine,
    print_table,
    split_names,
    write_split_file,
)


def _archive(path: str, paths: list[str]) -> str:
    """A tar (plain or gzip, by the name) or a zip of the photos, written once."""
    if not os.path.exists(path):
        if path.endswith(".zip"):
            with zipfile.ZipFile(path, "w") as archive:
                for item in paths:
                    archive.write(item, arcname=os.path.basename(item))
        else:
            with tarfile.open(path, "w:gz" if path.endswith(".gz") else "w") as archive:
                for item in paths:
                    archive.add(item, arcname=os.path.basename(item))
    return path


def write_inputs(paths: list[str], directory: str) -> dict[str, list[str]]:
    os.makedirs(directory, exist_ok=True)
    inputs = {f"one {suffix}": [_archive(os.path.join(directory, f"one{suffix}"), paths)]
              for suffix in (".tar", ".tar.gz", ".zip")}
    inputs["4 tars"] = [_archive(os.path.join(directory, f"part{part}.tar"), paths[part::4]) for part in range(4)]
    return inputs


def build_bundle(dataset_dir: str, weights: str, directory: str) -> str:
    model_dir = os.path.join(directory, "bundle")
    if os.path.exists(os.path.join(model_dir, "bundle.json")):
        return model_dir
    names = split_names(dataset_dir, "train")[:64]
    split_file = write_split_file(directory, "train", names)
    features = os.path.join(directory, "features")
    subprocess.run([sys.executable, "-m", "beam_jobs.extract_features", "--dataset_dir", dataset_dir,
                    "--split_file", f"train={split_file}", "--weights", weights, "--inference_backend", "keras",
                    "--min_word_count", "1", "--output_dir", features, "--overwrite"], cwd=REPO_ROOT, check=True)
    subprocess.run([sys.executable, "-m", "trainer.task", "--data_dir", features, "--model_dir", model_dir,
                    "--decoder", "merge", "--epochs", "1", "--verbose", "0"], cwd=REPO_ROOT, check=True)
    return model_dir


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        children = []
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for thread in threads:  # a process's children are listed by the thread that started each
            try:
                with open(f"/proc/{current}/task/{thread}/children", encoding="ascii") as handle:
                    children += [int(child) for child in handle.read().split()]
            except OSError:
                continue
        found += children
        stack += children
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ")
    except OSError:
        return False
    return b"sdk_worker_main" in command


def run_and_sample(command: list[str]) -> tuple[float, dict[int, float]]:
    """(wall seconds, CPU seconds per worker process) of a command, sampled every 0.5 s."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu, stop = {}, threading.Event()

    def sample():
        while not stop.is_set():
            for pid in _descendants(process.pid):
                if pid not in cpu and not _is_worker(pid):
                    continue
                seconds = _cpu_seconds(pid)
                if seconds is not None:
                    cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{errors[-3000:]}")
    return time.perf_counter() - start, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "imcap-archive-workers"))
    args = parser.parse_args()
    paths = image_paths(args.dataset_dir, split_names(args.dataset_dir, "train")[:args.images])
    inputs = write_inputs(paths, os.path.join(args.work_dir, "inputs"))
    model_dir = build_bundle(args.dataset_dir, args.weights, args.work_dir)
    runs = [(label, workers, None) for workers in args.workers for label in inputs]
    runs += [(label, min(args.workers), args.images + 1) for label in inputs if label.startswith("one")]
    rows = [("input", "workers", "units", "wall s", "images/s", "worker CPU shares", "min/max")]
    for label, workers, unit_members in runs:
        command = [sys.executable, "-m", "beam_jobs.caption_images", "--model_dir", model_dir, "--weights",
                   args.weights, "--output_dir", os.path.join(args.work_dir, "out"), "--overwrite",
                   "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
                   "--input", *inputs[label]]
        if unit_members:
            command += ["--archive_unit_members", str(unit_members)]
        seconds, cpu = run_and_sample(command)
        cpu = {pid: value for pid, value in cpu.items() if value >= 1.0}  # a worker started but given no work
        shares = sorted((value / sum(cpu.values()) for value in cpu.values()), reverse=True)
        shares += [0.0] * (workers - len(shares))  # a worker that did nothing is a share of 0
        row = (label, workers, "one per archive" if unit_members else "32 members", f"{seconds:.1f}",
               f"{args.images / seconds:.1f}", " / ".join(f"{share:.2f}" for share in shares),
               f"{shares[-1] / shares[0]:.2f}" if shares else "-")
        print("  ".join(str(cell) for cell in row), flush=True)
        rows.append(row)
    print_table(f"Caption job, {args.images} Flickr8k photos, local multi-process runner ({machine()})", rows)


if __name__ == "__main__":
    main()
