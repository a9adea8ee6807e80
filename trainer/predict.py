"""Captions image files with a model bundle: the single-machine path, no Beam.

    python -m trainer.predict --model_dir MODEL [--beam_width K] [--weights PATH] IMAGE [IMAGE ...]

(also installed as ``imcap-predict``). Runs the bundle's feature extractor itself (the backbone, weights and
image size recorded in ``bundle.json``, with the same preprocessing as the jobs: `schemas.images.prepare_image`),
then decodes in batches. Prints ``IMAGE<TAB>caption<TAB>log_prob`` per image; an image that cannot be read is
reported on stderr with its error class and the exit status is 1.
"""
import argparse
import logging
import sys

import numpy as np

from schemas import backbones, images
from schemas.bundle import BundleKeys
from trainer import cli


class FeatureExtractor:
    """The bundle's backbone, checked against the weights the decoder was trained on."""

    def __init__(self, config: dict, weights_override: str | None = None):
        from trainer.bundle import check_feature_weights, feature_weights_for
        self.backbone = backbones.get_backbone(config[BundleKeys.BACKBONE])
        self.image_size = config[BundleKeys.IMAGE_SIZE]
        weights = feature_weights_for(config, weights_override)
        self.model = backbones.build_feature_extractor(self.backbone, weights, self.image_size)
        check_feature_weights(config, backbones.weights_digest(self.model), weights)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.predict_on_batch(backbones.preprocess(self.backbone, pixels))


def caption_files(paths: list[str], model_dir: str, beam_width: int | None = None, weights: str | None = None,
                  batch_size: int = 16) -> list[tuple[str, str | None, float | None, str | None]]:
    """(path, caption, log_prob, error) per path, in order."""
    from trainer.bundle import Bundle
    bundle = Bundle(model_dir)
    extractor = FeatureExtractor(bundle.config, weights)
    beam_width, length_penalty = bundle.decoding_for(beam_width)
    from tqdm import tqdm
    results = {}
    with tqdm(total=len(paths), desc="captioning", unit="img", disable=None) as bar:  # no bar in a log file
        for start in range(0, len(paths), batch_size):  # a batch of images in memory at a time
            ready = []
            for path in paths[start:start + batch_size]:
                try:
                    with open(path, "rb") as handle:
                        pixels, _ = images.prepare_image(handle.read(), extractor.image_size)
                    ready.append((path, pixels))
                except images.ImageError as error:
                    results[path] = (path, None, None, f"{error.error_class}: {error.message}")
                except OSError as error:
                    results[path] = (path, None, None, f"{images.READ_ERROR}: {error}")
            if ready:
                features = extractor(np.stack([pixels for _, pixels in ready]))
                decoded = bundle.decoder.caption(features, beam_width, length_penalty)
                for (path, _), (text, log_prob) in zip(ready, decoded):
                    results[path] = (path, text, log_prob, None)
            bar.update(len(paths[start:start + batch_size]))
    return [results[path] for path in paths]


def main(argv=None) -> int:
    cli.setup_logging(logging.WARNING, "%(levelname)s %(message)s")
    cli.quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="imcap-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a model bundle (trainer.task's --model_dir)")
    parser.add_argument("--beam_width", type=int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--weights", help="feature weights, when the bundle's were a local file")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    if args.beam_width is not None and args.beam_width < 1:
        parser.error("--beam_width must be at least 1")
    return cli.exit_status(lambda: _print_captions(caption_files(args.images, args.model_dir, args.beam_width,
                                                                 args.weights)))


def _print_captions(results) -> int:
    """IMAGE<TAB>caption<TAB>log_prob per image on stdout, failures on stderr; 1 if any image failed."""
    failed = False
    for path, caption, log_prob, error in results:
        if error:
            failed = True
            print(f"{path}: {error}", file=sys.stderr)
        else:
            print(f"{path}\t{caption}\t{log_prob:.3f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
