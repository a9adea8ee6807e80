"""Peak memory of preparing one big image for the backbone, per colour mode: this checkout's `prepare_image` beside
an older `schemas/images.py` (the one before the row-block conversion, when it is at hand).

    python bench/image_memory.py [--old /tmp/old_main/schemas/images.py] [--side 9950] [--image_size 299]
                                 [--cases rgba_png,rgb_png,...]

Each case runs in a fresh process that reads the file, resets Linux's peak RSS (VmHWM, by writing 5 to
/proc/self/clear_refs) and prepares the image once; the figure is the peak minus what was resident just before.
(tracemalloc does not see Pillow's C allocations, so it cannot measure this.) The images -- 99 megapixels (9950 x
9950) in the modes the jobs decode (RGBA, RGB, LA, P with transparency, CMYK, 16-bit and 32-bit float grayscale),
a 9 MP RGBA picture 9 pixels wide (which Pillow resizes down first), and a 12 MP JPEG photo -- are smooth
gradients generated once into a temporary folder (PNG at compression level 1); the whole run takes a minute or two.
Where both versions ran, their pixels are compared. Without --old, and without /tmp/old_main, only this checkout is
measured.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import REPO_ROOT, machine, print_table
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # this script makes its 99 MP images itself: Pillow's bomb warning is noise here

DEFAULT_OLD = "/tmp/old_main/schemas/images.py"
CURRENT = os.path.join(REPO_ROOT, "schemas", "images.py")

PROBE = r"""
import importlib.util, json, resource, sys, time
import numpy as np
module_path, image_path, image_size, pixels_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = importlib.util.spec_from_file_location("images_under_test", module_path)
images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(images)
data = open(image_path, "rb").read()

def status_kib(field):
    with open("/proc/self/status") as handle:
        return int(next(line.split()[1] for line in handle if line.startswith(field + ":")))

try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak (VmHWM) starts again from what is resident now
    before, peak = status_kib("VmRSS"), lambda: status_kib("VmHWM")
