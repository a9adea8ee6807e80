"""The int8 extractor directory (`beam_jobs.tools.quantize` writes it; the jobs and bundles read it): OpenVINO IR
``extractor.xml``/``extractor.bin`` of the spatial extractor (outputs: pooled vector, last convolutional map) and
``quantization.json`` (backbone, image size, the Keras weights' SHA-256, calibration set, versions, bin_sha256)."""
from schemas import fileio

FORMAT_VERSION = 1
MODEL_XML, MODEL_BIN, INFO_FILE = "extractor.xml", "extractor.bin", "quantization.json"
OUTPUTS = ("pooled", "map")  # the IR's outputs, in order
BACKEND = "openvino-int8"  # the --inference_backend that runs such a model


def identity(described: dict) -> str | None:
    """The int8 model whose features a metadata.json or a bundle.json describes (both say ``inference_backend`` and
    ``int8_model``): its extractor.bin's SHA-256, or None for float features (Keras or OpenVINO float, which are
    interchangeable)."""
    if described.get("inference_backend") != BACKEND:
        return None
    return str((described.get("int8_model") or {}).get("bin_sha256"))


def read_info(model_dir: str) -> dict:
    """quantization.json of an int8 model directory, checked; raises ValueError saying what is wrong."""
    path = fileio.join(model_dir, INFO_FILE)
    if not fileio.exists(path):
        raise ValueError(f"{model_dir}: no {INFO_FILE} there, so no int8 model; write one with "
                         "imcap-quantize")
    try:
        info = fileio.read_json(path)
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    missing = [key for key in ("format_version", "backbone", "image_size", "weights_sha256", "outputs")
               if key not in info]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if info["format_version"] != FORMAT_VERSION or list(info["outputs"]) != list(OUTPUTS):
        raise ValueError(f"{path}: format {info['format_version']} with outputs {info['outputs']}; this version "
                         f"reads format {FORMAT_VERSION} with outputs {list(OUTPUTS)}: quantize again")
    for name in (MODEL_XML, MODEL_BIN):
        if not fileio.exists(fileio.join(model_dir, name)):
            raise ValueError(f"{model_dir}: {name} is missing (an incomplete int8 model directory)")
    return info


def check_bin(data: bytes, info: dict, model_dir: str) -> None:
    """extractor.bin must be the one quantization.json describes (not a file from another quantization)."""
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    if info.get("bin_sha256") and digest != info["bin_sha256"]:
        raise ValueError(f"{model_dir}: {MODEL_BIN} (sha256 {digest[:12]}) is not the one its {INFO_FILE} describes "
                         f"({info['bin_sha256'][:12]}): files of two int8 models were mixed; copy the directory whole")


def check_matches(info: dict, model_dir: str, backbone: str, image_size: int, weights_sha256: str) -> None:
    """The int8 model must be the extractor the job runs: same backbone, size and (Keras) weights."""
    problems = []
    if info["backbone"] != backbone:
        problems.append(f"backbone {info['backbone']}, not {backbone}")
    if int(info["image_size"]) != image_size:
        problems.append(f"image size {info['image_size']}, not {image_size}")
    if weights_sha256 and info["weights_sha256"] != weights_sha256:
        problems.append(f"weights sha256 {info['weights_sha256'][:12]}, not {weights_sha256[:12]}")
    if problems:
        raise ValueError(f"--int8_model {model_dir} was quantized from another extractor ({'; '.join(problems)}): "
                         "quantize these weights with imcap-quantize")
