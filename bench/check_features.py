"""Checks that the extract job's features equal Xception applied directly to the images.

    python bench/check_features.py --features_dir OUT --dataset_dir DATASET --weights W [--split dev] [--images 16]

For a sample of records of a split it recomputes the features outside Beam -- the image file read with plain
Python, the shared preprocessing (`schemas.images.prepare_image`), the Keras model called directly -- and prints
the cosine similarity and largest absolute difference per image. Exit status 1 if any cosine is below 0.999.
"""
import argparse
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from schemas import (  # noqa: E402
    backbones,
    fileio,  # noqa: E402
    records,
)
from schemas.images import prepare_image  # noqa: E402
from schemas.records import MetadataKeys  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features_dir", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    metadata = fileio.read_json(os.path.join(args.features_dir, records.METADATA_FILE))
    found = records.read_records(args.features_dir, args.split)
    sample = random.Random(args.seed).sample(found, min(args.images, len(found)))
    backbone = backbones.get_backbone(metadata[MetadataKeys.BACKBONE])
    size = metadata[MetadataKeys.IMAGE_SIZE]
    model = backbones.build_feature_extractor(backbone, args.weights, size)
    images_dir = next(os.path.join(args.dataset_dir, d) for d in ("Flicker8k_Dataset", "Images")
                      if os.path.isdir(os.path.join(args.dataset_dir, d)))
    pixels = []
    for record in sample:
        with open(os.path.join(images_dir, record[records.IMAGE_ID]), "rb") as handle:
            pixels.append(prepare_image(handle.read(), size)[0])
    direct = model.predict(backbones.preprocess(backbone, np.stack(pixels)), batch_size=8, verbose=0)
    worst = 1.0
    for record, expected in zip(sample, direct):
        got = record[records.IMAGE_FEATURES]
        cosine = float(np.dot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected)))
        worst = min(worst, cosine)
        print(f"{record[records.IMAGE_ID]}  cosine {cosine:.7f}  max |diff| {np.abs(got - expected).max():.2e}")
    print(f"{len(sample)} {args.split} images: minimum cosine {worst:.7f} (weights sha256 "
          f"{backbones.weights_digest(model)[:12]}, records {metadata[MetadataKeys.WEIGHTS_SHA256][:12]})")
    return 0 if worst >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
