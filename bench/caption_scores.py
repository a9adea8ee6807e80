"""Scores of a bundle through the caption job, next to `trainer.evaluate` on the extract job's records.

    python bench/caption_scores.py --features_dir FEATURES --model_dir MODEL [--split dev] [--beam_width B]

Runs ``imcap-caption`` on the split's photos twice, as loose files and packed in one .tar.gz (in a temporary
directory: photos are never copied into the repository), with the bundle's own defaults (backend, int8 model,
weights), then scores each set of captions -- corpus BLEU-1..4 and CIDEr-D with the split's references, as
`trainer.evaluate` scores -- and prints them beside `trainer.evaluate` on FEATURES, with the job's row and error
row counts. Scores that differ mean the job captions from other features than the records hold.
"""
import argparse
import json
import os
import tarfile
import tempfile

from common import DEFAULT_DATASET, image_paths, print_table, read_caption_outputs, split_names, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--features_dir", required=True, help="the extract job's records the bundle was trained on")
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--beam_width", type=int, default=None, help="default: the bundle's")
    args = parser.parse_args()

    import logging

    from beam_jobs.caption import job as caption_job
    from beam_jobs.runtime import setup_logging
    from trainer import data, evaluate
    from trainer.bundle import Bundle
    setup_logging(logging.WARNING)

    beam_width = args.beam_width or Bundle(args.model_dir).decoding_for().beam_width
    names = split_names(args.dataset_dir, args.split)
    ids, _, references = data.references(args.features_dir, args.split, 2048)
    reference_by_name = dict(zip(ids, references))
    missing = sorted(set(names) - set(reference_by_name))
    if missing:
        raise SystemExit(f"{len(missing)} photos of {args.split} have no records in {args.features_dir}")
    with tempfile.TemporaryDirectory() as scratch:
        evaluated = evaluate.evaluate(args.features_dir, args.model_dir, args.split, beam_width=beam_width,
                                      output=os.path.join(scratch, "evaluate.json"))
        listing = os.path.join(scratch, f"{args.split}.txt")
        with open(listing, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{path}\n" for path in image_paths(args.dataset_dir, names)))
        archive = os.path.join(scratch, f"{args.split}.tar.gz")
        with tarfile.open(archive, "w:gz") as handle:
            for path in image_paths(args.dataset_dir, names):
                handle.add(path, arcname=f"{args.split}/{os.path.basename(path)}")
        seconds, _ = timed(caption_job.run, ["--model_dir", args.model_dir, "--output_dir",
                                             os.path.join(scratch, "out", "c"), "--input", listing, "--input",
                                             archive, "--beam_width", str(beam_width), "--overwrite"])
        rows, errors = read_caption_outputs(os.path.join(scratch, "out", "c"))

    by_source = {"loose files": {}, "one .tar.gz": {}}
    for row in rows:
        by_source["one .tar.gz" if "!" in row["image_uri"] else "loose files"][
            os.path.basename(row["image_uri"])] = row["caption"]
    table = [("captions", "images", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D")]
    result = {"rows": len(rows), "errors": len(errors), "seconds": round(seconds, 1), "beam_width": beam_width}
    for source, captions in by_source.items():
        order = sorted(captions)
        refs, hyps = [reference_by_name[name] for name in order], [captions[name] for name in order]
        scores = {**evaluate.bleu_scores(refs, hyps), "cider_d": evaluate.cider_score(refs, hyps)}
        table.append((f"caption job ({source})", len(captions),
                      *(f"{scores[key]:.4f}" for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d"))))
        result[source] = scores
    table.append(("trainer.evaluate (records)", evaluated["images"],
                  *(f"{evaluated[key]:.4f}" for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d"))))
    print_table(f"{args.model_dir} on {args.split}, beam {beam_width}: {len(rows)} rows, {len(errors)} error rows, "
                f"caption job {seconds:.0f} s", table)
    result["trainer.evaluate"] = {key: evaluated[key] for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
