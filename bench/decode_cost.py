"""What decoding costs: memory of a 16 MP 16-bit PNG, time of big JPEGs, and whether pixels changed between revisions.

    python bench/decode_cost.py [--against REV] [--dev_images 1000]

1. Peak memory (Linux VmHWM, reset just before the call) to prepare a 4000x4000 16-bit grayscale PNG for a 299 px
   backbone, in a fresh process: this checkout's `schemas.images.prepare_image` (and REV's, with --against).
2. Milliseconds per image to prepare a 2400x1800 JPEG (about 1.2 MB) at 299 px: with the DCT-domain reduced decoding
   (Pillow's draft, what the jobs do) and with a full decode.
3. With --against REV: `prepare_image` of this checkout against REV's (``git show REV:schemas/images.py``) on the
   Flickr8k dev photos at 299 px and on 2400x1800 versions of them: how many give identical pixels (identical
   pixels mean identical features, cosine 1).
"""
import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import DEFAULT_DATASET, REPO_ROOT, image_paths, machine, median, print_table, split_names
from PIL import Image

PROBE = r"""
import importlib.util, json, sys
sys.path.insert(0, {repo!r})
spec = importlib.util.spec_from_file_location("images_under_test", {module!r})
images = importlib.util.module_from_spec(spec); spec.loader.exec_module(images)
data = open({path!r}, "rb").read()

def status(field):  # kB
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to what is resident now
before = status("VmRSS")
pixels = images.prepare_image(data, 299)[0]
print(json.dumps({{"delta_mib": (status("VmHWM") - before) / 1024, "shape": list(pixels.shape)}}))
"""


def sixteen_bit_png(path: str) -> None:
    rows = np.linspace(0, 65535, 4000, dtype=np.float64)
    pixels = (rows[:, None] * 0.5 + rows[None, :] * 0.5).astype(np.uint16)
    Image.fromarray(pixels).save(path, format="PNG")


def memory_of(path: str, module: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=REPO_ROOT, path=path, module=module)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["delta_mib"]


def big_jpeg(path: str) -> bytes:
    image = Image.open(path).convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0.0, 6.0, (1800, 2400, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def file_at(revision: str) -> str:
    source = subprocess.run(["git", "show", f"{revision}:schemas/images.py"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "images_at_revision.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(source)
    return path


def module_at(revision: str):
    path = file_at(revision)
    spec = importlib.util.spec_from_file_location("images_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--against", help="a git revision whose prepare_image to compare pixels with")
    parser.add_argument("--dev_images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    from schemas import images
    print(machine())

    with tempfile.TemporaryDirectory() as scratch:
        png = os.path.join(scratch, "gray16.png")
        sixteen_bit_png(png)
        variants = {"this checkout": os.path.join(REPO_ROOT, "schemas", "images.py")}
        if args.against:
            variants[args.against] = file_at(args.against)
        added = {name: median([memory_of(png, module) for _ in range(args.repeats)])
                 for name, module in variants.items()}
    print_table(f"Peak memory added by preparing a 4000x4000 16-bit PNG at 299 px (medians of {args.repeats})",
                [("prepare_image of", "MiB")] + [(name, f"{value:.0f}") for name, value in added.items()])

    dev = split_names(args.dataset_dir, "dev")[:args.dev_images]
    paths = image_paths(args.dataset_dir, dev)
    data = big_jpeg(paths[0])
    timings = {"reduced-size JPEG decoding (draft), as the jobs do": [], "full decoding": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(20):
            images.prepare_image(data, 299)
        timings["reduced-size JPEG decoding (draft), as the jobs do"].append((time.perf_counter() - start) / 20)
        start = time.perf_counter()
        for _ in range(20):
            images.resize_pixels(images.to_rgb(Image.open(io.BytesIO(data))), 299)
        timings["full decoding"].append((time.perf_counter() - start) / 20)
    print_table(f"Preparing a 2400x1800 JPEG ({len(data) / 1e6:.2f} MB) at 299 px", [("decoding", "ms per image")] + [
        (name, f"{median(values) * 1000:.1f}") for name, values in timings.items()])

    if args.against:
        previous = module_at(args.against)
        identical = {"224 px dev photos": 0, "2400x1800 versions": 0}
        for path in paths:
            small = open(path, "rb").read()
            identical["224 px dev photos"] += np.array_equal(previous.prepare_image(small, 299)[0],
                                                             images.prepare_image(small, 299)[0])
        for path in paths[:100]:
            big = big_jpeg(path)
            identical["2400x1800 versions"] += np.array_equal(previous.prepare_image(big, 299)[0],
                                                              images.prepare_image(big, 299)[0])
        print_table(f"prepare_image pixels identical to {args.against}'s", [("photos", "identical")] + [
            ("224 px dev photos", f"{identical['224 px dev photos']} of {len(paths)}"),
            ("2400x1800 versions", f"{identical['2400x1800 versions']} of {min(100, len(paths))}")])


if __name__ == "__main__":
    main()
