"""Trains a decoder with several seeds, evaluates each and their ensemble, and reports mean and spread.

    python bench/seeds.py --data_dir FEATURES --work_dir DIR [--seeds 0 1 2] [--split dev] [--beam_width 3] \
        [--ensemble_beam_width 3] [-- TRAINER FLAGS, e.g. --decoder attention]

Each seed trains with ``python -m trainer.task --data_dir FEATURES --model_dir DIR/seed<N> --seed N TRAINER FLAGS``
(a bundle already in DIR/seed<N> is kept and only evaluated, so an interrupted bench resumes where it stopped: the
trainer itself resumes an interrupted seed). Then ``python -m trainer.evaluate`` on ``--split`` for every seed and
for the ensemble of all of them. Prints a table (BLEU-1..4, CIDEr-D, best epoch, median seconds per epoch) with
the mean and the sample standard deviation over the seeds, and writes it as DIR/seeds_<split>.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _evaluate(data_dir: str, model_dirs: list[str], split: str, beam_width: int, output: str) -> dict:
    command = [sys.executable, "-m", "trainer.evaluate", "--data_dir", data_dir, "--split", split,
               "--beam_width", str(beam_width), "--output", output]
    for model_dir in model_dirs:
        command += ["--model_dir", model_dir]
    _run(command + ["--batch_size", "250"])
    with open(output, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split", default="dev")
    parser.add_argument("--beam_width", type=int, default=3)
    parser.add_argument("--ensemble_beam_width", type=int, default=None, help="default: --beam_width")
    args, trainer_flags = parser.parse_known_args(argv)
    trainer_flags = [flag for flag in trainer_flags if flag != "--"]
    os.makedirs(args.work_dir, exist_ok=True)

    rows, model_dirs = [], []
    for seed in args.seeds:
        model_dir = os.path.join(args.work_dir, f"seed{seed}")
        model_dirs.append(model_dir)
        if not os.path.exists(os.path.join(model_dir, "bundle.json")):
            _run([sys.executable, "-m", "trainer.task", "--data_dir", args.data_dir, "--model_dir", model_dir,
                  "--seed", str(seed), "--verbose", "2", *trainer_flags])
        result = _evaluate(args.data_dir, [model_dir], args.split, args.beam_width,
                           os.path.join(model_dir, f"eval_{args.split}_beam{args.beam_width}.json"))
        with open(os.path.join(model_dir, "bundle.json"), encoding="utf-8") as handle:
            training = json.load(handle)["training"]
        rows.append({"seed": seed, **{key: result[key] for key in METRICS},
                     "best_epoch": training["best_epoch"], "epochs_run": training["epochs_run"],
                     "median_epoch_seconds": training["median_epoch_seconds"],
                     "decoder": training["hyperparameters"].get("decoder", "merge")})

    summary = {key: {"mean": statistics.fmean(row[key] for row in rows),
                     "stdev": statistics.stdev(row[key] for row in rows) if len(rows) > 1 else 0.0}
               for key in METRICS}
    ensemble = None
    if len(model_dirs) > 1:
        width = args.ensemble_beam_width or args.beam_width
        ensemble = _evaluate(args.data_dir, model_dirs, args.split, width,
                             os.path.join(args.work_dir, f"ensemble_{args.split}_beam{width}.json"))

    print(f"\n{args.split}, beam {args.beam_width}; trainer flags: {' '.join(trainer_flags) or '(defaults)'}")
    print("| seed | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | best epoch / run | s per epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row[key]:.3f}" for key in METRICS)
              + f" | {row['best_epoch']} / {row['epochs_run']} | {row['median_epoch_seconds']:.0f} |")
    print("| mean ± sd | " + " | ".join(f"{summary[key]['mean']:.3f} ± {summary[key]['stdev']:.3f}"
                                       for key in METRICS) + " | | |")
    if ensemble:
        print(f"| ensemble of {len(model_dirs)} (beam {ensemble['beam_width']}) | "
              + " | ".join(f"{ensemble[key]:.3f}" for key in METRICS) + " | | |")
    with open(os.path.join(args.work_dir, f"seeds_{args.split}.json"), "w", encoding="utf-8") as handle:
        json.dump({"trainer_flags": trainer_flags, "beam_width": args.beam_width, "seeds": rows,
                   "summary": summary, "ensemble": ensemble and {key: ensemble[key] for key in METRICS}},
                  handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
