"""One archive captioned by every task slot of a real Flink cluster, shown from Flink's own per-subtask metrics.

    bench/flink/setup_flink.sh                      # once: Beam's Flink job server jar and a Flink 1.19 distribution
    python bench/flink_archive.py [--images 240] [--unit_members 8] [--keep]

Starts a standalone Flink 1.19.3 cluster on 127.0.0.1 (one task manager, 2 slots) and an external SDK worker pool
whose workers run imcap installed from its sdist in a clean virtualenv (as `bench/scaleout.py` does), then runs the
caption job on ONE .tar of N Flickr8k photos with ``--runner=FlinkRunner --parallelism=2``. When the job is done it
asks Flink's REST API for the job's vertices and prints, for the vertex that reads the work units, the records each
of its parallel subtasks read: both slots read units of the one archive. Also checks that every photo is in one
caption row, and compares the captions with the in-process run's.
"""
import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request

from common import DEFAULT_DATASET, image_paths, machine, print_table, read_caption_outputs, split_names
from scaleout import FLINK_DIR, run, start_flink_cluster, start_worker_pool, stop_flink_cluster


def rest(path: str):
    with urllib.request.urlopen(f"http://localhost:8081{path}", timeout=10) as response:
        return json.load(response)


def subtask_records(job_id: str) -> list[tuple[str, list[int]]]:
    """(vertex name, records read by each subtask) of every vertex of a finished job."""
    out = []
    for vertex in rest(f"/jobs/{job_id}")["vertices"]:
        detail = rest(f"/jobs/{job_id}/vertices/{vertex['id']}")
        counts = [subtask.get("metrics", {}).get("read-records", 0) for subtask in detail.get("subtasks", [])]
        out.append((vertex["name"], counts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--unit_members", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    jar = os.path.join(FLINK_DIR, "job-server.jar")
    flink_home = os.path.join(FLINK_DIR, "flink-1.19.3")
    if not os.path.exists(jar):
        sys.exit(f"{jar} is missing: run bench/flink/setup_flink.sh first")
    scratch = tempfile.mkdtemp(prefix="imcap-flink-archive-")
    archive = os.path.join(scratch, "one.tar")
    with tarfile.open(archive, "w") as handle:
        for path in image_paths(args.dataset_dir, split_names(args.dataset_dir, "train")[:args.images]):
            handle.add(path, arcname=os.path.basename(path))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from archive_scale import tiny_bundle
    model_dir, weights = tiny_bundle(scratch)
    pool = cluster_conf = None
    try:
        pool, port = start_worker_pool(scratch)
        cluster_conf = start_flink_cluster(scratch, flink_home)
        common = ["--input", archive, "--model_dir", model_dir, "--weights", weights, "--overwrite",
                  "--archive_unit_members", str(args.unit_members)]
        local_out = os.path.join(scratch, "local")
        run([sys.executable, "-m", "beam_jobs.caption_images", *common, "--output_dir", local_out],
            os.path.join(scratch, "local.log"))
        flink_out = os.path.join(scratch, "flink")
        seconds = run([sys.executable, "-m", "beam_jobs.caption_images", *common, "--output_dir", flink_out,
                       "--runner=FlinkRunner", f"--flink_job_server_jar={jar}", "--flink_master=localhost:8081",
                       "--parallelism=2", "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"],
                      os.path.join(scratch, "flink.log"))
        jobs = sorted(rest("/jobs/overview")["jobs"], key=lambda job: job["start-time"])
        job = jobs[-1]
        rows = [("vertex (operators chained)", "records read per subtask")]
        for name, counts in subtask_records(job["jid"]):
            # Beam's Flink runner names a fused stage by its transforms: the stage after the redistribution
            # starts with ReadImages (ReadUnits) and goes on with Features
            if "ReadImages" in name and "Features" in name:
                rows.append((name[:110] + ("..." if len(name) > 110 else ""), " / ".join(map(str, counts))))
        local_rows, flink_rows = read_caption_outputs(local_out), read_caption_outputs(flink_out)
        same = sorted((r["image_uri"], r["caption"]) for r in local_rows[0]) == \
            sorted((r["image_uri"], r["caption"]) for r in flink_rows[0])
        uris = [row["image_uri"] for row in flink_rows[0] + flink_rows[1]]
        print_table(f"Flink 1.19.3 standalone cluster, parallelism 2: one .tar of {args.images} photos, units of "
                    f"{args.unit_members} members; job {job['jid']} {job['state']} in {seconds:.0f} s wall "
                    f"({machine()})", rows)
        print(f"\ncaption rows {len(flink_rows[0])}, error rows {len(flink_rows[1])}, distinct URIs {len(set(uris))} "
              f"of {len(uris)}; captions identical to the in-process run: {same}")
    finally:
        if cluster_conf:
            stop_flink_cluster(flink_home, cluster_conf)
        if pool:
            pool.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")


if __name__ == "__main__":
    main()
