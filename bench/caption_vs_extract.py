"""The caption job against the extract job on the same images, and its captions against trainer.evaluate.

    python bench/caption_vs_extract.py --features_dir FEATURES --model_dir MODEL [--images 1000] [--repeats 1]

On the first N dev images of Flickr8k, in one process:

- throughput: the extract job (without and with ``--spatial_grid full``), the caption job with greedy decoding
  and with beam 3 (loose files; an attention bundle makes the feature step emit grids), each run on
  N/4 and N images; steady-state images/s = (N - N/4) / (t(N) - t(N/4)); wall-clock images/s of the N runs too;
- correctness (issue 4): the caption job on the N images packed in one .tar.gz and as loose files (2N rows,
  0 errors expected); corpus BLEU of each set of captions against the dev references, next to
  `trainer.evaluate` on the extract job's features of the same images, same beam width.

The .tar.gz and all outputs live in a temporary directory (photos are never copied into the repository).
"""
import argparse
import json
import os
import tarfile
import tempfile

from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    image_paths,
    machine,
    median,
    print_table,
    read_caption_outputs,
    split_names,
    timed,
    write_split_file,
)


def run_extract(dataset_dir, names, weights, scratch, grid="none"):
    from beam_jobs.extract import job as extract_job
    split_file = write_split_file(os.path.join(scratch, "splits"), "dev", names)
    out = os.path.join(scratch, f"extract-{len(names)}")
    extract_job.run(["--dataset_dir", dataset_dir, "--split_file", f"dev={split_file}", "--output_dir", out,
                          "--weights", weights, "--overwrite", "--vocab_file",
                          os.path.join(scratch, "vocab.txt"), "--spatial_grid", grid])
    return out


def run_caption(inputs, model_dir, weights, prefix, beam_width):
    from beam_jobs.caption import job as caption_job
    argv = ["--model_dir", model_dir, "--output_dir", prefix, "--weights", weights, "--beam_width", str(beam_width),
            "--overwrite"]
    for pattern in inputs:
        argv += ["--input", pattern]
    caption_job.run(argv)
    return read_caption_outputs(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--features_dir", required=True, help="the extract job's output on Flickr8k (references)")
    parser.add_argument("--model_dir", required=True, help="the bundle trained on those features")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--beam_width", type=int, default=3)
    args = parser.parse_args()

    import logging

    from beam_jobs.runtime import setup_logging
    from schemas.vocabulary import Vocabulary
    from trainer import data, evaluate
    setup_logging(logging.WARNING)

    names = split_names(args.dataset_dir, "dev")[:args.images]
    small = names[:max(1, len(names) // 4)]
    ids, _, references = data.references(args.features_dir, "dev", 2048)  # (grids not needed for references)
    reference_by_name = dict(zip(ids, references))

    with tempfile.TemporaryDirectory() as scratch:
        Vocabulary.load(os.path.join(args.model_dir, "vocab.txt")).save(os.path.join(scratch, "vocab.txt"))
        lists = {}
        for subset in (small, names):
            lists[len(subset)] = os.path.join(scratch, f"dev-{len(subset)}.txt")
            with open(lists[len(subset)], "w", encoding="utf-8") as handle:
                handle.write("".join(f"{p}\n" for p in image_paths(args.dataset_dir, subset)))
        archive = os.path.join(scratch, "dev.tar.gz")
        with tarfile.open(archive, "w:gz") as handle:
            for path in image_paths(args.dataset_dir, names):
                handle.add(path, arcname=f"dev/{os.path.basename(path)}")

        timings = {"extract": [], "extract, --spatial_grid full": [], "greedy": [], f"beam{args.beam_width}": []}
        walls = {key: [] for key in timings}
        for repeat in range(args.repeats):
            for key in timings:
                durations = {}
                for subset in (small, names):
                    if key.startswith("extract"):
                        durations[len(subset)], _ = timed(run_extract, args.dataset_dir, subset, args.weights,
                                                          scratch, "full" if "grid" in key else "none")
                    else:
                        width = 1 if key == "greedy" else args.beam_width
                        durations[len(subset)], _ = timed(run_caption, [lists[len(subset)]], args.model_dir,
                                                          args.weights, os.path.join(scratch, key, "c"), width)
                timings[key].append((len(names) - len(small)) / (durations[len(names)] - durations[len(small)]))
                walls[key].append(len(names) / durations[len(names)])
                print(f"repeat {repeat + 1} {key}: {durations[len(small)]:.1f} s for {len(small)} images, "
                      f"{durations[len(names)]:.1f} s for {len(names)}", flush=True)

        rows, errors = run_caption([lists[len(names)], archive], args.model_dir, args.weights,
                                   os.path.join(scratch, "both", "c"), args.beam_width)
        by_source = {"loose": {}, "tar.gz": {}}
        for row in rows:
            source = "tar.gz" if "!" in row["image_uri"] else "loose"
            by_source[source][os.path.basename(row["image_uri"])] = row["caption"]
        evaluated = evaluate.evaluate(args.features_dir, args.model_dir, "dev", beam_width=args.beam_width)

    extract = median(timings["extract"])
    table = [("job on the same dev images", "steady images/s", "vs extract", "wall images/s")]
    for key in timings:
        table.append((key if key.startswith("extract") else f"caption, {key}", f"{median(timings[key]):.2f}",
                      f"{median(timings[key]) / extract:.2f}", f"{median(walls[key]):.2f}"))
    print_table(f"Caption job vs extract job, {len(names)} dev images (steady state from {len(small)} vs "
                f"{len(names)}), medians of {args.repeats} ({machine()})", table)
    bleu = [("captions", "images", "bleu_1", "bleu_2", "bleu_3", "bleu_4")]
    for source, captions in by_source.items():
        scores = evaluate.bleu_scores([reference_by_name[name] for name in captions], list(captions.values()))
        bleu.append((f"caption job ({source})", len(captions), *(f"{scores[f'bleu_{n}']:.4f}" for n in range(1, 5))))
    bleu.append(("trainer.evaluate (records)", evaluated["images"],
                 *(f"{evaluated[f'bleu_{n}']:.4f}" for n in range(1, 5))))
    print_table(f"Beam {args.beam_width}: caption job rows {len(rows)}, error rows {len(errors)}", bleu)
    print(json.dumps({"rows": len(rows), "errors": len(errors)}))


if __name__ == "__main__":
    main()
