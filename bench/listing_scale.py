"""Listing a folder of 100k+ files: the caption job's streamed walk against Beam's match, time and memory.

    python bench/listing_scale.py [--files 200000] [--work_dir DIR]

Writes --files empty ``.jpg`` files (1,000 per folder) under --work_dir once, then in a fresh process per case
lists ``DIR/**`` and counts the paths: Beam's ``FileSystems.match`` (what the job used: one list of every match,
held by the worker that lists), and ``beam_jobs.caption.inputs._walk_local`` (what it uses now: paths handed on one by
one as found, one folder's names held at a time). Prints seconds and the peak RSS each added over the process after
imports, and the same for ``DIR/f00*/*.jpg`` (the walk descends only into the folders the glob can match).
"""
import argparse
import os
import subprocess
import sys
import tempfile

from common import REPO_ROOT, machine, print_table

CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from apache_beam.io.filesystems import FileSystems
from beam_jobs import inputs
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if {how!r} == "beam":
    count = len(FileSystems.match([{pattern!r}])[0].metadata_list)
else:
    count = sum(1 for kind, _ in inputs._walk_local({pattern!r}) if kind == inputs.INPUT)
seconds = time.perf_counter() - start
print(json.dumps({{"count": count, "seconds": seconds,
                  "added_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}}))
"""


def write_files(directory: str, count: int) -> None:
    done = os.path.join(directory, f".done-{count}")
    if os.path.exists(done):
        return
    for index in range(count):
        folder = os.path.join(directory, f"f{index // 1000:04d}")
        if index % 1000 == 0:
            os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, f"photo_{index:07d}.jpg"), "wb").close()
    open(done, "w").close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "imcap-listing"))
    args = parser.parse_args()
    tree = os.path.join(args.work_dir, "tree")
    write_files(tree, args.files)
    import json
    rows = [("pattern", "lister", "paths", "seconds", "peak RSS added MiB")]
    for pattern in (os.path.join(tree, "**"), os.path.join(tree, "f00*", "*.jpg")):
        for how in ("beam", "walk"):
            code = CASE.format(root=REPO_ROOT, how=how, pattern=pattern)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((os.path.relpath(pattern, args.work_dir), "Beam match" if how == "beam" else "streamed walk",
                         f"{result['count']:,}", f"{result['seconds']:.2f}", f"{result['added_mib']:.0f}"))
            print(rows[-1], flush=True)
    print_table(f"Listing {args.files:,} files ({machine()})", rows)


if __name__ == "__main__":
    main()
