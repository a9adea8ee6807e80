"""The caption job's two tables read as the README says, with every reader that is installed.

    python bench/read_tables.py [--work_dir DIR]

Runs the caption job (tiny random-init bundle, as bench/hostile_corpus.py builds it) on a few photos, a broken
file and an archive, in an output directory that already holds a neighbour's files, then runs the README's
reading examples, extracted from docs/captioning.md itself (the indented block after "Read each folder as one table"),
with ``out/run1`` replaced by the job's output directory. Prints, per reader, the rows it read from each table, and
checks: captions + errors = every input; no reader sees an error row among the captions or the other way round;
the neighbour's files are untouched. A reader whose library is not installed is reported as skipped. Exit status
1 if a check fails.
"""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
from common import REPO_ROOT
from PIL import Image

sys.path.insert(0, REPO_ROOT)
from archive_scale import tiny_bundle  # noqa: E402  (the benches' tiny bundle recipe)

README_MARKER = "Read each folder as one table:"


def readme_examples() -> list[str]:
    """The README's reading examples: blocks of code separated by blank lines, one per library."""
    with open(os.path.join(REPO_ROOT, "docs", "captioning.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = text.split(README_MARKER, 1)[1].lstrip("\n")
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return [chunk.strip() for chunk in "\n".join(lines).split("\n\n") if chunk.strip()]


def build_inputs(root: str) -> tuple[list[str], int]:
    """A folder of photos, a broken photo and a tar of photos: (inputs, how many input images)."""
    os.makedirs(os.path.join(root, "photos"))
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            os.path.join(root, "photos", f"p{index}.jpg"))
    with open(os.path.join(root, "photos", "broken.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8\xff not really")
    archive = os.path.join(root, "batch.tar")
    with tarfile.open(archive, "w") as tar:
        for index in range(3):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"m{index}.png")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return [os.path.join(root, "photos"), archive], 9


def _row_count(table) -> int | None:
    """Rows of whatever a reader returned (a pandas frame, an Arrow table, a Hugging Face dataset), or None."""
    if table is None:
        return None
    return table.num_rows if hasattr(table, "num_rows") else len(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="imcap-read-tables-")
    inputs, expected = build_inputs(os.path.join(work, "inputs"))
    model_dir = tiny_bundle(work)[0]
    folder = os.path.join(work, "out")
    os.makedirs(folder, exist_ok=True)
    neighbours = {os.path.join(folder, "run1-other-00000-of-00001.parquet"): b"a neighbour's shard",
                  os.path.join(folder, "notes.txt"): b"notes"}
    for path, data in neighbours.items():
        with open(path, "wb") as handle:
            handle.write(data)
    out = os.path.join(folder, "run1")
    subprocess.run([sys.executable, "-m", "beam_jobs.caption_images", "--input", *inputs, "--model_dir", model_dir,
                    "--weights", "none", "--output_dir", out, "--overwrite"], cwd=REPO_ROOT, check=True)
    failures = [f"{path} changed" for path, data in neighbours.items() if open(path, "rb").read() != data]
    print(f"\n{'reader':<12} {'captions':>9} {'errors':>7}  notes")
    for example in readme_examples():
        library = re.match(r"import ([\w.]+)", example).group(1).split(".")[0]
        code = example.replace("out/run1", out)
        scope = {}
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(compile(code, f"README:{library}", "exec"), scope)  # pylint: disable=exec-used
        except ModuleNotFoundError as error:
            print(f"{library:<12} {'-':>9} {'-':>7}  skipped: {error}")
            continue
        captions, errors = scope.get("captions"), scope.get("errors")
        n_captions, n_errors = _row_count(captions), _row_count(errors)
        names = getattr(captions, "column_names", None)
        columns = list(names if names is not None else getattr(captions, "columns", []))
        if captions is not None and "error" in columns:
            failures.append(f"{library}: error columns among the captions")
        if n_captions is not None and n_errors is not None and n_captions + n_errors != expected:
            failures.append(f"{library}: {n_captions} + {n_errors} rows for {expected} inputs")
        note = printed.getvalue().strip().replace("\n", " | ")[:120]
        print(f"{library:<12} {n_captions if n_captions is not None else '':>9} "
              f"{n_errors if n_errors is not None else '':>7}  {note}")
    print("\n" + ("\n".join(failures) if failures else "every reader read each table as one table; neighbours "
                                                        "untouched"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
