"""imcap-recipe: the best caption model of docs/training.md in one command, resumable stage by stage.

    imcap-recipe --dataset_dir data/flickr8k --output_dir out/recipe [--weights imagenet|PATH] [--seed 0]

Stages (each logged with its time; their outputs under ``--output_dir``):

1. ``features/``: the extract job with the spatial grid (``--spatial_grid full``; int8 features, the default);
2. ``attention/``: the attention decoder, the best epoch by dev CIDEr-D with learning-rate decay and label
   smoothing (``imcap-train --decoder attention --select_by cider_d --lr_decay 0.5 --epochs 13
   --label_smoothing 0.1``);
3. ``scst1/`` .. ``scstN/``: ``--scst_rounds`` rounds of self-critical training, one epoch each, each from the
   previous round's bundle and keeping its best greedy dev CIDEr-D (``imcap-scst --epochs 1``); once a round
   keeps its starting weights, the rounds after it are skipped (same seed, same start: on a CPU they would
   repeat it bit for bit);
4. ``model/``: the last round's bundle, evaluated on the dev split (beam 3; the scores in
   ``model/eval_<split>_beam3.json`` and in ``recipe.json``).

``recipe.json`` records the settings and each finished stage with its time. Run the same command again after an
interruption: finished stages are kept, the training stage resumes from its last finished epoch, and any other
unfinished stage starts again. Other settings than the recorded ones are refused (``--restart`` starts over,
removing only this recipe's own outputs). On Flickr8k (6,000 train photos, 2 cores, no GPU) it takes about 1.5 hours
(docs/training.md).
"""
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time

from beam_jobs import runtime
from beam_jobs.extract import job as extract_job
from schemas import backbones, fileio, records
from trainer import cli, evaluate, scst, task
from trainer.features import AUTO_BACKEND, INFERENCE_BACKENDS

STATE_FILE = "recipe.json"
LOCK_FILE = ".recipe.lock"
FEATURES, ATTENTION, MODEL = "features", "attention", "model"
SETTINGS = ("dataset_dir", "weights", "image_size", "inference_backend", "spatial_grid", "min_word_count", "seed",
            "epochs", "label_smoothing", "scst_rounds", "beam_width")
# what a recipe.json written before a setting existed ran with
SETTINGS_BEFORE_RECORDED = {"label_smoothing": 0.0}
LABEL_SMOOTHING = 0.1  # BENCHMARKS.md, caption quality: the lever that moved dev past the plain recipe


class RecipeError(ValueError):
    """The output directory cannot be used as asked."""


def stage_names(scst_rounds: int) -> list[str]:
    return ["extract", "train", *[f"scst{k}" for k in range(1, scst_rounds + 1)], "evaluate"]


def _own_outputs(out: str, scst_rounds: int) -> list[str]:
    """The recipe's folders under ``out`` that exist (``scst1/`` .. ``scst<scst_rounds>/`` of the rounds)."""
    names = [FEATURES, ATTENTION, MODEL, *[f"scst{k}" for k in range(1, scst_rounds + 1)]]
    return [os.path.join(out, name) for name in names if os.path.exists(os.path.join(out, name))]


def _read_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if not isinstance(state.get("settings"), dict) or not isinstance(state.get("stages"), dict):
            raise ValueError("no settings and stages")
        return state
    except (ValueError, AttributeError) as error:
        raise RecipeError(f"{path} is damaged ({error}): pass --restart to start over") from None


