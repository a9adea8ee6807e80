"""Peak memory of the caption job at N and 4N images: it should stay flat (goal: at most +15%).

    python bench/caption_memory.py --model_dir MODEL [--images 250] [--weights PATH] [--archive]

Each run is a fresh `python -m beam_jobs.caption_images` process on the first N (then 4N) Flickr8k train images,
given as a list file (or, with --archive, packed in one .tar.gz);
peak RSS is the process's maximum resident set size (getrusage). Runs alternate N, 4N, N, 4N, ... for --repeats.
"""
import argparse
import os
import sys
import tarfile
import tempfile

from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    image_paths,
    machine,
    median,
    peak_rss_of_command,
    print_table,
    split_names,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beam_width", type=int, default=3)
    parser.add_argument("--archive", action="store_true", help="inputs packed in a .tar.gz instead of a list")
    args = parser.parse_args()

    names = split_names(args.dataset_dir, "train")[:4 * args.images]
    results = {args.images: [], 4 * args.images: []}
    with tempfile.TemporaryDirectory() as scratch:
        inputs = {}
        for count in results:
            paths = image_paths(args.dataset_dir, names[:count])
            if args.archive:
                inputs[count] = os.path.join(scratch, f"images-{count}.tar.gz")
                with tarfile.open(inputs[count], "w:gz") as handle:
                    for path in paths:
                        handle.add(path, arcname=os.path.basename(path))
            else:
                inputs[count] = os.path.join(scratch, f"images-{count}.txt")
                with open(inputs[count], "w", encoding="utf-8") as handle:
                    handle.write("".join(f"{path}\n" for path in paths))
        for repeat in range(args.repeats):
            for count in results:
                command = [sys.executable, "-m", "beam_jobs.caption_images", "--input", inputs[count],
                           "--model_dir", args.model_dir, "--weights", args.weights, "--output_dir",
                           os.path.join(scratch, f"out-{count}-{repeat}", "c"), "--beam_width",
                           str(args.beam_width)]
                seconds, rss = peak_rss_of_command(command)
                results[count].append((seconds, rss))
                print(f"repeat {repeat + 1}: {count} images: {seconds:.1f} s, peak RSS {rss:.0f} MiB", flush=True)
    small, large = (median([rss for _, rss in results[count]]) for count in results)
    rows = [("images", "peak RSS (MiB)", "wall (s)")]
    for count in results:
        rows.append((count, f"{median([r for _, r in results[count]]):.0f}",
                     f"{median([s for s, _ in results[count]]):.1f}"))
    print_table(f"Caption job peak memory ({'tar.gz' if args.archive else 'list of files'}, beam "
                f"{args.beam_width}), medians of {args.repeats} ({machine()})", rows)
    print(f"\n4N vs N peak RSS: {large / small - 1:+.1%}")


if __name__ == "__main__":
    main()
