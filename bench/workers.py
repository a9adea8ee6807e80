"""In-process vs multi-process local runs of the extract job: throughput with 1 and 2 workers.

    python bench/workers.py [--images 200] [--repeats 2] [--weights PATH]

Runs `beam_jobs.extract_features` in fresh processes on the first N train images of Flickr8k, alternating the
in-process LocalRunner and ``--direct_running_mode=multi_processing --direct_num_workers=2``; reports wall-clock
images/s (start-up included: each worker process loads TensorFlow and the model).
"""
import argparse
import os
import sys
import tempfile

from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    machine,
    median,
    peak_rss_of_command,
    print_table,
    split_names,
    write_split_file,
)

MODES = {
    "in-process (LocalRunner)": [],
    "multi_processing, 2 workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    names = split_names(args.dataset_dir, "train")[:args.images]
    results = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        split_file = write_split_file(scratch, "train", names)
        for repeat in range(args.repeats):
            for mode, flags in MODES.items():
                command = [sys.executable, "-m", "beam_jobs.extract_features", "--dataset_dir", args.dataset_dir,
                           "--split_file", f"train={split_file}", "--weights", args.weights, "--output_dir",
                           os.path.join(scratch, "out"), "--overwrite", *flags]
                seconds, _ = peak_rss_of_command(command)
                results[mode].append(len(names) / seconds)
                print(f"repeat {repeat + 1}: {mode}: {seconds:.1f} s", flush=True)
    base = median(results["in-process (LocalRunner)"])
    rows = [("mode", "images/s (wall)", "vs in-process")]
    rows += [(mode, f"{median(rates):.2f}", f"{median(rates) / base:.2f}") for mode, rates in results.items()]
    print_table(f"Extract job, {len(names)} images, medians of {args.repeats} ({machine()})", rows)


if __name__ == "__main__":
    main()
