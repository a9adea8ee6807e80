"""Xception on this CPU through Keras/TensorFlow, OpenVINO (its default precision: bfloat16 on CPUs that have it),
OpenVINO forced to f32 and the int8 model of `beam_jobs.tools.quantize`: images/s side by side in one run, and how close
the features are to Keras'.

    python bench/backends.py [--images 128] [--batch_size 32] [--repeats 3] [--weights PATH] [--int8_model DIR]

Each backend is the jobs' own (`beam_jobs.features.FeatureExtractorHandler` with ``backend=...``), fed the same
preprocessed Flickr8k photos in batches; the order of the backends rotates between repeats.
"""
import argparse

import numpy as np
from common import DEFAULT_DATASET, DEFAULT_WEIGHTS, image_paths, machine, median, print_table, split_names, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--int8_model", help="also openvino-int8, with this model (imcap-quantize)")
    args = parser.parse_args()

    from beam_jobs.features import FeatureExtractorHandler
    from trainer.features import INFERENCE_BACKENDS, INT8_BACKEND, FeatureSpec
    backends = tuple(b for b in INFERENCE_BACKENDS if b != INT8_BACKEND or args.int8_model)
    from tqdm import tqdm

    from schemas.images import prepare_image
    pixels = []
    for path in tqdm(image_paths(args.dataset_dir, split_names(args.dataset_dir, "dev")[:args.images]),
                     desc="decoding dev photos", unit="img", disable=None):
        with open(path, "rb") as handle:
            pixels.append(prepare_image(handle.read(), 299)[0])
    handlers, models, load_seconds = {}, {}, {}
    for backend in backends:
        int8_model = args.int8_model if backend == INT8_BACKEND else None
        handlers[backend] = FeatureExtractorHandler(FeatureSpec(
            "xception", args.weights, 299, backend=backend, int8_model=int8_model))
        load_seconds[backend], models[backend] = timed(handlers[backend].load_model)
        handlers[backend].run_inference(pixels[:args.batch_size], models[backend])  # warm up

    def extract(backend):
        return np.concatenate([np.stack(handlers[backend].run_inference(pixels[i:i + args.batch_size],
                                                                        models[backend]))
                               for i in range(0, len(pixels), args.batch_size)])

    rates = {backend: [] for backend in backends}
    features = {}
    for repeat in range(args.repeats):
        order = backends[repeat % len(backends):] + backends[:repeat % len(backends)]
        for backend in order:
            seconds, features[backend] = timed(extract, backend)
            rates[backend].append(len(pixels) / seconds)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{b} {rates[b][-1]:.2f} img/s" for b in backends), flush=True)

    reference = features["keras"]
    rows = [("backend", "precision", "images/s", "vs keras", "min cosine vs keras", "max |diff|", "load s")]
    for backend in backends:
        got = features[backend]
        cosine = ((got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))).min()
        rows.append((backend, models[backend].description, f"{median(rates[backend]):.2f}",
                     f"{median(rates[backend]) / median(rates['keras']):.2f}", f"{cosine:.6f}",
                     f"{np.abs(got - reference).max():.1e}", f"{load_seconds[backend]:.1f}"))
    print_table(f"Xception 299px, batch {args.batch_size}, {len(pixels)} Flickr8k dev photos, medians of "
                f"{args.repeats} ({machine()})", rows)


if __name__ == "__main__":
    main()
