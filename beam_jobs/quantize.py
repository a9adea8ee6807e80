"""Post-training int8 quantization of the feature extractor (NNCF), for ``--inference_backend openvino-int8``.

    python -m beam_jobs.quantize --dataset_dir DATASET --weights imagenet|PATH --output_dir XCEPTION_INT8 \
        [--split train] [--calibration_images 300] [--image_size 299] [--seed 0]
    python -m beam_jobs.quantize --images 'photos/*.jpg' ... --output_dir XCEPTION_INT8

(also installed as ``imcap-quantize``). Converts the Keras extractor (pooled vector and last convolutional map,
one network) to OpenVINO, calibrates int8 activation ranges on ``--calibration_images`` photos prepared exactly as
the jobs prepare them (`schemas.images.prepare_image`), and writes ``extractor.xml``/``extractor.bin`` (OpenVINO IR)
with ``quantization.json``: the backbone, image size, the SHA-256 of the Keras weights it was made from (the jobs
refuse it for other weights), the calibration set (its size, where it came from, the names and a digest of
them), the photos that could not be used and why, and the NNCF/OpenVINO versions.

The calibration photos are a seeded sample of the dataset's ``--split`` (default train: never the photos a model
is evaluated on) or of the files ``--images`` matches (globs or directories, on any Beam filesystem, read as the caption job reads ``--input``). Quantization
reads each photo once; 300 photos take about 45 s on 2 cores (BENCHMARKS.md §12).
"""
import argparse
import hashlib
import logging
import os
import sys
import tempfile

import numpy as np

from beam_jobs import dataset, runtime, sources
from schemas import backbones, fileio, images
from schemas.int8_model import FORMAT_VERSION, INFO_FILE, MODEL_BIN, MODEL_XML, OUTPUTS
from trainer import cli

DEFAULT_CALIBRATION_IMAGES = 300


class QuantizationError(ValueError):
    """Calibration that cannot be done as asked; the message says what to fix."""


def calibration_candidates(args: argparse.Namespace) -> tuple[list[str], str]:
    """(image paths to sample from, a description of where they came from)."""
    if args.dataset_dir:
        from beam_jobs.datasets import load_datasets, output_splits, split_image_uris
        loaded = load_datasets([args.dataset_dir])  # any layout the extract job reads
        if args.split not in output_splits(loaded):
            raise QuantizationError(f"--split {args.split}: {args.dataset_dir} has the splits "
                                    f"{', '.join(output_splits(loaded))}")
        return split_image_uris(loaded, args.split), f"{args.split} split of {args.dataset_dir}"
    paths = []
    from beam_jobs.inputs import effective_pattern
    for pattern in map(effective_pattern, args.images):  # a directory means every file under it, as for --input
        matched = [path for path in fileio.glob(pattern) if sources.kind_of(path) == sources.IMAGE]
        if not matched:
            raise QuantizationError(f"--images {pattern}: matches no image file")
        paths.extend(matched)
    return sorted(set(paths)), "--images " + " ".join(args.images)


