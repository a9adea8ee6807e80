"""The demo: every stage of the system on a generated sample dataset, offline.

    python -m beam_jobs.demo [--output_dir demo_out] [--images 300]      (what `make demo` runs)

Steps: write the synthetic Flickr8k-layout dataset (`beam_jobs.sample_dataset`), then run the extract job on it.
Feature weights: Keras' ImageNet Xception when it can be had (downloaded, or the local file that
``../shared/tools/get_xception_weights.py`` writes, or ``--weights PATH``); otherwise the demo says so and goes on
with random-init features, which still separate the synthetic scenes.
"""
import argparse
import logging
import os
import sys

from beam_jobs import extract_features, runtime, sample_dataset
from schemas import backbones

LOCAL_IMAGENET_FILE = os.path.expanduser("~/.cache/imcap/xception_imagenet_notop.weights.h5")


def choose_weights(requested: str | None) -> str:
    """The weights the demo will use, saying plainly why."""
    if requested:
        return requested
    if os.path.isfile(LOCAL_IMAGENET_FILE):
        logging.info("using the local ImageNet Xception weights in %s", LOCAL_IMAGENET_FILE)
        return LOCAL_IMAGENET_FILE
    try:
        backbones.build_feature_extractor(backbones.XCEPTION, backbones.IMAGENET, backbones.XCEPTION.min_image_size)
        logging.info("using Keras' ImageNet Xception weights")
        return backbones.IMAGENET
    except RuntimeError as error:
        logging.warning("ImageNet weights are not available here (%s).\n  The demo continues with RANDOM-INIT "
                        "Xception features (--weights none): they still tell the synthetic scenes apart, but "
                        "real photos need the ImageNet weights (see README: 'Weights').",
                        runtime.first_line(str(error)))
        return backbones.RANDOM_INIT


def main(argv=None) -> int:
    runtime.setup_logging()
    parser = argparse.ArgumentParser(prog="imcap-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="demo_out")
    parser.add_argument("--images", type=runtime.positive_int, default=300)
    parser.add_argument("--weights", help="feature weights (default: ImageNet if available, else none)")
    args = parser.parse_args(argv)

    dataset_dir = os.path.join(args.output_dir, "dataset")
    features_dir = os.path.join(args.output_dir, "features")
    splits = sample_dataset.write_sample_dataset(dataset_dir, num_images=args.images)
    logging.info("[1/2] sample dataset: %s (%s)", dataset_dir, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    weights = choose_weights(args.weights)
    logging.info("[2/2] extract job -> %s", features_dir)
    extract_features.run(["--dataset_dir", dataset_dir, "--output_dir", features_dir, "--weights", weights,
                          "--min_word_count", "1", "--overwrite"])
    logging.info("demo finished. Outputs:\n  dataset:  %s\n  features: %s (TFRecords, vocab.txt, metadata.json, "
                 "errors.parquet)", dataset_dir, features_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
