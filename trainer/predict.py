"""Captions image files with a model bundle: the single-machine path, no Beam.

    python -m trainer.predict --model_dir MODEL [--beam_width K] [--weights PATH] [--inference_backend B]
        [--batch_size N] [--attention_png DIR] IMAGE ...

(also installed as ``imcap-predict``). Runs the bundle's feature extractor itself (the backbone, weights and
image size recorded in ``bundle.json``, with the same preprocessing as the jobs: `schemas.images.prepare_image`;
the spatial grid too for an attention bundle, from the same forward pass), on the backend the caption job would
choose (`trainer.features.backend_for_bundle`: by default the one the bundle was trained on; ``--inference_backend
keras`` on a GPU), then decodes in batches. Repeat
``--model_dir`` for an ensemble. Prints ``IMAGE<TAB>caption<TAB>log_prob`` per image; an image that cannot be read
is reported on stderr with its error class and the exit status is 1. ``--attention_png DIR`` (attention bundles)
writes ``DIR/<image name>.png``: the photo and where each word of its caption looked (`trainer.pictures`).
"""
import logging
import os
import sys

import numpy as np

from schemas import images
from schemas.bundle import BundleKeys, grid_shape
from trainer import cli
from trainer.bundle import check_feature_weights, feature_weights_for, load_bundles
from trainer.features import (
    AUTO_BACKEND,
    INFERENCE_BACKENDS,
    KERAS_BACKEND,
    FeatureExtractor,
    FeatureSpec,
    backend_for_bundle,
    load_extractor,
)


def load_bundle_extractor(config: dict, weights_override: str | None = None, backend: str = KERAS_BACKEND,
                          int8_model: str | None = None) -> FeatureExtractor:
    """The bundle's feature extractor (`trainer.features`) on ``backend``, checked against the weights the decoder
    was trained on; ``int8_model``: the int8 model directory of the openvino-int8 backend."""
    grid = grid_shape(config)
    weights = feature_weights_for(config, weights_override)
    spec = FeatureSpec(config[BundleKeys.BACKBONE], weights, config[BundleKeys.IMAGE_SIZE],
                       backend=backend, grid=grid[0] if grid else 0, int8_model=int8_model,
                       weights_sha256=config[BundleKeys.WEIGHTS_SHA256] if int8_model else None)
    extractor = load_extractor(spec)
    check_feature_weights(config, extractor.weights_sha256, weights)
    return extractor


def caption_files(paths: list[str], model_dir, beam_width: int | None = None, weights: str | None = None,
                  batch_size: int = 16, attention_png: str | None = None, no_repeat_ngram_size: int | None = None,
                  inference_backend: str = AUTO_BACKEND, int8_model: str | None = None
                  ) -> list[tuple[str, str | None, float | None, str | None]]:
    """(path, caption, log_prob, error) per path, in order. ``model_dir``: a bundle, or a list (an ensemble)."""
    bundle = load_bundles(model_dir)
    if attention_png and not bundle.grid_shape:
        raise ValueError("--attention_png needs an attention bundle (trainer.task --decoder attention)")
    backend, int8_model = backend_for_bundle(bundle, inference_backend, int8_model)
    extractor = load_bundle_extractor(bundle.config, weights, backend, int8_model)
    names = _picture_names(paths) if attention_png else {}
    beam_width, length_penalty, no_repeat_ngram_size = bundle.decoding_for(
        beam_width, no_repeat_ngram_size=no_repeat_ngram_size)
    from tqdm import tqdm
    results = {}
    with tqdm(total=len(paths), desc="captioning", unit="img", disable=None) as bar:  # no bar in a log file
        for start in range(0, len(paths), batch_size):  # a batch of images in memory at a time
            ready = []
            for path in paths[start:start + batch_size]:
                try:
                    with open(path, "rb") as handle:
                        data = handle.read()
                    pixels, _ = images.prepare_image(data, extractor.spec.image_size)
                    ready.append((path, pixels, data if attention_png else None))
                except images.ImageError as error:
                    results[path] = (path, None, None, f"{error.error_class}: {error.message}")
                except OSError as error:
                    results[path] = (path, None, None, f"{images.READ_ERROR}: {error}")
            if ready:
                features = extractor(np.stack([pixels for _, pixels, _ in ready]))
                for (path, _, data), hypothesis in zip(ready, bundle.decoder.hypotheses(
                        features, beam_width, length_penalty, no_repeat_ngram_size=no_repeat_ngram_size)):
                    text = bundle.decoder.to_text(hypothesis)
                    results[path] = (path, text, hypothesis.log_prob, None)
                    if attention_png:
                        _write_picture(os.path.join(attention_png, names[path]), data, text, hypothesis.attention,
                                       bundle.grid_shape)
            bar.update(len(paths[start:start + batch_size]))
    return [results[path] for path in paths]


def _picture_names(paths: list[str]) -> dict:
    """path -> a PNG name from its file name, made unique with a number where two images share a name."""
    names, taken = {}, set()
    for path in paths:
        if path in names:
            continue
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, number = f"{stem}.png", 1
        while name in taken:
            number += 1
            name = f"{stem}-{number}.png"
        taken.add(name)
        names[path] = name
    return names


def _write_picture(path: str, data: bytes, text: str, attention, grid) -> None:
    from trainer import pictures
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture = pictures.attention_panels(images.decode_image(data, draft_size=pictures.PANEL), text.split(),
                                        attention, grid)
    picture.save(path, format="PNG", optimize=True)


def main(argv=None) -> int:
    cli.setup_logging(logging.WARNING, "%(levelname)s %(message)s")
    cli.quiet_tensorflow()
    parser = cli.ArgumentParser(prog="imcap-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, action="append",
                        help="a model bundle (trainer.task's --model_dir); repeat it for an ensemble")
    parser.add_argument("--attention_png", metavar="DIR",
                        help="attention bundles: write DIR/<image>.png showing where each word looked")
    parser.add_argument("--beam_width", type=int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--no_repeat_ngram_size", type=cli.non_negative_int, metavar="N",
                        help="never repeat an n-gram of N words; 0: no blocking (default: the bundle's)")
    parser.add_argument("--weights", help="feature weights, when the bundle's were a local file")
    parser.add_argument("--inference_backend", default=AUTO_BACKEND, choices=[AUTO_BACKEND, *INFERENCE_BACKENDS],
                        help="what runs the feature extractor: auto = the backend the bundle was trained on (its "
                             "own int8 model for int8 bundles), as the caption job; keras on a GPU (docs/backends.md)")
    parser.add_argument("--int8_model", metavar="DIR", help="openvino-int8: an int8 extractor directory "
                        "(default: the bundle's own)")
    parser.add_argument("--batch_size", type=cli.positive_int, default=16,
                        help="images per feature batch (in memory at once; larger on a GPU)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to caption")
    args = parser.parse_args(argv)
    if args.beam_width is not None and args.beam_width < 1:
        parser.error("--beam_width must be at least 1")
    return cli.exit_status(lambda: _print_captions(caption_files(
        args.images, args.model_dir, args.beam_width, args.weights, batch_size=args.batch_size,
        attention_png=args.attention_png, no_repeat_ngram_size=args.no_repeat_ngram_size,
        inference_backend=args.inference_backend, int8_model=args.int8_model)))


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
