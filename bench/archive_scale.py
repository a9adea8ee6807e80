"""The caption job at archive scale, on real-size photos: memory flat in the input's bytes, archives as fast as
loose files, big photos as fast as small ones.

    python bench/archive_scale.py --images 100 [--model_dir MODEL --weights PATH] [--repeats 2]
    python bench/archive_scale.py --images 64 --model_dir MODEL --weights PATH --sizes

Photos: the first 4N Flickr8k train photos, upscaled to 2400x1800 with film grain and saved as JPEG quality 94
(1.1-1.6 MB each, like a phone's 4-5 MP photo), written once under --work_dir.

Default run: one .tar, one .zip and one .tar.gz of N photos and of 4N, and the same photos as loose files (a list file),
each captioned by a fresh `python -m beam_jobs.caption_images` process; runs alternate N, 4N over --repeats. Prints peak
RSS (getrusage of the child) for N and 4N, and steady-state images/s = (4N - N) / (t(4N) - t(N)) for the archive and for
the loose files. Without --model_dir a tiny bundle (random-init Xception at 71 px, trained for one epoch on generated
images)
is built, so that reading and decoding dominate, as in the issue's measurement.

--sizes: the same 4N photos at 2400x1800 and at 224x224 (Flickr8k's size), as loose files, captioned with the given
(real, 299 px) bundle; prints the steady-state images/s of each and their ratio.
"""
import argparse
import io
import os
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    REPO_ROOT,
    image_paths,
    machine,
    median,
    peak_rss_of_command,
    print_table,
    split_names,
)
from PIL import Image

BIG = (2400, 1800)


