"""Post-training int8 quantization of the feature extractor (NNCF), for ``--inference_backend openvino-int8``.

Converts the Keras extractor (pooled vector and last convolutional map, one network, `trainer.features`) to
OpenVINO, calibrates int8 activation ranges on photos prepared exactly as the jobs prepare them
(`schemas.images.prepare_image`), and writes ``extractor.xml``/``extractor.bin`` (OpenVINO IR) with
``quantization.json`` (`schemas.int8_model`): the backbone, image size, the SHA-256 of the Keras weights it was made
from (the jobs refuse it for other weights), the calibration set (its size, where it came from, the names and a
digest of them), the photos that could not be used and why, and the NNCF/OpenVINO versions. 300 photos take about
45 s on 2 cores (docs/backends.md). The command is ``imcap-quantize`` (`beam_jobs.tools.quantize`); the extract job
calls `quantize_to` itself when it runs int8 without a given model.
"""
import hashlib
import logging
import os
import tempfile

import numpy as np

from schemas import backbones, fileio, images
from schemas.int8_model import FORMAT_VERSION, INFO_FILE, MODEL_BIN, MODEL_XML, OUTPUTS
from trainer.features import load_feature_model, traced_forward

DEFAULT_CALIBRATION_IMAGES = 300


class QuantizationError(ValueError):
    """Calibration that cannot be done as asked; the message says what to fix."""


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

    model, digest = load_feature_model(backbone, weights, image_size, spatial=True)
    float_model = openvino.convert_model(traced_forward(model, image_size))
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
    names = [os.path.basename(fileio.path_of(path)) for path in used]
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
