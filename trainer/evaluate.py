"""Evaluates a model bundle on splits of the extract job's records: corpus BLEU-1..4 and CIDEr-D.

    python -m trainer.evaluate --data_dir FEATURES --model_dir MODEL --split dev [--beam_width K]
    python -m trainer.evaluate --data_dir COMBINED --model_dir MODEL --split flickr8k/dev --split coco/val
    python -m trainer.evaluate --data_dir FLICKR8K --data_dir COCO --model_dir MODEL --split dev --split val

(also installed as ``imcap-evaluate``). Captions are decoded in batches from the records' features and compared
with all reference captions of each image, both normalized the same way (`schemas.captions`), start/end tokens
removed. BLEU is NLTK's ``corpus_bleu`` with uniform weights over 1..n-grams and no smoothing (the standard corpus
BLEU); CIDEr-D is pycocoevalcap's (`cider_score`). Repeat ``--model_dir`` to evaluate an ensemble.

Prints a JSON object and saves it as ``MODEL/eval_<split>_beam<K>.json``. With several splits (each ``--split``
in every ``--data_dir`` that has it: in-domain and out-of-domain side by side), one JSON object per split, and a
table of them on stderr.
"""
import json
import posixpath
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


def cider_score(references: list[list[str]], hypotheses: list[str]) -> float:
    """CIDEr-D (Vedantam et al. 2015) as the COCO caption evaluation computes it: pycocoevalcap's ``Cider``, which
    is the CIDEr-D variant (Gaussian length penalty, sigma 6; clipped n-gram counts; x10), with document
    frequencies from the references of the evaluated split. The captions are already tokenized and lower-cased
    by `schemas.captions` (the PTB tokenizer step of the COCO scripts, which needs Java, is not run)."""
    from pycocoevalcap.cider.cider import Cider
    gts = {index: list(image) for index, image in enumerate(references)}
    res = {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def has_repeated_ngram(words, size: int = 2) -> bool:
    """Whether a caption (a list of words or ids) holds some n-gram of ``size`` twice."""
    grams = [tuple(words[i:i + size]) for i in range(len(words) - size + 1)]
    return len(set(grams)) < len(grams)


def caption_metrics(references: list[list[str]], hypotheses: list[str]) -> dict:
    """BLEU-1..4 and CIDEr-D (key ``cider_d``)."""
    return bleu_scores(references, hypotheses) | {"cider_d": cider_score(references, hypotheses)}


def check_records(bundle, data_dir: str, split: str) -> dict:
    """The records' metadata, after checking that ``bundle`` can be evaluated on their ``split``: features of its
    weights, its grid, and images in the split; a ValueError says what is wrong."""
    from schemas import records
    from trainer import data
    metadata = data.read_metadata(data_dir)
    if metadata[MetadataKeys.WEIGHTS_SHA256] != bundle.config[BundleKeys.WEIGHTS_SHA256]:
        raise ValueError(f"{data_dir} holds features of other backbone weights (sha256 "
                         f"{metadata[MetadataKeys.WEIGHTS_SHA256][:12]}) than {bundle.model_dir} was trained on "
                         f"({bundle.config[BundleKeys.WEIGHTS_SHA256][:12]})")
    grid, held = bundle.grid_shape, records.grid_shape(metadata)
    if grid and held != grid:
        raise ValueError(f"{bundle.model_dir} decodes from {grid[0]}x{grid[1]}x{grid[2]} spatial grids, and "
                         f"{data_dir} holds {'x'.join(map(str, held)) + ' grids' if held else 'no grids'}; evaluate "
                         "it on records of the extract job with the same --spatial_grid")
    if data.split_sizes(metadata, split)[0] == 0:
        raise ValueError(f"no records in the {split} split of {data_dir}")
    return metadata


def evaluate(data_dir: str, model_dir, split: str, beam_width: int | None = None,
             length_penalty: float | None = None, batch_size: int = 256, output: str | None = None,
             no_repeat_ngram_size: int | None = None, bundle=None, label: str | None = None) -> dict:
    """Metrics of one bundle (``model_dir`` a path) or an ensemble (a list of paths) on a split. The result is
    saved as ``output``, by default ``eval_<split>_beam<K>.json`` in the (first) bundle's directory, or
    ``eval_<split>_beam<K>_<ensemble id>.json`` for an ensemble."""
    from schemas import records
    from trainer import data
    from trainer.bundle import load_bundles

    bundle = bundle or load_bundles(model_dir)  # ``bundle``: already loaded (several splits)
    metadata = check_records(bundle, data_dir, split)
    grid = bundle.grid_shape
    beam_width, length_penalty, no_repeat_ngram_size = bundle.decoding_for(beam_width, length_penalty,
                                                                           no_repeat_ngram_size)
    image_ids, features, references = data.references(data_dir, split, metadata[MetadataKeys.FEATURE_DIM], grid,
                                                      count=data.split_sizes(metadata, split)[0])
    if not image_ids:
        raise ValueError(f"no records in the {split} split of {data_dir}")
    start = time.perf_counter()
    decoded = bundle.decoder.caption(features, beam_width, length_penalty, batch_size,
                                     progress=f"decoding {split} (beam {beam_width})",
                                     no_repeat_ngram_size=no_repeat_ngram_size)
    seconds = time.perf_counter() - start
    hypotheses = [text for text, _ in decoded]
    result = {
        "data_dir": data_dir, "split": split, "images": len(image_ids), "beam_width": beam_width,
        "length_penalty": length_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "model_id": bundle.model_id, "members": [member.model_id for member in bundle.members],
        **caption_metrics(references, hypotheses),
        "mean_caption_length": sum(len(h.split()) for h in hypotheses) / len(hypotheses),
        "distinct_captions": len(set(hypotheses)),
        "repeated_bigram_share": sum(has_repeated_ngram(h.split(), 2) for h in hypotheses) / len(hypotheses),
        "decode_images_per_second": round(len(image_ids) / seconds, 1),
        "examples": [{"image_id": image_ids[i], "caption": hypotheses[i], "references": references[i][:2]}
                     for i in range(min(5, len(image_ids)))],
    }
    ensemble = len(bundle.members) > 1
    stem = records.split_file_stem((label or split).replace(":", "."))
    fileio.write_json(output or fileio.join(bundle.model_dir, f"eval_{stem}_beam{beam_width}"
                                            + (f"_{bundle.model_id}" if ensemble else "") + ".json"), result)
    return result


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="imcap-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, action="append",
                        help="--output_dir of the extract job; repeat it to evaluate on the splits of records of "
                             "other datasets too (extracted with the bundle's weights)")
    parser.add_argument("--model_dir", required=True, action="append",
                        help="a model bundle (trainer.task's --model_dir); repeat it to evaluate the ensemble of "
                             "several bundles trained on the same records")
    parser.add_argument("--split", action="append",
                        help="a split of the records, e.g. dev, or coco/val in records of several datasets; repeat "
                             "it to see several side by side, each in every --data_dir that has it (default: each "
                             "--data_dir's dev, or val)")
    parser.add_argument("--output", help="where to save the result (default: in the first bundle's directory; "
                                         "with several --split, one file per split)")
    parser.add_argument("--beam_width", type=int, help="1 = greedy (default: the bundle's)")
    parser.add_argument("--length_penalty", type=float, help="default: the bundle's")
    parser.add_argument("--no_repeat_ngram_size", type=cli.non_negative_int, metavar="N",
                        help="never repeat an n-gram of N words; 0: no blocking (default: the bundle's)")
    parser.add_argument("--batch_size", type=cli.positive_int, default=256, help="images decoded per batch")
    args = parser.parse_args(argv)
    if args.beam_width is not None and args.beam_width < 1:
        parser.error("--beam_width must be at least 1")
    if args.split and len(set(args.split)) != len(args.split):
        parser.error("--split: a split is given twice")
    if len(set(args.data_dir)) != len(args.data_dir):
        parser.error("--data_dir: a directory is given twice")
    if args.output and (len(args.split or ()) > 1 or len(args.data_dir) > 1):
        parser.error("--output names one file; with several splits the results go to the bundle's directory")
    return args