except OSError:  # no resettable peak: the process's own peak so far (it only read the file) is the baseline
    before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, \
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
pixels = images.prepare_image(data, image_size)[0]
seconds = time.perf_counter() - start
added = peak() - before
np.save(pixels_path, pixels)
print(json.dumps({"added_mib": added / 1024, "seconds": seconds}))
"""


def _gradients(side: int) -> tuple[Image.Image, Image.Image, Image.Image, Image.Image]:
    """Four smooth 8-bit pictures (across, down, rings, rings off-centre): cheap to make at 99 MP."""
    across = Image.linear_gradient("L").rotate(90).resize((side, side), Image.Resampling.BILINEAR)
    down = Image.linear_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    rings = Image.radial_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    shifted = Image.radial_gradient("L").crop((0, 0, 192, 192)).resize((side, side), Image.Resampling.BILINEAR)
    return across, down, rings, shifted


def _tall_rgba(side: int) -> Image.Image:
    """side / 1000 by side x 100 pixels (9 x 995,000 for 9950): more than 100 times as tall as it is wide, which
    Pillow resizes down first."""
    size = (max(1, side // 1000), side * 100)
    return Image.merge("RGBA", [Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)] * 4)


def _save(image: Image.Image, path: str, fmt: str, **options) -> str:
    image.save(path, format=fmt, **options)
    return path


def make_images(folder: str, side: int, wanted: list[str]) -> dict[str, str]:
    """{case: path} of the generated images; each picture is dropped once written."""
    across, down, rings, shifted = _gradients(side)
    makers = {
        "rgba_png": lambda path: _save(Image.merge("RGBA", (across, down, rings, shifted)), path, "PNG",
                                       compress_level=1),
        "rgb_png": lambda path: _save(Image.merge("RGB", (across, down, rings)), path, "PNG", compress_level=1),
        "la_png": lambda path: _save(Image.merge("LA", (across, rings)), path, "PNG", compress_level=1),
        "p_transparency_png": lambda path: _save(across.convert("P"), path, "PNG", compress_level=1,
                                                 transparency=bytes(range(255, -1, -1))),
        "cmyk_tiff": lambda path: _save(Image.merge("CMYK", (across, down, rings, shifted)), path, "TIFF",
                                        compression="tiff_adobe_deflate"),
        "cmyk_jpeg": lambda path: _save(Image.merge("CMYK", (across, down, rings, shifted)), path, "JPEG",
                                        quality=90),
        "gray16_png": lambda path: _save(Image.fromarray(np.asarray(across, dtype=np.uint16) * 257
                                                         + np.asarray(rings, dtype=np.uint16)), path, "PNG",
                                         compress_level=1),
        "float_tiff": lambda path: _save(across.convert("F"), path, "TIFF", compression="tiff_adobe_deflate"),
        "tall_rgba_png": lambda path: _save(_tall_rgba(side), path, "PNG", compress_level=1),
        "rgb_jpeg_12mp": lambda path: _save(Image.merge("RGB", (across, down, rings)).resize((4000, 3000)), path,
                                            "JPEG", quality=92),
    }
    paths = {}
    for case in wanted:
        start = time.perf_counter()
        paths[case] = makers[case](os.path.join(folder, case))
        print(f"  made {case}: {os.path.getsize(paths[case]) / 2**20:,.0f} MiB file in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return paths


CASES = ["rgba_png", "rgb_png", "la_png", "p_transparency_png", "cmyk_tiff", "cmyk_jpeg", "gray16_png", "float_tiff",
         "tall_rgba_png", "rgb_jpeg_12mp"]


def measure(module: str, image: str, image_size: int, pixels_path: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, module, image, str(image_size), pixels_path],
                          check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"preparing {image} with {module} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default=DEFAULT_OLD if os.path.exists(DEFAULT_OLD) else None,
                        help="an older schemas/images.py to measure beside this checkout's")
    parser.add_argument("--side", type=int, default=9950, help="width and height of the big images")
    parser.add_argument("--image_size", type=int, default=299)
    parser.add_argument("--cases", default=",".join(CASES), help=f"some of {','.join(CASES)}")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    versions = {"new": CURRENT} | ({"old": args.old} if args.old else {})
    print(machine())
    print(f"this checkout: {CURRENT}; old: {args.old or 'none'}")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(folder, args.side, wanted)
        results = {}
        for case in wanted:
            with Image.open(paths[case]) as opened:
                megapixels, mode = opened.width * opened.height / 1e6, opened.mode
            results[case] = {"megapixels": megapixels, "mode": mode}
            for version, module in versions.items():
                pixels_path = os.path.join(folder, f"{case}-{version}.npy")
                results[case][version] = measure(module, paths[case], args.image_size, pixels_path)
                results[case][version]["pixels"] = pixels_path
                print(f"  {case} ({mode}), {version}: {results[case][version]['added_mib']:,.0f} MiB added, "
                      f"{results[case][version]['seconds']:.2f} s", flush=True)
            if len(versions) == 2:
                results[case]["identical"] = np.array_equal(np.load(results[case]["new"]["pixels"]),
                                                            np.load(results[case]["old"]["pixels"]))

    def ratio_to_rgb(case: str, version: str) -> str:
        if "rgb_png" not in results:
            return "-"
        return f"{results[case][version]['added_mib'] / results['rgb_png'][version]['added_mib']:.2f}"

    header = ["case", "mode", "MP"]
    for version in versions:
        header += [f"{version} MiB added", f"{version} MiB/MP", f"{version} x RGB", f"{version} s"]
    header += ["same pixels"] if len(versions) == 2 else []
    rows = [tuple(header)]
    for case, result in results.items():
        row = [case, result["mode"], f"{result['megapixels']:.1f}"]
        for version in versions:
            added = result[version]["added_mib"]
            row += [f"{added:,.0f}", f"{added / result['megapixels']:.2f}", ratio_to_rgb(case, version),
                    f"{result[version]['seconds']:.2f}"]
        row += [("yes" if result["identical"] else "NO")] if len(versions) == 2 else []
        rows.append(tuple(row))
    print_table(f"Peak memory added by prepare_image at {args.image_size} px (fresh process per case; "
                "x RGB: against the RGB PNG of the same version)", rows)


if __name__ == "__main__":
    main()