def big_photo(path: str, seed: int) -> bytes:
    """A Flickr8k photo at 2400x1800 with grain (so it compresses like a real photo, about 1.2 MB)."""
    image = Image.open(path).convert("RGB").resize(BIG, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0.0, 6.0, (BIG[1], BIG[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=94)
    return buffer.getvalue()


def write_photos(dataset_dir: str, directory: str, count: int) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    names = split_names(dataset_dir, "train")[:count]
    out = []
    from tqdm import tqdm
    for index, (name, source) in enumerate(tqdm(list(zip(names, image_paths(dataset_dir, names))),
                                                desc="big photos", unit="img", disable=None)):
        target = os.path.join(directory, f"big_{name}")
        if not os.path.exists(target):
            with open(target, "wb") as handle:
                handle.write(big_photo(source, index))
        out.append(target)
    return out


def write_small(photos: list[str], directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    from tqdm import tqdm
    out = []
    for path in tqdm(photos, desc="224 px copies", unit="img", disable=None):
        target = os.path.join(directory, os.path.basename(path).replace("big_", "small_"))
        if not os.path.exists(target):
            Image.open(path).resize((224, 224), Image.Resampling.BICUBIC).save(target, format="JPEG", quality=92)
        out.append(target)
    return out


def write_list(paths: list[str], path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{item}\n" for item in paths))
    return path


def write_tar(paths: list[str], path: str, mode: str = "w") -> str:
    if not os.path.exists(path):
        with tarfile.open(path, mode) as archive:
            for item in paths:
                archive.add(item, arcname=os.path.basename(item))
    return path


def write_zip(paths: list[str], path: str) -> str:
    if not os.path.exists(path):
        with zipfile.ZipFile(path, "w") as archive:  # deflate, as zip tools make them
            for item in paths:
                archive.write(item, arcname=os.path.basename(item), compress_type=zipfile.ZIP_DEFLATED)
    return path


def tiny_bundle(directory: str) -> tuple[str, str]:
    """A real bundle over random-init Xception at 71 px (reading and decoding dominate its cost)."""
    sys.path.insert(0, REPO_ROOT)
    model_dir = os.path.join(directory, "tiny_bundle")
    if os.path.exists(os.path.join(model_dir, "bundle.json")):
        return model_dir, "none"
    from beam_jobs.extract import job as extract_job
    from beam_jobs.tools import sample_dataset
    from trainer import task
    dataset, features = os.path.join(directory, "tiny_dataset"), os.path.join(directory, "tiny_features")
    sample_dataset.write_sample_dataset(dataset, num_images=12, image_size=96, seed=3)
    extract_job.run(["--dataset_dir", dataset, "--output_dir", features, "--weights", "none",
                          "--image_size", "71", "--min_word_count", "1", "--overwrite"])
    task.train(task.parse_args(["--data_dir", features, "--model_dir", model_dir, "--epochs", "1",
                                "--embedding_dim", "32", "--units", "64", "--verbose", "0"]))
    return model_dir, "none"


def caption_command(source: str, model_dir: str, weights: str, output: str) -> list[str]:
    return [sys.executable, "-m", "beam_jobs.caption_images", "--input", source, "--model_dir", model_dir,
            "--weights", weights, "--output_dir", output, "--overwrite"]


def measure(runs: dict, model_dir: str, weights: str, repeats: int, scratch: str, code_dir: str) -> dict:
    """{(label, count): [(seconds, peak MiB), ...]}, runs alternating over the labels and counts."""
    results = {key: [] for key in runs}
    for repeat in range(repeats):
        for key, source in runs.items():
            output = os.path.join(scratch, "out", f"{key[0]}-{key[1]}", "captions")
            seconds, rss = peak_rss_of_command(caption_command(source, model_dir, weights, output), cwd=code_dir)
            results[key].append((seconds, rss))
            print(f"repeat {repeat + 1}: {key[0]:>8} x{key[1]:<4} {seconds:6.1f} s  peak RSS {rss:7.0f} MiB",
                  flush=True)
    return results


def steady_rate(results: dict, label: str, small: int, large: int) -> float:
    seconds_small = median([s for s, _ in results[(label, small)]])
    seconds_large = median([s for s, _ in results[(label, large)]])
    return (large - small) / (seconds_large - seconds_small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--model_dir", help="a bundle (default: a tiny 71 px bundle built here)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=100, help="N (the larger run has 4N)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", action="store_true", help="2400x1800 vs 224x224 loose photos instead")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "imcap-archive-bench"))
    parser.add_argument("--code_dir", default=REPO_ROOT,
                        help="the checkout whose caption job runs (e.g. a worktree of an older commit, to compare)")
    args = parser.parse_args()

    small, large = args.images, 4 * args.images
    photos = write_photos(args.dataset_dir, os.path.join(args.work_dir, "photos"), large)
    sizes = [os.path.getsize(path) for path in photos]
    print(f"{large} photos at {BIG[0]}x{BIG[1]}: median {median(sizes) / 1e6:.2f} MB, {sum(sizes) / 2**20:.0f} MiB "
          f"in all ({machine()})", flush=True)
    model_dir, weights = (args.model_dir, args.weights) if args.model_dir else tiny_bundle(args.work_dir)
    lists = os.path.join(args.work_dir, "lists")
    os.makedirs(lists, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        if args.sizes:
            small_photos = write_small(photos, os.path.join(args.work_dir, "photos224"))
            runs = {}
            for label, paths in (("2400x1800", photos), ("224x224", small_photos)):
                for count in (small, large):
                    runs[(label, count)] = write_list(paths[:count], os.path.join(lists, f"{label}-{count}.txt"))
            results = measure(runs, model_dir, weights, args.repeats, scratch, args.code_dir)
            rates = {label: steady_rate(results, label, small, large) for label in ("2400x1800", "224x224")}
            print_table(f"Caption job, loose photos, steady state over {small} -> {large} images, medians of "
                        f"{args.repeats}", [("photos", "images/s")] + [(k, f"{v:.2f}") for k, v in rates.items()])
            print(f"\n2400x1800 vs 224x224 images/s: {rates['2400x1800'] / rates['224x224']:.3f}")
            return
        runs = {}
        for count in (small, large):
            runs[("tar", count)] = write_tar(photos[:count], os.path.join(args.work_dir, f"photos-{count}.tar"))
            runs[("zip", count)] = write_zip(photos[:count], os.path.join(args.work_dir, f"photos-{count}.zip"))
            runs[("tar.gz", count)] = write_tar(photos[:count], os.path.join(args.work_dir,
                                                                              f"photos-{count}.tar.gz"), "w:gz")
            runs[("loose", count)] = write_list(photos[:count], os.path.join(lists, f"loose-{count}.txt"))
        results = measure(runs, model_dir, weights, args.repeats, scratch, args.code_dir)
    rows = [("input", "images", "input MiB", "peak RSS MiB", "wall s")]
    for (label, count), values in results.items():
        rows.append((label, count, f"{sum(sizes[:count]) / 2**20:.0f}", f"{median([r for _, r in values]):.0f}",
                     f"{median([s for s, _ in values]):.1f}"))
    print_table(f"Caption job on {BIG[0]}x{BIG[1]} JPEGs (bundle {os.path.basename(model_dir.rstrip('/'))}), "
                f"medians of {args.repeats}", rows)
    for label in ("tar", "zip", "tar.gz", "loose"):
        growth = median([r for _, r in results[(label, large)]]) / median([r for _, r in results[(label, small)]])
        print(f"{label}: peak RSS {large} vs {small} images: {growth - 1:+.1%}")
    loose_rate = steady_rate(results, "loose", small, large)
    for label in ("tar", "zip", "tar.gz"):
        rate = steady_rate(results, label, small, large)
        print(f"steady images/s: {label} {rate:.2f}, loose {loose_rate:.2f}; {label} / loose = {rate / loose_rate:.3f}")


if __name__ == "__main__":
    main()
