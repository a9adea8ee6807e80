"""One GPU: the extract and caption jobs against the raw batched Keras model on the same photos, in one script.

    python bench/gpu.py [--images 2000] [--photo_size 500] [--batch_sizes 32 64 128] [--out /tmp/gpu_bench]

Generates --images synthetic photos (`beam_jobs.tools.sample_dataset`, JPEGs of --photo_size px, Flickr8k's
size; no dataset needed), then measures, all with ``--inference_backend keras`` (TensorFlow float32 on the GPU):

- raw model: Xception at 299 px on pixels already in memory, per batch size (the GPU's own rate);
- raw files-to-features: the same photos read, decoded and resized (`schemas.images.prepare_image`) on a thread
  pool and fed to the model, per batch size (what a perfect pipeline would reach);
- the extract job (LocalRunner, --max_batch_size B) and the caption job (greedy, loose files, a merge bundle
  trained for one epoch on the extract job's records), each run on N/4 and N photos: steady-state images/s =
  (N - N/4) / (t(N) - t(N/4)), so start-up (model loads, pipeline construction) is left out.

Prints one table with images/s and each job's ratio to the raw files-to-features rate at the same batch size,
and writes it as JSON under --out. Weights are random-init (``--weights none``): speed does not depend on them.
``--allow_cpu`` runs it without a GPU (a dry run of the script, with small --images).
"""
import argparse
import concurrent.futures
import json
import logging
import os
import shutil
import time

import numpy as np
from common import machine, print_table


def _gpu_name(allow_cpu: bool) -> str:
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        if not allow_cpu:
            raise SystemExit("no GPU visible to TensorFlow (pip install -e '.[gpu]'; nvidia-smi); --allow_cpu to "
                             "run the script on the CPU anyway")
        return "CPU (no GPU)"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{details.get('device_name', gpus[0].name)} x{len(gpus)}"


