"""The demo: every stage of the system on a generated sample dataset, offline.

    python -m beam_jobs.tools.demo [--output_dir demo_out] [--num_images 300]      (what `make demo` runs)

1. writes the synthetic Flickr8k-layout dataset (`beam_jobs.tools.sample_dataset`);
2. runs the extract job on it (features, their 10x10 spatial grids and tokenized captions in TFRecords);
3. trains the attention decoder (`trainer.task --decoder attention`, a small one) and evaluates it on the dev
   split (BLEU, CIDEr-D);
4. runs the caption job on the dev images as loose files and on the test images packed in a .tar.gz, keeping
   each caption's attention maps (``--attention_maps``);
5. renders the captions as an HTML gallery, with where each word looked.

Feature weights: Keras' ImageNet Xception when it can be had (in Keras' cache, downloaded, or installed with
``imcap-weights install FILE``), or ``--weights PATH``; otherwise the demo says so and goes on with random-init
features, which still tell the synthetic scenes apart.
"""
import json
import logging
import os
import sys
import tarfile

from beam_jobs import runtime
from beam_jobs.caption import job as caption_job
from beam_jobs.extract import job as extract_job
from beam_jobs.tools import gallery, sample_dataset
from schemas import backbones
from schemas.records import MetadataKeys, SplitKeys
from trainer import cli, evaluate, task


def choose_weights(requested: str | None) -> str:
    """The weights the demo will use, saying plainly why."""
    if requested:
        return requested
    try:
        backbones.build_feature_extractor(backbones.XCEPTION, backbones.IMAGENET, backbones.XCEPTION.min_image_size)
        logging.info("using Keras' ImageNet Xception weights (%s)", backbones.imagenet_source().path)
        return backbones.IMAGENET
    except backbones.WeightsUnavailable as error:
        logging.warning("ImageNet weights are not available here (%s).\n  The demo continues with RANDOM-INIT "
                        "Xception features (--weights none): they still tell the synthetic scenes apart, but "
                        "real photos need the ImageNet weights (imcap-weights says how to install them offline).",
                        runtime.first_line(str(error)))
        return backbones.RANDOM_INIT


def _pack(paths: list[str], archive: str) -> str:
    with tarfile.open(archive, "w:gz") as handle:
        for path in paths:
            handle.add(path, arcname=f"test_images/{os.path.basename(path)}")
    return archive


def main(argv=None) -> int:
    runtime.setup_logging()
    cli.quiet_tensorflow()
    parser = cli.ArgumentParser(prog="imcap-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="demo_out", metavar="DIR",
                        help="where the dataset, features, model, captions and gallery go")
    parser.add_argument("--num_images", "--images", dest="num_images", type=runtime.positive_int, default=300,
                        metavar="N", help="photos in the generated sample dataset")
    parser.add_argument("--weights", help="feature weights (default: ImageNet if available, else none)")
    parser.add_argument("--epochs", type=runtime.positive_int, default=40, help="training epochs of the demo model")
    args = parser.parse_args(argv)
    return cli.exit_status(lambda: _demo(args))


def _demo(args) -> None:
    """The five steps, each logged."""

    out = args.output_dir
    dataset_dir, features_dir = os.path.join(out, "dataset"), os.path.join(out, "features")
    model_dir, captions_dir = os.path.join(out, "model"), os.path.join(out, "captions")
    gallery_path = os.path.join(out, "gallery.html")

    splits = sample_dataset.write_sample_dataset(dataset_dir, num_images=args.num_images)
    logging.info("[1/5] sample dataset: %s (%s)", dataset_dir, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    weights = choose_weights(args.weights)
    logging.info("[2/5] extract job -> %s", features_dir)
    extract_job.run(["--dataset_dir", dataset_dir, "--output_dir", features_dir, "--weights", weights,
                          "--min_word_count", "1", "--spatial_grid", "full", "--overwrite"])

    logging.info("[3/5] training the attention decoder -> %s", model_dir)
    task.train(task.parse_args(["--data_dir", features_dir, "--model_dir", model_dir, "--epochs", str(args.epochs),
                                "--decoder", "attention", "--units", "256", "--attention_dim", "128",
                                "--patience", "5", "--restart", "--verbose", "2"]))
    scores = evaluate.evaluate(features_dir, model_dir, "dev", beam_width=3)
    logging.info("dev BLEU-1..4 (beam 3): %s; CIDEr-D %.3f",
                 " ".join(f"{scores[f'bleu_{n}']:.3f}" for n in range(1, 5)), scores["cider_d"])

    images_dir = os.path.join(dataset_dir, "Flicker8k_Dataset")
    archive = _pack([os.path.join(images_dir, name) for name in splits["test"]],
                    os.path.join(out, "test_images.tar.gz"))
    dev_list = os.path.join(out, "dev_images.txt")
    with open(dev_list, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{os.path.abspath(os.path.join(images_dir, name))}\n" for name in splits["dev"]))
    logging.info("[4/5] caption job on the dev images (a list file) and the test images (a .tar.gz) -> %s/",
                 captions_dir)
    caption_job.run(["--input", dev_list, "--input", archive, "--model_dir", model_dir, "--output_dir",
                        captions_dir, "--weights", weights, "--attention_maps", "--overwrite"])

    logging.info("[5/5] gallery -> %s", gallery_path)
    gallery.main(["--captions", captions_dir, "--output", gallery_path,
                  "--title", "imcap demo: synthetic scenes"])

    metadata = json.load(open(os.path.join(features_dir, "metadata.json"), encoding="utf-8"))
    logging.info(
        "demo finished. Outputs under %s:\n"
        "  dataset   %s (generated, Flickr8k layout)\n"
        "  features  %s (%s; weights %s)\n"
        "  model     %s (decoder.keras, vocab.txt, bundle.json, training_curve.png); dev BLEU-4 %.3f\n"
        "  captions  %s\n"
        "  gallery   %s  <- open this in a browser (click 'where each word looked' under a photo)",
        out, dataset_dir, features_dir,
        ", ".join(f"{s} {c[SplitKeys.IMAGES]} images" for s, c in metadata[MetadataKeys.SPLITS].items()),
        metadata[MetadataKeys.WEIGHTS],
        model_dir, scores["bleu_4"], f"{captions_dir}/captions/ and {captions_dir}/errors/ (Parquet tables)",
        gallery_path)


if __name__ == "__main__":
    sys.exit(main())