def load_state(out: str, settings: dict, restart: bool) -> dict:
    """The recorded state of a run in ``out``, checked against ``settings``; a new one where there is none."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RecipeError(f"--output_dir {out} is a file, not a folder")
    path = os.path.join(out, STATE_FILE)
    if os.path.isfile(path) and restart:
        try:
            rounds = max(_read_state(path)["settings"].get("scst_rounds", 0), settings.get("scst_rounds", 0))
        except RecipeError:
            rounds = settings.get("scst_rounds", 0)
        for owned in _own_outputs(out, rounds):
            shutil.rmtree(owned)
        os.remove(path)
        logging.info("--restart: removed the outputs of the previous run in %s", out)
    elif os.path.isfile(path):
        state = _read_state(path)
        for key, value in SETTINGS_BEFORE_RECORDED.items():
            state["settings"].setdefault(key, value)
        differ = [key for key in SETTINGS if state["settings"].get(key) != settings[key]]
        if differ == ["scst_rounds"] and settings["scst_rounds"] > state["settings"]["scst_rounds"]:
            logging.info("more SCST rounds than before (%d, then %d): the run goes on from its last round",
                         settings["scst_rounds"], state["settings"]["scst_rounds"])
            state["settings"]["scst_rounds"] = settings["scst_rounds"]
            state["stages"].pop("evaluate", None)
            return state
        if differ:
            changed = "; ".join(f"--{key} {state['settings'].get(key)!r} then, {settings[key]!r} now"
                                for key in differ)
            raise RecipeError(f"{out} holds a recipe run with other settings ({changed}): run it with the same "
                              "flags to resume, pass --restart to start over, or pick another --output_dir")
        return state
    elif os.path.isdir(out):
        foreign = _own_outputs(out, settings.get("scst_rounds", 0))
        if foreign:
            raise RecipeError(f"{out} already holds {', '.join(os.path.basename(p) for p in foreign)} but no "
                              f"{STATE_FILE}: not a recipe run's; pick another --output_dir")
    return {"settings": settings, "stages": {}}


def save_state(out: str, state: dict) -> None:
    """recipe.json, its stages in the order they ran; written whole or not at all (a kill leaves the old one)."""
    def write(local):
        with open(local, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(state, indent=2) + "\n")
    fileio.write_local_atomically(os.path.join(out, STATE_FILE), write)


@contextlib.contextmanager
def _only_run(out: str):
    """Holds ``out/.recipe.lock`` while a run goes on: a second run on the same folder stops at once."""
    with open(os.path.join(out, LOCK_FILE), "w", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(f"another imcap-recipe is running in {out}: wait for it, or stop it first") from None
        yield


def _extract(args, out: str) -> None:
    argv = ["--output_dir", os.path.join(out, FEATURES), "--weights", args.weights,
            "--image_size", str(args.image_size), "--spatial_grid", args.spatial_grid,
            "--inference_backend", args.inference_backend, "--min_word_count", str(args.min_word_count), "--overwrite"]
    for dataset in args.dataset_dir:
        argv += ["--dataset_dir", dataset]
    extract_job.run(argv)
    if not os.path.isfile(os.path.join(out, FEATURES, records.METADATA_FILE)):
        raise RecipeError(f"the extract job wrote no {records.METADATA_FILE} in {os.path.join(out, FEATURES)} (see "
                          "its summary above); fix what it reports and run the recipe again")


def _train(args, out: str) -> None:
    task.train(task.parse_args([
        "--data_dir", os.path.join(out, FEATURES), "--model_dir", os.path.join(out, ATTENTION),
        "--decoder", "attention", "--select_by", "cider_d", "--lr_decay", "0.5", "--epochs", str(args.epochs),
        "--label_smoothing", str(args.label_smoothing), "--seed", str(args.seed), "--verbose", "2"]))


def _bundle_of(out: str, round_number: int) -> str:
    """The bundle after ``round_number`` SCST rounds (0: the attention training's)."""
    return os.path.join(out, ATTENTION if round_number == 0 else f"scst{round_number}")


def _model_id(bundle_dir: str) -> str:
    return fileio.read_json(os.path.join(bundle_dir, "bundle.json"))["model_id"]


def _scst(args, out: str, round_number: int) -> dict | None:
    """One SCST round; ``{"kept": ...}`` when it kept its starting weights (no epoch beat them on dev)."""
    previous = _bundle_of(out, round_number - 1)
    scst.train(scst.parse_args([
        "--data_dir", os.path.join(out, FEATURES), "--init_model_dir", previous,
        "--model_dir", _bundle_of(out, round_number), "--epochs", "1", "--seed", str(args.seed)]))
    if _model_id(_bundle_of(out, round_number)) == _model_id(previous):
        return {"kept": _model_id(previous)}
    return None


def _evaluate(args, out: str) -> dict:
    last = _bundle_of(out, args.scst_rounds)
    model = os.path.join(out, MODEL)
    if os.path.exists(model):
        shutil.rmtree(model)
    shutil.copytree(last, model)
    features = os.path.join(out, FEATURES)
    split = records.default_eval_split(fileio.read_json(os.path.join(features, records.METADATA_FILE))) or "dev"
    scores = evaluate.evaluate(features, model, split, beam_width=args.beam_width)
    return {key: scores[key] for key in ("split", "images", "beam_width", "bleu_1", "bleu_2", "bleu_3", "bleu_4",
                                         "cider_d", "model_id")}


def run(args) -> dict:
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise RecipeError(f"--output_dir {out} is a file, not a folder")
    os.makedirs(out, exist_ok=True)
    with _only_run(out):
        return _run_stages(args, out)


def _run_stages(args, out: str) -> dict:
    settings = {key: getattr(args, key) for key in SETTINGS}
    state = load_state(out, settings, args.restart)
    save_state(out, state)
    stages = stage_names(args.scst_rounds)
    actions = {"extract": lambda: _extract(args, out), "train": lambda: _train(args, out),
               "evaluate": lambda: _evaluate(args, out)}
    for number in range(1, args.scst_rounds + 1):
        actions[f"scst{number}"] = lambda number=number: _scst(args, out, number)
    repeat_of = None  # an SCST round that kept its starting weights: a next round (same seed) would repeat it
    for index, stage in enumerate(stages, 1):
        done = state["stages"].get(stage)
        if done:
            logging.info("[%d/%d] %s: done in a previous run (%s)", index, len(stages), stage,
                         _duration(done["seconds"]))
            repeat_of = done.get("kept") and stage
            continue
        if repeat_of and stage.startswith("scst"):
            number = int(stage[4:])
            shutil.copytree(_bundle_of(out, number - 1), _bundle_of(out, number), dirs_exist_ok=True)
            state["stages"][stage] = {"seconds": 0.0, "kept": state["stages"][repeat_of]["kept"],
                                      "skipped": f"{repeat_of} kept its starting weights; this round, with the "
                                                 "same seed and start, would repeat it bit for bit"}
            save_state(out, state)
            logging.info("[%d/%d] %s: skipped (%s)", index, len(stages), stage, state["stages"][stage]["skipped"])
            continue
        logging.info("[%d/%d] %s ...", index, len(stages), stage)
        start = time.monotonic()
        result = actions[stage]()
        seconds = round(time.monotonic() - start, 1)
        if stage == "evaluate":
            state["stages"][stage] = {"seconds": seconds, "scores": result}
        else:
            state["stages"][stage] = {"seconds": seconds, **(result or {})}
            repeat_of = result and stage
        save_state(out, state)
        logging.info("[%d/%d] %s finished in %s%s", index, len(stages), stage, _duration(seconds),
                     " (kept its starting weights: no epoch beat them on dev)" if result and "kept" in result
                     else "")
    scores = state["stages"]["evaluate"]["scores"]
    total = sum(stage["seconds"] for stage in state["stages"].values())
    logging.info("recipe finished in %s (%s). Bundle: %s (%s)\n  %s split, beam %d: BLEU-1 %.3f  BLEU-4 %.3f  "
                 "CIDEr-D %.3f\n  caption photos with: imcap-caption --model_dir %s --input 'photos/*.jpg' "
                 "--output_dir captions", _duration(total),
                 ", ".join(f"{name} {_duration(state['stages'][name]['seconds'])}" for name in stages),
                 os.path.join(out, MODEL), scores["model_id"], scores["split"], scores["beam_width"],
                 scores["bleu_1"], scores["bleu_4"], scores["cider_d"], os.path.join(out, MODEL))
    return state


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="imcap-recipe", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dataset_dir", action="extend", nargs="+", required=True, metavar="[NAME=]DIR",
                        help="captioned datasets in any layout the extract job reads (several: combined)")
    parser.add_argument("--output_dir", required=True, metavar="DIR",
                        help="a local folder: where the features, the bundles of each stage, model/ and recipe.json "
                             "go")
    parser.add_argument("--weights", default=backbones.IMAGENET,
                        help="Xception weights: imagenet, a Keras weights file, or none (random init, for tests)")
    parser.add_argument("--image_size", type=cli.positive_int, default=backbones.XCEPTION.default_image_size,
                        help="Xception's input size (the extract job's --image_size)")
    parser.add_argument("--inference_backend", default=AUTO_BACKEND, choices=[AUTO_BACKEND, *INFERENCE_BACKENDS],
                        help="the extract job's feature backend (auto: int8 through OpenVINO, which runs on the "
                             "CPU; pass keras on a GPU machine)")
    parser.add_argument("--spatial_grid", default="full", metavar="full|N",
                        help="the grid the attention decoder reads (the extract job's --spatial_grid)")
    parser.add_argument("--min_word_count", type=cli.positive_int, default=extract_job.DEFAULT_MIN_WORD_COUNT,
                        help="rarer train words map to <unk>")
    parser.add_argument("--epochs", type=cli.positive_int, default=13,
                        help="attention training epochs, at most (the best by dev CIDEr-D is kept)")
    parser.add_argument("--label_smoothing", type=cli.fraction, default=LABEL_SMOOTHING,
                        help="the attention training's label smoothing (imcap-train --label_smoothing; 0: none, as "
                             "recipe runs before it was a setting)")
    parser.add_argument("--scst_rounds", type=cli.non_negative_int, default=3,
                        help="self-critical rounds of one epoch each (BENCHMARKS.md: 3 is where dev stops rising)")
    parser.add_argument("--beam_width", type=cli.positive_int, default=3, help="beam width of the evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seeds training and sampling (repeatable runs)")
    parser.add_argument("--restart", action="store_true",
                        help="remove the outputs of a previous recipe run in --output_dir and start over")
    args = parser.parse_args(argv)
    if "://" in args.output_dir:
        parser.error(f"--output_dir {args.output_dir}: the recipe trains on this machine and needs a local folder "
                     "(copy model/ to an object store afterwards)")
    if args.spatial_grid == "none":
        parser.error("--spatial_grid none: the attention decoder needs a grid (full, or N for NxN)")
    try:
        backbones.check_weights_spec(args.weights)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> int:
    runtime.setup_logging()
    cli.quiet_tensorflow()
    args = parse_args(argv)
    return cli.exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