def _steady(function, small: int, large: int) -> tuple[float, float]:
    """(steady-state images/s from runs on ``small`` and ``large`` photos, wall-clock images/s of the large run)."""
    small_seconds = _timed(function, small)
    large_seconds = _timed(function, large)
    return (large - small) / max(large_seconds - small_seconds, 1e-9), large / large_seconds


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def raw_rates(paths: list[str], batch_size: int, model) -> tuple[float, float]:
    """(images/s of the model on pixels in memory, images/s from files to features with a decoding pool)."""
    from schemas import backbones
    from schemas.images import prepare_image

    def load(path):
        with open(path, "rb") as handle:
            return prepare_image(handle.read(), 299)[0]

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        pixels = np.stack(list(pool.map(load, paths[:batch_size * 4])))
    batch = backbones.preprocess(backbones.XCEPTION, pixels[:batch_size])
    model.predict_on_batch(batch)  # warm up: traced once per batch size
    repeats = max(4, len(paths) // batch_size)
    start = time.perf_counter()
    for _ in range(repeats):
        np.asarray(model.predict_on_batch(batch))
    in_memory = repeats * batch_size / (time.perf_counter() - start)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        for first in range(0, len(paths), batch_size):
            ready = np.stack(list(pool.map(load, paths[first:first + batch_size])))
            np.asarray(model.predict_on_batch(backbones.preprocess(backbones.XCEPTION, ready)))
    from_files = len(paths) / (time.perf_counter() - start)
    return in_memory, from_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos generated and captioned (N)")
    parser.add_argument("--photo_size", type=int, default=500, help="side of the generated JPEGs, px")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--out", default="/tmp/gpu_bench",
                        help="scratch folder and the JSON result (emptied first if this script made it; refused if "
                             "it holds other files)")
    parser.add_argument("--allow_cpu", action="store_true", help="run without a GPU (a dry run of the script)")
    args = parser.parse_args()

    from beam_jobs import runtime
    from beam_jobs.caption import job as caption_job
    from beam_jobs.extract import job as extract_job
    from beam_jobs.tools.sample_dataset import write_sample_dataset
    from schemas import backbones
    from trainer import task
    runtime.setup_logging(logging.WARNING)

    device = _gpu_name(args.allow_cpu)
    marker = os.path.join(args.out, ".imcap-gpu-bench")
    if os.path.isdir(args.out) and os.listdir(args.out) and not os.path.exists(marker):
        raise SystemExit(f"--out {args.out} holds files this script did not write: pick an empty or new folder")
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    open(marker, "w", encoding="utf-8").close()
    dataset = os.path.join(args.out, "dataset")
    splits = write_sample_dataset(dataset, num_images=args.images, image_size=args.photo_size)
    images_dir = os.path.join(dataset, "Flicker8k_Dataset")
    paths = sorted(os.path.join(images_dir, name) for names in splits.values() for name in names)
    small = max(4, len(paths) // 4)
    model = backbones.build_feature_extractor(backbones.XCEPTION, backbones.RANDOM_INIT, 299)

    # one bundle for every caption run: a merge decoder trained for one epoch on keras features of all photos
    features = os.path.join(args.out, "features")
    extract_job.run(["--dataset_dir", dataset, "--output_dir", features, "--weights", "none",
                     "--inference_backend", "keras", "--min_word_count", "1"])
    bundle = os.path.join(args.out, "model")
    task.train(task.parse_args(["--data_dir", features, "--model_dir", bundle, "--epochs", "1", "--verbose", "0"]))

    rows, results = [], []
    for batch_size in args.batch_sizes:
        in_memory, from_files = raw_rates(paths, batch_size, model)
        counter = iter(range(10 ** 6))

        def caption(count):
            subset = os.path.join(args.out, f"caption-{next(counter)}")
            os.makedirs(subset)
            listing = os.path.join(subset, "images.txt")
            with open(listing, "w", encoding="utf-8") as handle:
                handle.write("".join(f"{path}\n" for path in paths[:count]))
            caption_job.run(["--input", listing, "--model_dir", bundle, "--output_dir", os.path.join(subset, "c"),
                             "--weights", "none", "--inference_backend", "keras", "--beam_width", "1",
                             "--min_batch_size", str(batch_size), "--max_batch_size", str(batch_size)])

        def extract(count):
            subset = os.path.join(args.out, f"extract-{next(counter)}")
            names = {os.path.basename(path) for path in paths[:count]}
            data = os.path.join(subset, "dataset")
            shutil.copytree(dataset, data, ignore=lambda folder, entries: [
                entry for entry in entries if folder.endswith("Flicker8k_Dataset") and entry not in names])
            extract_job.run(["--dataset_dir", data, "--output_dir", os.path.join(subset, "f"), "--weights", "none",
                             "--inference_backend", "keras", "--min_word_count", "1",
                             "--min_batch_size", str(batch_size), "--max_batch_size", str(batch_size)])

        extract_rate, extract_wall = _steady(extract, small, len(paths))
        caption_rate, caption_wall = _steady(caption, small, len(paths))
        result = {"batch_size": batch_size, "raw_in_memory": in_memory, "raw_from_files": from_files,
                  "extract_job": extract_rate, "extract_job_wall": extract_wall, "caption_job": caption_rate,
                  "caption_job_wall": caption_wall}
        results.append(result)
        rows.append((batch_size, f"{in_memory:.0f}", f"{from_files:.0f}", f"{extract_rate:.0f}",
                     f"{extract_rate / from_files:.2f}", f"{caption_rate:.0f}", f"{caption_rate / from_files:.2f}"))
        print(rows[-1], flush=True)
    print_table(f"One GPU ({device}), {len(paths)} photos of {args.photo_size} px, Xception 299 px, keras "
                f"backend, images/s (jobs: steady state); {machine()}",
                [("batch", "raw, pixels in memory", "raw, files to features", "extract job", "vs raw files",
                  "caption job (greedy)", "vs raw files"), *rows])
    with open(os.path.join(args.out, "gpu_bench.json"), "w", encoding="utf-8") as handle:
        json.dump({"device": device, "machine": machine(), "images": len(paths), "photo_size": args.photo_size,
                   "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
