"""Reading list files: seconds and peak RSS of `beam_jobs.caption.inputs._lines` over a ~96 MB list with LF, CRLF or CR
line ends, before and after its rewrite (a CR-only list used to defeat the 64 KiB line cap: it was held whole and
grown chunk by chunk).

    python bench/list_lines.py [--megabytes 96] [--old /tmp/old_main] [--work_dir DIR]

Writes the same entries (``photos/2024/june/IMG_0000001.jpg``, ...) three times, once per line end, then reads each
list with each implementation in a fresh process, so that each peak RSS is its case's own. The implementation
before the rewrite is loaded from ``OLD/beam_jobs/inputs.py`` (a checkout of the older code) when that file exists.
"""
import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from common import REPO_ROOT, machine, print_table

LINE_ENDS = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}
ENTRY = b"photos/2024/june/IMG_%07d.jpg"


def write_list(path: str, line_end: bytes, megabytes: int) -> int:
    """A list of about ``megabytes`` MB; its number of entries."""
    entries = megabytes * 1_000_000 // (len(ENTRY % 0) + len(line_end))
    blocks = (b"".join(ENTRY % number + line_end for number in range(start, min(start + 100_000, entries)))
              for start in range(0, entries, 100_000))
    with open(path, "wb") as handle:
        handle.writelines(blocks)
    return entries


def load_lines(implementation: str):
    """`_lines` of this checkout ("new") or of the checkout at ``implementation`` (a directory)."""
    sys.path.insert(0, REPO_ROOT)
    if implementation == "new":
        from beam_jobs.caption import inputs
        return inputs._lines, inputs.MAX_LIST_LINE_BYTES
    spec = importlib.util.spec_from_file_location("old_inputs", os.path.join(implementation, "beam_jobs", "inputs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._lines, module.MAX_LIST_LINE_BYTES


def run_case(implementation: str, path: str) -> dict:
    """Reads one list with one implementation, in this process (a fresh one per case)."""
    lines, max_bytes = load_lines(implementation)
    from schemas import fileio
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    count = too_long = 0
    with fileio.open_read(path) as stream:  # as the job opens a list
        for line in lines(stream, max_bytes):
            count += 1
            too_long += line is None
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "lines": count, "too_long": too_long, "rss_before_mib": before_kib / 1024,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=96)
    parser.add_argument("--old", default="/tmp/old_main", help="a checkout of the code before the rewrite")
    parser.add_argument("--work_dir", default=None, help="where to write the lists (default: a temporary directory)")
    parser.add_argument("--case", nargs=2, metavar=("IMPLEMENTATION", "LIST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="list_lines_")
    os.makedirs(work_dir, exist_ok=True)
    implementations = ["new"]
    if os.path.exists(os.path.join(args.old, "beam_jobs", "inputs.py")):
        implementations.insert(0, args.old)
    else:
        print(f"no {args.old}/beam_jobs/inputs.py: only this checkout's implementation is measured")
    print(machine())
    rows = [("line ends", "implementation", "entries", "lines read", "too long", "seconds", "RSS after import MiB",
             "peak RSS MiB")]
    try:
        for name, line_end in LINE_ENDS.items():
            path = os.path.join(work_dir, f"list_{name}.txt")
            entries = write_list(path, line_end, args.megabytes)
            size = os.path.getsize(path)
            for implementation in implementations:
                done = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", implementation, path],
                                      capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((f"{name} ({size / 1e6:.0f} MB)", "old" if implementation != "new" else "new",
                             f"{entries:,}", f"{result['lines']:,}", result["too_long"], f"{result['seconds']:.2f}",
                             f"{result['rss_before_mib']:.0f}", f"{result['peak_rss_mib']:.0f}"))
            os.remove(path)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_table(f"inputs._lines over a list of ~{args.megabytes} MB (each case in a fresh process)", rows)


if __name__ == "__main__":
    main()
