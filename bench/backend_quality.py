"""Caption quality and cost per feature backend: the caption job on the Flickr8k dev photos with the same bundle and
each `--inference_backend`, side by side in one run.

    python bench/backend_quality.py --features_dir FEATURES --model_dir MODEL [--model_dir MODEL2 ...] \
        --int8_model XCEPTION_INT8 [--backends keras openvino-f32 openvino openvino-int8] [--images 1000] \
        [--beam_width 3] [--repeats 1] [--json OUT.json]

For every bundle and backend, the caption job (`beam_jobs.caption_images`, one process, loose files from a list)
runs on the first N/10 and on all N dev photos:

- quality: corpus BLEU-1..4 and CIDEr-D (`trainer.evaluate`'s scorers) of the N captions against the dev references
  (read from ``--features_dir``, the extract job's records of Flickr8k), and how many captions differ from Keras';
- speed: steady-state images/s = (N - N/10) / (t(N) - t(N/10)) (model loading and start-up cancel out), and its
  ratio to Keras float32 measured in the same run; backends run in a rotating order on each repeat;
- decoder cost: the share of the N-image run's wall time spent in the caption model's RunInference batches
  (Beam's ``inference_batch_latency_micro_secs`` of the captions step), next to the feature step's.

A bundle trained on features of another backend (extract job with ``--inference_backend``) is just another
``--model_dir``: its references are the same photos' captions.
"""
import argparse
import json
import os
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
)

BACKENDS = ("keras", "openvino-f32", "openvino", "openvino-int8")
LATENCY = "inference_batch_latency_micro_secs"


def run_caption(list_file, model_dir, weights, prefix, backend, int8_model, beam_width):
    from beam_jobs.caption import job as caption_job
    argv = ["--model_dir", model_dir, "--output_dir", prefix, "--weights", weights, "--input", list_file,
            "--inference_backend", backend, "--overwrite"]
    if beam_width:
        argv += ["--beam_width", str(beam_width)]
    if backend == "openvino-int8":
        argv += ["--int8_model", int8_model]
    result = caption_job.run(argv)
    rows, errors = read_caption_outputs(prefix)
    return rows, errors, _latency_seconds(result)


def _latency_seconds(result) -> dict:
    """Seconds spent inside RunInference batches, per step namespace (features, captions)."""
    from apache_beam.metrics.metric import MetricsFilter
    seconds = {}
    for namespace in ("imcap_features", "imcap_captions"):
        query = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(LATENCY))
        total = 0
        for distribution in query["distributions"]:
            value = distribution.committed or distribution.attempted
            total += value.sum if value else 0
        seconds[namespace] = total / 1e6
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--features_dir", required=True, help="the extract job's records of Flickr8k (references)")
    parser.add_argument("--model_dir", action="append", required=True, help="a bundle; repeat for several")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--int8_model", help="the int8 extractor (imcap-quantize) for openvino-int8")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--beam_width", type=int, default=0, help="0: the bundle's default")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if "openvino-int8" in args.backends and not args.int8_model:
        parser.error("openvino-int8 needs --int8_model (imcap-quantize writes one)")

    import logging

    from beam_jobs.runtime import setup_logging
    from trainer import data, evaluate
    setup_logging(logging.WARNING)

    names = split_names(args.dataset_dir, "dev")[:args.images]
    small = names[:max(1, len(names) // 10)]
    ids, _, references = data.references(args.features_dir, "dev", 2048)
    reference_by_name = dict(zip(ids, references))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        lists = {}
        for subset in (small, names):
            lists[len(subset)] = os.path.join(scratch, f"dev-{len(subset)}.txt")
            with open(lists[len(subset)], "w", encoding="utf-8") as handle:
                handle.write("".join(f"{path}\n" for path in image_paths(args.dataset_dir, subset)))
        for model_dir in args.model_dir:
            rates = {backend: [] for backend in args.backends}
            captions, shares = {}, {}
            for repeat in range(args.repeats):
                order = args.backends[repeat % len(args.backends):] + args.backends[:repeat % len(args.backends)]
                for backend in order:
                    durations = {}
                    for subset in (small, names):
                        prefix = os.path.join(scratch, f"{backend}-{len(subset)}", "c")
                        durations[len(subset)], (rows, errors, latency) = timed(
                            run_caption, lists[len(subset)], model_dir, args.weights, prefix, backend,
                            args.int8_model, args.beam_width)
                    if errors:
                        raise SystemExit(f"{backend}: {len(errors)} error rows, e.g. {errors[0]}")
                    rates[backend].append((len(names) - len(small)) / (durations[len(names)] - durations[len(small)]))
                    captions[backend] = {os.path.basename(row["image_uri"]): row["caption"] for row in rows}
                    shares[backend] = {name: seconds / durations[len(names)] for name, seconds in latency.items()}
                    print(f"{os.path.basename(model_dir.rstrip('/'))} repeat {repeat + 1} {backend}: "
                          f"{durations[len(small)]:.1f} s for {len(small)}, {durations[len(names)]:.1f} s for "
                          f"{len(names)}", flush=True)
            keras_rate = median(rates["keras"]) if "keras" in rates else None
            for backend in args.backends:
                got = captions[backend]
                order = sorted(got)
                metrics = evaluate.caption_metrics([reference_by_name[name] for name in order],
                                                   [got[name] for name in order])
                differ = sum(got[name] != captions["keras"].get(name) for name in order) if "keras" in captions \
                    else None
                results.append({"model_dir": model_dir, "backend": backend, "images": len(got),
                                **{key: metrics[key] for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")},
                                "images_per_second": median(rates[backend]),
                                "vs_keras": median(rates[backend]) / keras_rate if keras_rate else None,
                                "captions_differing_from_keras": differ,
                                "feature_share": shares[backend]["imcap_features"],
                                "decoder_share": shares[backend]["imcap_captions"]})
    table = [("bundle", "backend", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "images/s", "vs keras",
              "captions != keras", "feature step", "decoder")]
    for row in results:
        table.append((os.path.basename(row["model_dir"].rstrip("/")), row["backend"],
                      *(f"{row[key]:.4f}" for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")),
                      f"{row['images_per_second']:.2f}", f"{row['vs_keras']:.2f}" if row["vs_keras"] else "",
                      f"{row['captions_differing_from_keras']} of {row['images']}",
                      f"{row['feature_share']:.0%}", f"{row['decoder_share']:.0%}"))
    print_table(f"Caption job per feature backend, {len(names)} dev photos (steady state from {len(small)} vs "
                f"{len(names)}; medians of {args.repeats}) ({machine()})", table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine(), "images": len(names), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
