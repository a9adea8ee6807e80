"""Caption quality with and without repeated-n-gram blocking, on the same bundles and records, side by side.

    python bench/ngram_blocking.py --data_dir FEATURES --model_dir SEED0 --model_dir SEED1 --model_dir SEED2 \
        [--sizes 0,2,3] [--beam_width 3] [--split dev] [--label merge] [--json out.json]

For every bundle (each evaluated alone, e.g. the seeds of one recipe) and every ``--no_repeat_ngram_size`` in
``--sizes``: BLEU-1..4, CIDEr-D, the share of captions that repeat a bigram, the mean caption length and the decoding
rate (`trainer.evaluate.evaluate`); then the mean over the bundles per size, and each size's change from size 0.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from trainer import cli  # noqa: E402

METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "repeated_bigram_share", "mean_caption_length")


def main(argv=None) -> int:
    cli.setup_logging()
    cli.quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model_dir", action="append", required=True, help="a bundle; repeat for several seeds")
    parser.add_argument("--sizes", default="0,2,3", help="n-gram sizes to compare (0: no blocking)")
    parser.add_argument("--beam_width", type=cli.positive_int, default=3)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    from trainer.evaluate import evaluate
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory() as scratch:
        for model_dir in args.model_dir:
            for size in sizes:
                result = evaluate(args.data_dir, model_dir, args.split, args.beam_width, batch_size=256,
                                  output=os.path.join(scratch, "eval.json"), no_repeat_ngram_size=size)
                results[size].append(result)
                print(f"{args.label} {os.path.basename(model_dir.rstrip('/'))} n={size}: "
                      + " ".join(f"{name} {result[name]:.4f}" for name in METRICS), flush=True)
    print(f"\n{args.label}: mean of {len(args.model_dir)} bundle(s), beam {args.beam_width}, {args.split}")
    print("n  " + " ".join(f"{name:>12}" for name in METRICS))
    means = {size: {name: statistics.mean(r[name] for r in rows) for name in METRICS} for size, rows in results.items()}
    for size in sizes:
        print(f"{size:<2} " + " ".join(f"{means[size][name]:>12.4f}" for name in METRICS))
    for size in sizes[1:]:
        better = sum(r[name] > base[name] for r, base in zip(results[size], results[sizes[0]])
                     for name in ("bleu_4", "cider_d"))
        print(f"n={size} vs n={sizes[0]}: CIDEr-D {means[size]['cider_d'] - means[sizes[0]]['cider_d']:+.4f}, "
              f"BLEU-4 {means[size]['bleu_4'] - means[sizes[0]]['bleu_4']:+.4f}; "
              f"{better} of {2 * len(args.model_dir)} (bundle, BLEU-4/CIDEr-D) pairs higher")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({str(size): rows for size, rows in results.items()}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
