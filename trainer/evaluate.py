"""Evaluates a model bundle on a split of the extract job's records: corpus BLEU-1..4 (and CIDEr-D).

    python -m trainer.evaluate --data_dir FEATURES --model_dir MODEL --split dev [--beam_width K]

(also installed as ``imcap-evaluate``). Captions are decoded in batches from the records' features and compared
with all reference captions of each image, both normalized the same way (`schemas.captions`), start/end tokens
removed. BLEU is NLTK's ``corpus_bleu`` with uniform weights over 1..n-grams and no smoothing (the standard corpus
BLEU); CIDEr-D comes from pycocoevalcap when it is installed (``pip install imcap[metrics]``).

Prints a JSON object and saves it as ``MODEL/eval_<split>_beam<K>.json``.
"""
import argparse
import json
import sys
import time
import warnings

from schemas import fileio
from schemas.bundle import BundleKeys
from schemas.records import MetadataKeys
from trainer import cli

BLEU_WEIGHTS = {
    "bleu_1": (1.0, 0.0, 0.0, 0.0),
    "bleu_2": (0.5, 0.5, 0.0, 0.0),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}


def bleu_scores(references: list[list[str]], hypotheses: list[str]) -> dict:
    """Corpus BLEU-1..4 of hypothesis captions against each image's reference captions (normalized strings)."""
    from nltk.translate.bleu_score import corpus_bleu
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    reference_tokens = [[reference.split() for reference in image] for image in references]
    hypothesis_tokens = [hypothesis.split() for hypothesis in hypotheses]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns when an order has no overlap at all; the score (0) says it
        return {name: float(corpus_bleu(reference_tokens, hypothesis_tokens, weights=weights))
                for name, weights in BLEU_WEIGHTS.items()}


def cider_score(references: list[list[str]], hypotheses: list[str]) -> float | None:
    """CIDEr-D from pycocoevalcap, or None where it is not installed."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return None
    gts = {index: list(image) for index, image in enumerate(references)}
    res = {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def caption_metrics(references: list[list[str]], hypotheses: list[str]) -> dict:
    metrics = bleu_scores(references, hypotheses)
    cider = cider_score(references, hypotheses)
    if cider is not None:
        metrics["cider"] = cider
    return metrics


def evaluate(data_dir: str, model_dir: str, split: str, beam_width: int | None = None,
             length_penalty: float | None = None, batch_size: int = 256) -> dict:
    from trainer import data
    from trainer.bundle import Bundle

    bundle = Bundle(model_dir)
    metadata = data.read_metadata(data_dir)
    if metadata[MetadataKeys.WEIGHTS_SHA256] != bundle.config[BundleKeys.WEIGHTS_SHA256]:
        raise ValueError(f"{data_dir} holds features of other backbone weights (sha256 "
                         f"{metadata[MetadataKeys.WEIGHTS_SHA256][:12]}) than {model_dir} was trained on "
                         f"({bundle.config[BundleKeys.WEIGHTS_SHA256][:12]})")
    beam_width, length_penalty = bundle.decoding_for(beam_width, length_penalty)
    image_ids, features, references = data.references(data_dir, split, metadata[MetadataKeys.FEATURE_DIM])
    if not image_ids:
        raise ValueError(f"no records in the {split} split of {data_dir}")
    start = time.perf_counter()
    decoded = bundle.decoder.caption(features, beam_width, length_penalty, batch_size,
                                     progress=f"decoding {split} (beam {beam_width})")
    seconds = time.perf_counter() - start
    hypotheses = [text for text, _ in decoded]
    result = {
        "split": split, "images": len(image_ids), "beam_width": beam_width, "length_penalty": length_penalty,
        "model_id": bundle.model_id, **caption_metrics(references, hypotheses),
        "mean_caption_length": sum(len(h.split()) for h in hypotheses) / len(hypotheses),
        "distinct_captions": len(set(hypotheses)),
        "decode_images_per_second": round(len(image_ids) / seconds, 1),
        "examples": [{"image_id": image_ids[i], "caption": hypotheses[i], "references": references[i][:2]}
                     for i in range(min(5, len(image_ids)))],
    }
    fileio.write_json(fileio.join(model_dir, f"eval_{split}_beam{beam_width}.json"), result)
    return result


def main(argv=None) -> int:
    cli.setup_logging()
    cli.quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="imcap-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="--output_dir of the extract job")
    parser.add_argument("--model_dir", required=True, help="a model bundle (trainer.task's --model_dir)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--beam_width", type=int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--length_penalty", type=float, help="default: the bundle's")
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.beam_width is not None and args.beam_width < 1:
        parser.error("--beam_width must be at least 1")
    return cli.exit_status(lambda: print(json.dumps(evaluate(
        args.data_dir, args.model_dir, args.split, args.beam_width, args.length_penalty, args.batch_size), indent=2)))


if __name__ == "__main__":
    sys.exit(main())