def sample(paths: list[str], count: int, seed: int) -> list[str]:
    """``count`` of ``paths`` chosen by ``seed`` (all of them when there are fewer), in a stable order."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[index] for index in sorted(chosen)]


def load_calibration(paths: list[str], image_size: int) -> tuple[list[np.ndarray], list[str], dict]:
    """(uint8 pixels of each usable photo, their paths, {path: why not} for the others)."""
    pixels, used, skipped = [], [], {}
    for path in paths:
        try:
            prepared, _ = images.prepare_image(fileio.read_bytes(path), image_size)
        except images.ImageError as error:
            skipped[path] = f"{error.error_class}: {error.message}"
            continue
        except Exception as error:  # unreadable files: the calibration goes on without them, and says so
            skipped[path] = f"read_error: {images.describe_error(error)}"
            continue
        pixels.append(prepared)
        used.append(path)
    return pixels, used, skipped


def quantize(backbone: backbones.Backbone, weights: str, image_size: int, pixels: list[np.ndarray]):
    """(the int8 OpenVINO model of the spatial extractor, SHA-256 of the Keras weights)."""
    import nncf
    import openvino

    from beam_jobs.inference import _traced_forward, load_feature_model
    model, digest = load_feature_model(backbone, weights, image_size, spatial=True)
    float_model = openvino.convert_model(_traced_forward(model, image_size))
    calibration = nncf.Dataset(pixels, lambda one: backbones.preprocess(backbone, one[np.newaxis]))
    quantized = nncf.quantize(float_model, calibration, subset_size=len(pixels))
    for output, name in zip(quantized.outputs, OUTPUTS):
        output.get_tensor().set_names({name})
    return quantized, digest


def write(quantized, info: dict, output_dir: str) -> None:
    """extractor.xml, extractor.bin and quantization.json into ``output_dir`` (any Beam filesystem)."""
    import openvino
    fileio.makedirs(output_dir)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, MODEL_XML)
        openvino.save_model(quantized, local, compress_to_fp16=False)
        for name in (MODEL_XML, MODEL_BIN):
            with open(os.path.join(scratch, name), "rb") as source:
                data = source.read()
            if name == MODEL_BIN:
                info["bin_sha256"] = hashlib.sha256(data).hexdigest()
            fileio.write_bytes(fileio.join(output_dir, name), data)
    fileio.write_json(fileio.join(output_dir, INFO_FILE), info)


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="imcap-quantize", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_dir", help="calibrate on a sample of this dataset's --split (any layout the extract job reads)")
    source.add_argument("--images", action="extend", nargs="+",
                        help="calibrate on a sample of these image files (a glob or a directory, on any "
                             "filesystem; several, or repeat it)")
    parser.add_argument("--split", default="train", help="with --dataset_dir: the split to sample (default train)")
    parser.add_argument("--output_dir", required=True, help="where extractor.xml/.bin and quantization.json go")
    parser.add_argument("--weights", default=backbones.IMAGENET,
                        help="imagenet (default), none (random init, for tests) or a Keras weights file")
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--image_size", type=runtime.positive_int, default=299)
    parser.add_argument("--calibration_images", type=runtime.positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"photos to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="which photos are sampled")
    args = parser.parse_args(argv)
    backbones.check_weights_spec(args.weights)
    backbones.check_image_size(backbones.get_backbone(args.backbone), args.image_size)
    return args


def available() -> bool:
    """Whether NNCF and OpenVINO are installed (quantization needs both)."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_to(output_dir: str, backbone: backbones.Backbone, weights: str, image_size: int, candidates: list[str],
                source: str, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> dict:
    """Calibrates on ``count`` of ``candidates`` (sampled by ``seed``), quantizes and writes the int8 extractor
    into ``output_dir``; returns its quantization.json."""
    if not available():
        raise QuantizationError("quantization needs NNCF and OpenVINO: pip install nncf openvino")
    import nncf
    import openvino
    if not candidates:
        raise QuantizationError(f"no calibration photos in the {source}")
    chosen = sample(candidates, count, seed)
    pixels, used, skipped = load_calibration(chosen, image_size)
    for path, why in skipped.items():
        logging.warning("calibration: skipping %s (%s)", path, why)
    if not pixels:
        raise QuantizationError(f"none of the {len(chosen)} calibration photos sampled from the {source} could be "
                                "read and decoded (see the warnings above)")
    logging.info("int8: calibrating %s on %d photos of the %s (%d skipped)", backbone.name, len(pixels), source,
                 len(skipped))
    quantized, digest = quantize(backbone, weights, image_size, pixels)
    names = [os.path.basename(sources.path_of(path)) for path in used]
    info = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone.name,
        "image_size": image_size,
        "weights": backbones.describe_weights(weights),
        "weights_sha256": digest,
        "outputs": list(OUTPUTS),
        "precision": "int8 (NNCF post-training quantization, default preset)",
        "calibration": {
            "source": source, "seed": seed, "requested": count, "candidates": len(candidates), "images": len(used),
            "names_sha256": hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest(), "names": names,
            "skipped": [{"path": path, "reason": why} for path, why in skipped.items()],
        },
        "nncf_version": nncf.__version__,
        "openvino_version": openvino.get_version(),
    }
    write(quantized, info, output_dir)
    return info


def run(argv=None) -> dict:
    args = parse_args(argv)
    backbone = backbones.get_backbone(args.backbone)
    candidates, source = calibration_candidates(args)
    info = quantize_to(args.output_dir, backbone, args.weights, args.image_size, candidates, source,
                       args.calibration_images, args.seed)
    print(f"wrote the int8 {backbone.name} to {args.output_dir} ({MODEL_XML}, {MODEL_BIN}, {INFO_FILE}); "
          f"calibrated on {info['calibration']['images']} photos of the {source}, "
          f"{len(info['calibration']['skipped'])} skipped; weights sha256 {info['weights_sha256'][:12]}")
    return info


def main(argv=None) -> int:
    runtime.setup_logging()
    try:
        run(argv)
    except (QuantizationError, dataset.DatasetError, ValueError, FileNotFoundError) as error:
        print(f"error: {runtime.first_line(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
