"""Both Beam jobs on every runner, each output compared with the in-process run's, with wall times.

    python bench/scaleout.py [--runners local,multiprocess,external,flink_local,flink_cluster] [--train 24] [--dev 8]

On a small real subset of Flickr8k (the first --train train and --dev dev images, genuine ImageNet weights):

- local          the default LocalRunner, in-process: the reference;
- multiprocess   ``--direct_running_mode=multi_processing --direct_num_workers=2``;
- external       ``--runner=PortableRunner --job_endpoint=embed --environment_type=EXTERNAL``: SDK workers come
                 from ``apache_beam.runners.worker.worker_pool_main`` on 127.0.0.1, started from a clean virtualenv in
                 which the project is installed from its sdist (the way Dataflow installs ``--setup_file``);
- flink_local    ``--runner=FlinkRunner --flink_master=[local] --parallelism=2``, the same external SDK workers;
- flink_cluster  ``--runner=FlinkRunner --flink_master=localhost:8081``: a standalone Flink 1.19 cluster
                 (JobManager + TaskManager with 2 slots) started here and stopped at the end, same workers.

The Flink runners need ``bench/flink/setup_flink.sh`` (Beam's Flink job server built from Maven Central
artifacts, Flink assembled from PyPI). The extract job's records must be equal (ids, captions, token ids exactly;
features within 1e-4), and so must the caption job's rows (captions exactly, log-probabilities within 1e-3).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

import numpy as np
import yaml
from common import (
    DEFAULT_DATASET,
    DEFAULT_WEIGHTS,
    REPO_ROOT,
    image_paths,
    machine,
    print_table,
    read_caption_outputs,
    split_names,
    write_split_file,
)

RUNNERS = ("local", "multiprocess", "external", "flink_local", "flink_cluster")
FLINK_DIR = os.environ.get("IMCAP_FLINK_DIR", os.path.expanduser("~/.cache/imcap/flink"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command, log_path, env=None, timeout=1800) -> float:
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                              timeout=timeout).returncode
    if code != 0:
        tail = open(log_path, encoding="utf-8").read()[-2500:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({code}); see {log_path}:\n{tail}")
    return time.perf_counter() - start


def sdist_virtualenv(scratch: str) -> str:
    """A clean virtualenv with the project installed from its sdist; returns its python."""
    dist = os.path.join(scratch, "dist")
    run([sys.executable, "setup.py", "-q", "sdist", "-d", dist], os.path.join(scratch, "sdist.log"))
    archive = os.path.join(dist, os.listdir(dist)[0])
    venv = os.path.join(scratch, "sdist-venv")
    run([sys.executable, "-m", "venv", venv], os.path.join(scratch, "venv.log"))
    python = os.path.join(venv, "bin", "python")
    run([python, "-m", "pip", "install", "--quiet", archive], os.path.join(scratch, "pip.log"))
    # The workers must import the installed package, not this checkout.
    check = subprocess.run([python, "-c", "import beam_jobs, os; print(os.path.dirname(beam_jobs.__file__))"],
                           capture_output=True, text=True, cwd=scratch)
    print(f"sdist {os.path.basename(archive)} installed in a clean virtualenv: beam_jobs from "
          f"{check.stdout.strip()}", flush=True)
    return python


def start_worker_pool(scratch: str):
    """(the pool's process, its port): an external SDK worker pool whose workers run imcap installed from its sdist
    in a clean virtualenv (`sdist_virtualenv`), as Dataflow installs --setup_file."""
    worker_python = sdist_virtualenv(scratch)
    port = free_port()
    # The pool starts each SDK worker as `python -c ...`: the clean virtualenv's python must come first.
    worker_env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(worker_python), os.environ.get("PATH", "")]))
    worker_env.pop("PYTHONPATH", None)
    pool = Background([worker_python, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                      os.path.join(scratch, "worker_pool.log"), cwd=scratch, env=worker_env)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, "the SDK worker pool")
    return pool, port


class Background:
    def __init__(self, command, log_path, cwd=None, env=None):
        self.log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def wait_for(check, what: str, timeout: float = 90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


def start_flink_cluster(scratch: str, flink_home: str) -> str:
    conf = os.path.join(scratch, "flink-conf")
    shutil.copytree(os.path.join(flink_home, "conf"), conf, dirs_exist_ok=True)
    config_path = os.path.join(conf, "config.yaml")
    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    taskmanager = config.setdefault("taskmanager", {})
    taskmanager["numberOfTaskSlots"] = 2
    # More memory, and more network memory than the default 128 MB (4096 buffers): Beam's pipelines have many
    # shuffles, and at parallelism 2 the extract job's graph needs more buffers than that.
    memory = taskmanager.setdefault("memory", {})
    memory.setdefault("process", {})["size"] = "3072m"
    memory["network"] = {"min": "512mb", "max": "512mb"}
    with open(config_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    env = dict(os.environ, FLINK_CONF_DIR=conf, FLINK_LOG_DIR=os.path.join(scratch, "flink-log"))
    os.makedirs(env["FLINK_LOG_DIR"], exist_ok=True)
    subprocess.run([os.path.join(flink_home, "bin", "start-cluster.sh")], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    def ready():
        with urllib.request.urlopen("http://localhost:8081/overview", timeout=2) as response:
            overview = json.load(response)
        return overview.get("taskmanagers", 0) >= 1 and overview.get("slots-total", 0) >= 2

    wait_for(ready, "the Flink cluster")
    return env["FLINK_CONF_DIR"]


def stop_flink_cluster(flink_home: str, conf: str) -> None:
    subprocess.run([os.path.join(flink_home, "bin", "stop-cluster.sh")], env=dict(os.environ, FLINK_CONF_DIR=conf),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_extract(directory: str) -> dict:
    from schemas import records
    out = {}
    for split in ("train", "dev"):
        out[split] = records.read_records(directory, split)
    out["vocab"] = open(os.path.join(directory, "vocab.txt"), encoding="utf-8").read()
    metadata = json.load(open(os.path.join(directory, "metadata.json"), encoding="utf-8"))
    out["counts"] = {key: metadata[key] for key in ("splits", "images_failed", "vocab_size", "max_length")}
    for split in out["counts"]["splits"].values():
        split.pop("files", None)
    return out


def same_extract(a: dict, b: dict) -> str:
    from schemas import records
    if a["vocab"] != b["vocab"] or a["counts"] != b["counts"]:
        return "vocabulary or counts differ"
    for split in ("train", "dev"):
        if [r[records.IMAGE_ID] for r in a[split]] != [r[records.IMAGE_ID] for r in b[split]]:
            return f"{split}: different images"
        for x, y in zip(a[split], b[split]):
            if x[records.CAPTIONS] != y[records.CAPTIONS] or x[records.CAPTION_IDS] != y[records.CAPTION_IDS]:
                return f"{split}: captions differ for {x[records.IMAGE_ID]}"
            if not np.allclose(x[records.IMAGE_FEATURES], y[records.IMAGE_FEATURES], rtol=1e-4, atol=1e-5):
                return f"{split}: features differ for {x[records.IMAGE_ID]}"
    return "identical"


def read_captions(prefix: str) -> tuple[list, list]:
    rows, errors = read_caption_outputs(prefix)
    return sorted(rows, key=lambda r: r["image_uri"]), sorted(errors, key=lambda r: r["image_uri"])


def same_captions(a, b) -> str:
    (rows_a, errors_a), (rows_b, errors_b) = a, b
    if [(r["image_uri"], r["caption"]) for r in rows_a] != [(r["image_uri"], r["caption"]) for r in rows_b]:
        return "captions differ"
    if any(abs(x["log_prob"] - y["log_prob"]) > 1e-3 for x, y in zip(rows_a, rows_b)):
        return "log-probabilities differ"
    return "identical" if errors_a == errors_b else "error rows differ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--model_dir", help="bundle for the caption job (default: a small one trained here)")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--dev", type=int, default=8)
    parser.add_argument("--keep", help="keep all outputs and logs in this directory")
    args = parser.parse_args()
    # Stop what was started (Flink cluster, worker pool) when killed, not only on errors.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    runners = [r for r in args.runners.split(",") if r]
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runners {sorted(unknown)}; known: {RUNNERS}")

    scratch = args.keep or tempfile.mkdtemp(prefix="imcap-scaleout-")
    os.makedirs(scratch, exist_ok=True)
    train, dev = split_names(args.dataset_dir, "train")[:args.train], split_names(args.dataset_dir, "dev")[:args.dev]
    train_split = write_split_file(os.path.join(scratch, "splits"), "train", train)
    dev_split = write_split_file(os.path.join(scratch, "splits"), "dev", dev)
    dev_list = os.path.join(scratch, "dev_images.txt")
    with open(dev_list, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{os.path.abspath(p)}\n" for p in image_paths(args.dataset_dir, dev)))
    archive = os.path.join(scratch, "train_images.tar.gz")
    with tarfile.open(archive, "w:gz") as handle:
        for path in image_paths(args.dataset_dir, train[:8]):
            handle.add(path, arcname=f"train/{os.path.basename(path)}")

    needs_workers = any(r in runners for r in ("external", "flink_local", "flink_cluster"))
    pool = cluster_conf = None
    flink_home = os.path.join(FLINK_DIR, "flink-1.19.3")
    jar = os.path.join(FLINK_DIR, "job-server.jar")
    if any(r.startswith("flink") for r in runners) and not os.path.exists(jar):
        sys.exit(f"{jar} is missing: run bench/flink/setup_flink.sh first")
    results = []
    try:
        flags = {"local": [], "multiprocess": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}
        if needs_workers:
            pool, port = start_worker_pool(scratch)
            external = ["--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"]
            flags["external"] = ["--runner=PortableRunner", "--job_endpoint=embed", *external]
            flink = ["--runner=FlinkRunner", f"--flink_job_server_jar={jar}", "--parallelism=2", *external]
            flags["flink_local"] = [*flink, "--flink_master=[local]"]
            flags["flink_cluster"] = [*flink, "--flink_master=localhost:8081"]
        if "flink_cluster" in runners:
            cluster_conf = start_flink_cluster(scratch, flink_home)

        reference_extract = reference_captions = None
        model_dir = args.model_dir
        for runner in ["local"] + [r for r in runners if r != "local"]:
            out = os.path.join(scratch, f"extract-{runner}")
            seconds = run([sys.executable, "-m", "beam_jobs.extract_features", "--dataset_dir", args.dataset_dir,
                           "--split_file", f"train={train_split}", "--split_file", f"dev={dev_split}",
                           "--output_dir", out, "--weights", args.weights, "--min_word_count", "1", "--overwrite",
                           *flags[runner]], os.path.join(scratch, f"extract-{runner}.log"))
            found = read_extract(out)
            if reference_extract is None:
                reference_extract, verdict = found, "reference"
                if model_dir is None:
                    model_dir = os.path.join(scratch, "model")
                    run([sys.executable, "-m", "trainer.task", "--data_dir", out, "--model_dir", model_dir,
                         "--epochs", "2", "--units", "64", "--embedding_dim", "32", "--verbose", "0"],
                        os.path.join(scratch, "train.log"))
            else:
                verdict = same_extract(reference_extract, found)
            results.append((runner, "extract", verdict, f"{seconds:.0f}"))
            print(results[-1], flush=True)

            prefix = os.path.join(scratch, f"captions-{runner}", "c")
            seconds = run([sys.executable, "-m", "beam_jobs.caption_images", "--input", dev_list, "--input",
                           archive, "--model_dir", model_dir, "--output_dir", prefix, "--weights", args.weights,
                           "--overwrite", *flags[runner]], os.path.join(scratch, f"caption-{runner}.log"))
            found = read_captions(prefix)
            if reference_captions is None:
                reference_captions, verdict = found, "reference"
            else:
                verdict = same_captions(reference_captions, found)
            results.append((runner, "caption", verdict, f"{seconds:.0f}"))
            print(results[-1], flush=True)
    finally:
        if cluster_conf:
            stop_flink_cluster(flink_home, cluster_conf)
        if pool:
            pool.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(f"Scale-out: {len(train)} train + {len(dev)} dev Flickr8k images (caption job: {len(dev)} listed "
                f"files + 8 in a .tar.gz) ({machine()})",
                [("runner", "job", "output vs local", "wall s")] + results)
    if any(verdict not in ("identical", "reference") for _, _, verdict, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