def main(argv=None) -> int:
    cli.setup_logging()
    cli.quiet_tensorflow()
    args = parse_args(argv)
    return cli.exit_status(lambda: _evaluate_splits(args))


def evaluations(data_dirs: list[str], splits: list[str] | None) -> list[tuple[str, str, str]]:
    """(label, data_dir, split) of every requested split in every records directory that has it; the label is the
    split, or ``<records directory name>:<split>`` with several directories. Raises ValueError, before anything is
    decoded, for a split that no directory has."""
    from schemas import records
    from trainer import data
    metadata = {data_dir: data.read_metadata(data_dir) for data_dir in data_dirs}
    names = [posixpath.basename(data_dir.rstrip("/")) or data_dir for data_dir in data_dirs]
    names = names if len(set(names)) == len(names) else list(data_dirs)
    chosen = []
    for name, data_dir in zip(names, data_dirs):
        held = metadata[data_dir][MetadataKeys.SPLITS]
        wanted = splits or [records.default_eval_split(metadata[data_dir]) or "dev"]
        for split in wanted:
            if split in held or len(data_dirs) == 1:
                chosen.append((f"{name}:{split}" if len(data_dirs) > 1 else split, data_dir, split))
    for split in splits or []:
        if not any(split == chosen_split for _, _, chosen_split in chosen):
            raise ValueError(f"no --data_dir holds a {split} split (splits: " + "; ".join(
                f"{data_dir}: {', '.join(metadata[data_dir][MetadataKeys.SPLITS])}" for data_dir in data_dirs) + ")")
    if not chosen:
        raise ValueError("no --data_dir holds a dev or val split (splits: " + "; ".join(
            f"{data_dir}: {', '.join(metadata[data_dir][MetadataKeys.SPLITS])}" for data_dir in data_dirs)
            + "); pass --split")
    for _, data_dir, split in chosen:
        data.split_sizes(metadata[data_dir], split)  # a missing split of a single --data_dir: its message
    return chosen


def _evaluate_splits(args) -> None:
    from trainer.bundle import load_bundles
    chosen = evaluations(args.data_dir, args.split)
    bundle = load_bundles(args.model_dir)
    for _, data_dir, split in chosen:  # all of them before any is decoded
        check_records(bundle, data_dir, split)
    results = {label: evaluate(data_dir, args.model_dir, split, args.beam_width, args.length_penalty,
                               args.batch_size, args.output, args.no_repeat_ngram_size, bundle=bundle,
                               label=label if len(args.data_dir) > 1 else None)
               for label, data_dir, split in chosen}
    if len(results) == 1:
        print(json.dumps(next(iter(results.values())), indent=2))
        return
    print(json.dumps(results, indent=2))
    print(metrics_table(results), file=sys.stderr)


TABLE_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "repeated_bigram_share")


def metrics_table(results: dict) -> str:
    """Splits side by side: one row per split, one column per metric."""
    width = max(len("split"), *(len(split) for split in results))
    lines = [f"{'split':<{width}} {'images':>7} " + " ".join(f"{name:>8}" for name in TABLE_METRICS)]
    for split, result in results.items():
        lines.append(f"{split:<{width}} {result['images']:>7} "
                     + " ".join(f"{result[name]:>8.4f}" for name in TABLE_METRICS))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
