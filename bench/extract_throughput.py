"""Feature extraction throughput: the extract job vs a raw batched Keras loop vs the seed's per-image loop,
and the achieved GFLOP/s vs a TensorFlow matmul peak -- all measured in one run.

    python bench/extract_throughput.py [--images 256] [--batch_size 32] [--repeats 3] [--weights PATH]

- pipeline: `beam_jobs.extract_features` (LocalRunner, in-process) on N/4 and N train images of Flickr8k;
  steady-state images/s = the marginal cost (N - N/4) / (t(N) - t(N/4)), which removes start-up (model loads,
  pipeline construction) from the comparison;
- raw batched loop: the same N images read from disk, `schemas.images.prepare_image`, Keras model called on
  batches of --batch_size (one tf.function), timed from files to features;
- seed loop: the seed tutorial's loop: `keras.utils.load_img(target_size=(299, 299))` -> `img_to_array` ->
  `preprocess_input` -> `model.predict` on one image at a time;
- peak: a 4096x4096 float32 matmul in TensorFlow, GFLOP/s; Xception's FLOPs per image from TF's profiler.
"""
import argparse
import os
import shutil
import tempfile

import numpy as np
from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    image_paths,
    machine,
    median,
    print_table,
    split_names,
    timed,
    write_split_file,
)


def xception_flops(model, image_size: int) -> float:
    """FLOPs of one forward pass (TF profiler on the traced graph; a multiply-add counts as 2)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(function)
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(model_analyzer.profile(frozen.graph, options=options).total_float_ops)


def matmul_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    import tensorflow as tf
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.linalg.matmul(a, b).numpy()
    times = [timed(lambda: tf.linalg.matmul(a, b).numpy())[0] for _ in range(repeats)]
    return 2 * size ** 3 / median(times) / 1e9


def raw_batched(model_call, paths, image_size, batch_size):
    from schemas import backbones
    from schemas.images import prepare_image
    outputs = []
    for start in range(0, len(paths), batch_size):
        pixels = []
        for path in paths[start:start + batch_size]:
            with open(path, "rb") as handle:
                pixels.append(prepare_image(handle.read(), image_size)[0])
        outputs.append(model_call(backbones.preprocess(backbones.XCEPTION, np.stack(pixels))))
    return np.concatenate(outputs)


def seed_loop(model, paths, image_size):
    import keras
    from keras.applications.xception import preprocess_input
    features = []
    for path in paths:
        image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(image_size, image_size)))
        features.append(model.predict(preprocess_input(image[np.newaxis]), verbose=0)[0])
    return np.stack(features)


def pipeline_run(dataset_dir, names, weights, image_size, batch_size, scratch):
    from beam_jobs.extract import job as extract_job
    split_file = write_split_file(os.path.join(scratch, "splits"), "train", names)
    output_dir = os.path.join(scratch, f"out-{len(names)}")
    shutil.rmtree(output_dir, ignore_errors=True)
    extract_job.run(["--dataset_dir", dataset_dir, "--split_file", f"train={split_file}", "--output_dir",
                          output_dir, "--weights", weights, "--image_size", str(image_size), "--min_batch_size",
                          str(batch_size), "--max_batch_size", str(batch_size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--seed_images", type=int, default=64, help="images for the (slow) seed loop")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    import tensorflow as tf

    from beam_jobs.runtime import setup_logging
    from schemas import backbones
    setup_logging(logging.WARNING)

    names = split_names(args.dataset_dir, "train")[:args.images]
    paths = image_paths(args.dataset_dir, names)
    model = backbones.build_feature_extractor(backbones.XCEPTION, args.weights, args.image_size)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec([None, args.image_size, args.image_size, 3], tf.float32)])
    call = lambda x: forward(x).numpy()  # noqa: E731
    call(np.zeros((args.batch_size, args.image_size, args.image_size, 3), np.float32))  # trace once
    flops = xception_flops(model, args.image_size)

    small = max(args.batch_size, args.images // 4)
    results = {"raw": [], "seed": [], "pipeline": [], "peak": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            seconds, _ = timed(raw_batched, call, paths, args.image_size, args.batch_size)
            results["raw"].append(len(paths) / seconds)
            seconds, _ = timed(seed_loop, model, paths[:args.seed_images], args.image_size)
            results["seed"].append(args.seed_images / seconds)
            small_seconds, _ = timed(pipeline_run, args.dataset_dir, names[:small], args.weights, args.image_size,
                                     args.batch_size, scratch)
            large_seconds, _ = timed(pipeline_run, args.dataset_dir, names, args.weights, args.image_size,
                                     args.batch_size, scratch)
            results["pipeline"].append((len(names) - small) / (large_seconds - small_seconds))
            results["peak"].append(matmul_peak_gflops())
            print(f"repeat {repeat + 1}: raw {results['raw'][-1]:.2f} img/s, seed {results['seed'][-1]:.2f}, "
                  f"pipeline {results['pipeline'][-1]:.2f} (runs of {small} and {len(names)} images took "
                  f"{small_seconds:.1f} s and {large_seconds:.1f} s), matmul {results['peak'][-1]:.0f} GFLOP/s",
                  flush=True)

    raw, seed, pipe, peak = (median(results[k]) for k in ("raw", "seed", "pipeline", "peak"))
    gflop_per_image = flops / 1e9
    print_table(f"Feature extraction, {args.image_size}px, batch {args.batch_size}, medians of {args.repeats} "
                f"({machine()})", [
                    ("variant", "images/s", "vs raw batched", "GFLOP/s", "of matmul peak"),
                    ("extract job (steady state)", f"{pipe:.2f}", f"{pipe / raw:.2f}", f"{pipe * gflop_per_image:.0f}",
                     f"{pipe * gflop_per_image / peak:.0%}"),
                    ("raw batched Keras loop", f"{raw:.2f}", "1.00", f"{raw * gflop_per_image:.0f}",
                     f"{raw * gflop_per_image / peak:.0%}"),
                    ("seed per-image loop", f"{seed:.2f}", f"{seed / raw:.2f}", f"{seed * gflop_per_image:.0f}",
                     f"{seed * gflop_per_image / peak:.0%}"),
                    ("TF matmul 4096^2 (peak)", "", "", f"{peak:.0f}", "100%"),
                ])
    print(f"\nXception forward pass: {gflop_per_image:.2f} GFLOP per image (TF profiler). "
          f"Raw batched / seed loop: {raw / seed:.2f}x.")


if __name__ == "__main__":
    main()
