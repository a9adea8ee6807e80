"""imcap-quantize: writes the int8 feature extractor (`trainer.quantization`) for ``--inference_backend openvino-int8``.

    imcap-quantize --dataset_dir DATASET --weights imagenet|PATH --output_dir XCEPTION_INT8 \
        [--split train] [--calibration_images 300] [--image_size 299] [--seed 0]
    imcap-quantize --input 'photos/*.jpg' ... --output_dir XCEPTION_INT8

The calibration photos are a seeded sample of the dataset's ``--split`` (default train: never the photos a model
is evaluated on) or of the files ``--input`` matches (globs or directories on any Beam filesystem, read as the
caption job reads its ``--input``).
"""
import argparse
import sys

from beam_jobs import naming, runtime
from beam_jobs.caption.inputs import effective_pattern
from beam_jobs.extract import datasets
from beam_jobs.extract.layouts import DatasetError
from schemas import backbones, fileio
from schemas.int8_model import INFO_FILE, MODEL_BIN, MODEL_XML
from trainer import cli
from trainer.quantization import DEFAULT_CALIBRATION_IMAGES, QuantizationError, quantize_to


def calibration_candidates(args: argparse.Namespace) -> tuple[list[str], str]:
    """(image paths to sample from, a description of where they came from)."""
    if args.dataset_dir:
        loaded = datasets.load_datasets([args.dataset_dir])  # any layout the extract job reads
        if args.split not in datasets.output_splits(loaded):
            raise QuantizationError(f"--split {args.split}: {args.dataset_dir} has the splits "
                                    f"{', '.join(datasets.output_splits(loaded))}")
        return datasets.split_image_uris(loaded, args.split), f"{args.split} split of {args.dataset_dir}"
    paths = []
    for pattern in map(effective_pattern, args.input):  # a directory means every file under it, as for --input
        matched = [path for path in fileio.glob(pattern) if naming.kind_of(path) == naming.IMAGE]
        if not matched:
            raise QuantizationError(f"--input {pattern}: matches no image file")
        paths.extend(matched)
    return sorted(set(paths)), "--input " + " ".join(args.input)


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="imcap-quantize", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_dir", metavar="DIR",
                        help="calibrate on a sample of this dataset's --split (any layout the extract job reads)")
    source.add_argument("--input", "--images", dest="input", action="extend", nargs="+", metavar="GLOB",
                        help="calibrate on a sample of these image files (globs or directories, on any "
                             "filesystem; several, or repeat it)")
    parser.add_argument("--split", default="train", help="with --dataset_dir: the split to sample (default train)")
    parser.add_argument("--output_dir", required=True, metavar="DIR",
                        help="where extractor.xml/.bin and quantization.json go")
    parser.add_argument("--weights", default=backbones.IMAGENET,
                        help="imagenet (default), none (random init, for tests) or a Keras weights file")
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE,
                        help=f"the feature backbone (default {backbones.DEFAULT_BACKBONE})")
    parser.add_argument("--image_size", type=runtime.positive_int, default=299,
                        help="the backbone's input size, as the extract job's (default 299)")
    parser.add_argument("--calibration_images", type=runtime.positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                        metavar="N", help=f"photos to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="which photos are sampled (default 0)")
    args = parser.parse_args(argv)
    backbones.check_weights_spec(args.weights)
    backbones.check_image_size(backbones.get_backbone(args.backbone), args.image_size)
    return args


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
    except (QuantizationError, DatasetError, ValueError, FileNotFoundError) as error:
        print(f"error: {runtime.first_line(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
