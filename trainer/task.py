"""Trains the caption decoder on the extract job's records and writes a model bundle.

    python -m trainer.task --data_dir FEATURES --model_dir MODEL [--epochs 30] [--batch_size 64] [--seed 0] ...

(also installed as ``imcap-train``). Reads ``FEATURES/{train,dev}-*.tfrecord``, ``vocab.txt`` and
``metadata.json``; fits the attention decoder over the records' spatial grids (`trainer.attention`) where they
hold grids (the extract job's ``--spatial_grid``), else the merge decoder (`trainer.model`) (``--decoder auto``;
``--decoder merge|attention`` chooses), with teacher forcing; keeps the weights with the
lowest dev loss and stops when it has not improved for ``--patience`` epochs.

MODEL receives the bundle (``decoder.keras``, ``vocab.txt``, ``bundle.json``: see `schemas.bundle`) and the
run's records: ``history.json`` (per-epoch metrics, seconds, captions/s), ``training_curve.png``, TensorBoard
logs in ``logs/`` and checkpoints in ``checkpoints/``. An interrupted run resumes from its last completed epoch
when started again with the same ``--model_dir`` (``--restart`` discards that state instead).
"""
import argparse
import json
import logging
import os
import re
import sys
import time
import warnings

from schemas import bundle as bundle_schema
from schemas import fileio, records
from schemas.bundle import DEFAULT_NO_REPEAT_NGRAM_SIZE, DecodingKeys
from schemas.records import MetadataKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary
from trainer import cli

CHECKPOINTS = "checkpoints"
BACKUP = "backup"  # Keras BackupAndRestore state (weights, optimizer, epoch) of the last completed epoch
BEST_WEIGHTS = "best.weights.h5"
STATE_FILE = "state.json"
ATTENTION_DIM = 256
RUN_FILE = "run.json"  # the flags that define an interrupted run, checked when it resumes
BACKUP_FILES = ("training_metadata.json", "latest.weights.h5")  # what Keras' BackupAndRestore writes in BACKUP


def _delete_regular_files(paths) -> None:
    for path in paths:
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
        elif os.path.islink(path):
            logging.warning("not deleting %s: a symbolic link where a checkpoint file of imcap-train goes", path)


def remove_own_checkpoints(checkpoint_dir: str) -> None:
    """Deletes what this trainer writes in ``checkpoint_dir`` (its state, best weights, run flags and Keras' backup
    files), then the folders if they are left empty: a file of anyone else stays, and no link is followed."""
    backup_dir = os.path.join(checkpoint_dir, BACKUP)
    if os.path.islink(checkpoint_dir) or os.path.islink(backup_dir):
        raise ValueError(f"{checkpoint_dir} (or its {BACKUP}/) is a symbolic link; imcap-train keeps its checkpoints "
                         "in a folder of its own: remove the link")
    _delete_regular_files([os.path.join(backup_dir, name) for name in BACKUP_FILES])
    _delete_regular_files([os.path.join(checkpoint_dir, name) for name in (STATE_FILE, BEST_WEIGHTS, RUN_FILE)])
    for folder in (backup_dir, checkpoint_dir):
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            pass


def remove_stale_cache(cache_dir: str, splits) -> None:
    """Deletes the tf.data cache files of these splits (``grids-<split>.index``, ``.data-*-of-*``, lock files),
    which would be read as the grids of other records; nothing else in ``cache_dir``."""
    stems = "|".join(re.escape(f"grids-{records.split_file_stem(split)}") for split in splits if split)
    # tf.data writes <name>.index and <name>.data-*-of-*, or <name>_N.* while a cache is being written (a killed
    # write leaves <name>_N.data-*.tempstate<digits>, as large as the grids), and <name>[_N].lockfile
    own = re.compile(rf"(?:{stems})(?:_\d+)?(?:\.index|\.data-\d+-of-\d+(?:\.tempstate\d+)?|\.lockfile)")
    _delete_regular_files([os.path.join(cache_dir, name) for name in sorted(os.listdir(cache_dir))
                           if own.fullmatch(name)])
RUN_FLAGS = ("decoder", "train_split", "eval_split", "batch_size", "embedding_dim", "units", "attention_dim",
             "dropout", "recurrent_dropout", "learning_rate", "lr_decay", "clipnorm", "select_by", "feature_scaling",
             "length_buckets", "seed", "label_smoothing")
HISTORY_FILE = "history.json"
CURVE_FILE = "training_curve.png"
LOGS = "logs"
CIDER_MONITOR = "val_cider_d"
AUTO_DECODER = "auto"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="imcap-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="--output_dir of the extract job")
    parser.add_argument("--model_dir", required=True, help="where the bundle, checkpoints and logs go")
    parser.add_argument("--train_split", default="train", help="the split of --data_dir to train on")
    parser.add_argument("--eval_split", help="split for the dev loss (early stopping, best model); default: dev, "
                        "else val, else (records of several datasets) the first dataset's, e.g. flickr8k/dev")
    parser.add_argument("--epochs", type=cli.positive_int, default=30, help="training epochs, at most (see --patience)")
    parser.add_argument("--batch_size", type=cli.positive_int, default=64,
                        help="captions per batch (attention: whole images with all their captions, about this many)")
    parser.add_argument("--embedding_dim", type=cli.positive_int, default=256, help="word embedding width")
    parser.add_argument("--decoder", default=AUTO_DECODER, choices=(AUTO_DECODER, "merge", "attention"),
                        help="auto (default): attention where the records hold spatial grids (the extract job's "
                             "--spatial_grid), else merge; merge: the pooled vector joins the LSTM's output; "
                             "attention: every word attends over the spatial grid (better on dev: BENCHMARKS.md)")
    parser.add_argument("--units", type=cli.positive_int, default=None,
                        help="LSTM and projection width (default 256 for merge, 512 for attention)")
    parser.add_argument("--attention_dim", type=cli.positive_int, default=ATTENTION_DIM,
                        help="attention decoder: width of the query/key projections")
    parser.add_argument("--cache_dir", default=None,
                        help="attention decoder: cache the parsed grids in files here instead of in memory (for "
                             "train splits larger than RAM: Flickr8k's takes 2.4 GB at 10x10, COCO's 45 GB)")
    parser.add_argument("--dropout", type=cli.fraction, default=0.5,
                        help="dropout on the features and the LSTM's output")
    parser.add_argument("--recurrent_dropout", type=cli.fraction, default=0.0, help="dropout on the LSTM's state")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--label_smoothing", type=cli.fraction, default=0.0,
                        help="train against the reference word at 1 - this and the uniform distribution over the "
                             "vocabulary at this (0: plain cross-entropy; see BENCHMARKS.md, caption quality)")
    parser.add_argument("--lr_decay", type=cli.fraction, default=0.0,
                        help="multiply the learning rate by this after an epoch without a better dev score "
                             "(--select_by; the train loss without a dev split) (Keras' ReduceLROnPlateau, patience 1, "
                             "floor learning_rate / 16); 0: constant")
    parser.add_argument("--clipnorm", type=float, default=5.0, help="gradient norm clipping (0: none)")
    parser.add_argument("--patience", type=cli.positive_int, default=3,
                        help="stop after this many epochs without a better dev score (--select_by)")
    parser.add_argument("--select_by", default="loss", choices=("loss", "cider_d"),
                        help="the dev score that picks the best epoch and stops training: loss (default), or the "
                             "CIDEr-D of greedy captions of the dev images after each epoch (a few seconds each)")
    parser.add_argument("--feature_scaling", default="scale", choices=("scale", "standardize", "none"),
                        help="scale: divide features by their train RMS (default); standardize: per dimension")
    parser.add_argument("--length_buckets", action="store_true",
                        help="batch captions of similar length: ~1.7x faster epochs on Flickr8k, but dev BLEU-4 "
                             "came out lower (0.161 vs 0.179 with beam 3), so it is off by default")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialization and shuffling (repeatable runs)")
    parser.add_argument("--beam_width", type=cli.positive_int, default=3, help="default beam width for the bundle")
    parser.add_argument("--length_penalty", type=float, default=0.0, help="default length penalty for the bundle")
    parser.add_argument("--no_repeat_ngram_size", type=cli.non_negative_int, default=DEFAULT_NO_REPEAT_NGRAM_SIZE,
                        metavar="N", help="the bundle's default n-gram blocking: captions never repeat an n-gram of "
                        "N words (0: none; see BENCHMARKS.md, caption quality)")
    parser.add_argument("--restart", action="store_true", help="discard an interrupted run's state in --model_dir")
    parser.add_argument("--verbose", type=int, default=None, choices=(0, 1, 2),
                        help="Keras progress output: 1 a bar (default on a terminal), 2 one line per epoch (default "
                             "when the output is a file or a pipe), 0 none")
    return parser.parse_args(argv)


def _check_resumed_run(path: str, args: argparse.Namespace, resume: bool) -> None:
    """A resumed run must be the same run: its checkpoint holds that model, and its best score is in that metric
    (a CIDEr-D compared with a loss would never improve). Flags that only bound the run (--epochs, --patience) or
    set the bundle's decoding defaults may change; any other difference is refused."""
    flags = {key: getattr(args, key) for key in RUN_FLAGS}
    if resume and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            before = json.load(handle)
        changed = [f"--{key} {before[key]} -> {flags[key]}" for key in RUN_FLAGS
                   if key in before and before[key] != flags[key]]
        if changed:
            raise ValueError(f"{args.model_dir} holds an interrupted run with other settings ({'; '.join(changed)}): "
                             "run again with its settings to resume it, or add --restart to discard it")
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(flags, handle, indent=2)


def _callbacks_module():
    import keras

    class DevCaptionScore(keras.callbacks.Callback):
        """After each epoch: greedy captions of the dev images by the model as it stands, and their CIDEr-D, logged
        as ``val_cider_d`` (for `--select_by cider_d`)."""

        def __init__(self, features, references: list, vocabulary, max_length: int, batch_size: int = 250,
                     no_repeat_ngram_size: int = 0):
            super().__init__()
            self.features, self.references = features, references
            self.no_repeat_ngram_size = no_repeat_ngram_size
            self.vocabulary, self.max_length, self.batch_size = vocabulary, max_length, batch_size
            self._decoder = None

        def on_epoch_end(self, epoch, logs=None):
            from trainer.decoding import CaptionDecoder
            from trainer.evaluate import cider_score
            if self._decoder is None:  # the decoder runs the model's own layers: it follows the training
                self._decoder = CaptionDecoder(self.model, self.vocabulary, self.max_length)
            captions = [text for text, _ in self._decoder.caption(
                self.features, 1, 0.0, self.batch_size, no_repeat_ngram_size=self.no_repeat_ngram_size)]
            if logs is not None:
                logs[CIDER_MONITOR] = cider_score(self.references, captions)

    class ResumableBestModel(keras.callbacks.Callback):
        """Keeps the weights with the best dev score (lowest loss, or highest CIDEr-D), stops after `patience`
        epochs without a better one, records the history -- and reloads all of that when a run resumes (Keras'
        EarlyStopping would start over)."""

        def __init__(self, checkpoint_dir: str, model_dir: str, patience: int, monitor: str, pairs_per_epoch: int,
                     resume: bool):
            super().__init__()
            self.state_path = os.path.join(checkpoint_dir, STATE_FILE)
            self.best_path = os.path.join(checkpoint_dir, BEST_WEIGHTS)
            self.history_path = os.path.join(model_dir, HISTORY_FILE)
            self.patience, self.monitor, self.pairs_per_epoch = patience, monitor, pairs_per_epoch
            self.state = {"best": None, "best_epoch": None, "wait": 0, "stopped_early": False}
            self.history = []
            if resume and os.path.exists(self.state_path):
                with open(self.state_path, encoding="utf-8") as handle:
                    self.state = json.load(handle)
                if os.path.exists(self.history_path):
                    with open(self.history_path, encoding="utf-8") as handle:
                        self.history = json.load(handle)
            self._epoch_start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._epoch_start
            row = {"epoch": epoch + 1, "seconds": round(seconds, 2),
                   "captions_per_second": round(self.pairs_per_epoch / seconds, 1)}
            row.update({key: float(value) for key, value in (logs or {}).items()})
            self.history = [r for r in self.history if r["epoch"] < epoch + 1] + [row]
            value = row.get(self.monitor)
            higher_is_better = self.monitor == CIDER_MONITOR
            if value is not None and (self.state["best"] is None or (
                    value > self.state["best"] if higher_is_better else value < self.state["best"])):
                self.state.update(best=value, best_epoch=epoch + 1, wait=0)
                self.model.save_weights(self.best_path)
            else:
                self.state["wait"] += 1
                if self.state["wait"] >= self.patience:
                    self.state["stopped_early"] = True
                    self.model.stop_training = True
            with open(self.state_path, "w", encoding="utf-8") as handle:
                json.dump(self.state, handle, indent=2)
            with open(self.history_path, "w", encoding="utf-8") as handle:
                json.dump(self.history, handle, indent=2)

    return ResumableBestModel, DevCaptionScore


def plot_history(history: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "dev")):
        if any(key in row for row in history):
            loss_axis.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "dev")):
        if any(key in row for row in history):
            accuracy_axis.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
    loss_axis.set(title="next-token cross-entropy", xlabel="epoch")
    accuracy_axis.set(title="next-token accuracy", xlabel="epoch")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def train(args: argparse.Namespace) -> dict:
    """Trains and exports the bundle; returns a summary."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    # Keras warns that fit's shuffle flag is ignored for datasets; caption_dataset shuffles itself.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")

    from trainer import bundle as bundle_lib
    from trainer import data
    from trainer import model as model_lib

    metadata = data.read_metadata(args.data_dir)
    args.eval_split = args.eval_split or records.default_eval_split(metadata) or "dev"
    vocabulary = Vocabulary.load(fileio.join(args.data_dir, VOCAB_FILE))
    feature_dim = metadata[MetadataKeys.FEATURE_DIM]
    grid = records.grid_shape(metadata)
    chosen = ""
    if args.decoder == AUTO_DECODER:  # resolved once, so run.json and the bundle record the decoder itself
        args.decoder = "attention" if grid else "merge"
        chosen = (f" (--decoder auto chose attention: {args.data_dir} holds spatial grids; pass --decoder merge "
                  "for the merge decoder)") if grid else ""
        logging.info("--decoder auto: %s (%s)", args.decoder,
                     "the records hold spatial grids" if grid else "the records hold no spatial grids")
    attention = args.decoder == "attention"
    if args.units is None:
        args.units = 512 if attention else 256
    if attention and not grid:
        raise ValueError(f"{args.data_dir} holds no spatial grids, which --decoder attention reads: run the extract "
                         "job with --spatial_grid full (or N) first")
    if attention and args.length_buckets:
        raise ValueError("--length_buckets is for the merge decoder; --decoder attention batches whole images with "
                         "all their captions" + chosen)
    if attention and args.feature_scaling == "standardize":
        raise ValueError("--decoder attention scales grids by their RMS (scale) or not at all (none); "
                         "standardize is for the merge decoder's vectors" + chosen)
    if not attention:
        for flag, value, default in (("--attention_dim", args.attention_dim, ATTENTION_DIM),
                                     ("--cache_dir", args.cache_dir, None)):
            if value != default:
                raise ValueError(f"{flag} is for --decoder attention; the merge decoder has no use for it")
    if metadata.get(MetadataKeys.INFERENCE_BACKEND) == bundle_lib.INT8_BACKEND:  # before hours of training
        bundle_lib.check_int8_source(fileio.join(args.data_dir, bundle_schema.INT8_DIR), metadata)
    _, train_pairs = data.split_sizes(metadata, args.train_split)
    if train_pairs == 0:
        raise ValueError(f"the {args.train_split} split of {args.data_dir} has no captions")
    has_eval = args.eval_split in metadata[MetadataKeys.SPLITS] and \
        data.split_sizes(metadata, args.eval_split)[1] > 0
    if not has_eval:
        logging.warning("no %s split in %s: the best model and early stopping follow the train loss",
                        args.eval_split, args.data_dir)
    monitor = "val_loss" if has_eval else "loss"
    if args.select_by == "cider_d":
        if not has_eval:
            raise ValueError(f"--select_by cider_d scores captions of the {args.eval_split} split, and "
                             f"{args.data_dir} has none")
        monitor = CIDER_MONITOR

    os.makedirs(args.model_dir, exist_ok=True)
    checkpoint_dir = os.path.join(args.model_dir, CHECKPOINTS)
    backup_dir = os.path.join(checkpoint_dir, BACKUP)
    if args.restart:
        remove_own_checkpoints(checkpoint_dir)
    resume = os.path.exists(os.path.join(backup_dir, BACKUP_FILES[0]))
    if not resume:
        remove_own_checkpoints(checkpoint_dir)  # the state of a finished run; this one starts fresh
    os.makedirs(checkpoint_dir, exist_ok=True)
    _check_resumed_run(os.path.join(checkpoint_dir, RUN_FILE), args, resume)

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    if attention:
        train_images, _ = data.split_sizes(metadata, args.train_split)
        images_per_batch = max(1, round(args.batch_size * train_images / train_pairs))
        def cache(split):
            return os.path.join(args.cache_dir, f"grids-{records.split_file_stem(split)}") if args.cache_dir else ""
        if args.cache_dir:
            os.makedirs(args.cache_dir, exist_ok=True)
            remove_stale_cache(args.cache_dir, (args.train_split, args.eval_split))
        train_batches = data.grid_caption_dataset(args.data_dir, args.train_split, feature_dim, grid,
                                                  images_per_batch, training=True, seed=args.seed,
                                                  image_count=train_images, cache_file=cache(args.train_split))
        eval_batches = data.grid_caption_dataset(
            args.data_dir, args.eval_split, feature_dim, grid, images_per_batch, training=False,
            image_count=data.split_sizes(metadata, args.eval_split)[0], cache_file=cache(args.eval_split)
        ) if has_eval else None
        scale = data.grid_scale(args.data_dir, args.train_split, feature_dim, grid) \
            if args.feature_scaling == "scale" else 1.0
        from trainer import attention as attention_lib
        config = attention_lib.AttentionConfig(
            vocab_size=len(vocabulary), grid_shape=grid, embedding_dim=args.embedding_dim, units=args.units,
            attention_dim=args.attention_dim, dropout=args.dropout, recurrent_dropout=args.recurrent_dropout)
        decoder = model_lib.compile_decoder(attention_lib.build_attention_decoder(config, scale),
                                            args.learning_rate, args.clipnorm or None, args.label_smoothing)
    else:
        buckets = data.DEFAULT_BUCKETS if args.length_buckets else None
        train_batches = data.caption_dataset(
            args.data_dir, args.train_split, feature_dim, args.batch_size, training=True, seed=args.seed,
            bucket_boundaries=buckets,
            batches=data.count_batches(args.data_dir, args.train_split, feature_dim, args.batch_size, buckets))
        eval_batches = data.caption_dataset(
            args.data_dir, args.eval_split, feature_dim, args.batch_size, training=False, bucket_boundaries=buckets,
            batches=data.count_batches(args.data_dir, args.eval_split, feature_dim, args.batch_size, buckets)
        ) if has_eval else None
        normalization = model_lib.fitted_feature_scaling(
            data.feature_matrix(args.data_dir, args.train_split, feature_dim).as_numpy_iterator(),
            args.feature_scaling)
        config = model_lib.DecoderConfig(vocab_size=len(vocabulary), feature_dim=feature_dim,
                                         embedding_dim=args.embedding_dim, units=args.units, dropout=args.dropout,
                                         recurrent_dropout=args.recurrent_dropout)
        decoder = model_lib.compile_decoder(model_lib.build_decoder(config, normalization), args.learning_rate,
                                            args.clipnorm or None, args.label_smoothing)
    logging.info("decoder: %s parameters, vocabulary %d, %d train captions per epoch%s",
                 f"{decoder.count_params():,}", len(vocabulary), train_pairs,
                 " (resuming an interrupted run)" if resume else "")

    best_model_class, dev_score_class = _callbacks_module()
    best_model = best_model_class(checkpoint_dir, args.model_dir, args.patience, monitor, train_pairs, resume)
    scoring = []
    if monitor == CIDER_MONITOR:
        count = data.split_sizes(metadata, args.eval_split)[0]
        _, dev_features, dev_references = data.references(args.data_dir, args.eval_split, feature_dim,
                                                          grid if attention else None, count=count)
        scoring = [dev_score_class(dev_features, dev_references, vocabulary, metadata[MetadataKeys.MAX_LENGTH],
                                   no_repeat_ngram_size=args.no_repeat_ngram_size)]  # the bundle's captions
    callbacks = [*scoring,  # before the callbacks that read its score, and the learning rate's before the history
                 *([keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=args.lr_decay, patience=1,
                                                      mode="max" if monitor == CIDER_MONITOR else "min",
                                                      min_lr=args.learning_rate / 16, verbose=0)]
                   if args.lr_decay else []),
                 best_model,
                 keras.callbacks.BackupAndRestore(backup_dir),
                 keras.callbacks.TensorBoard(os.path.join(args.model_dir, LOGS), write_graph=False)]
    if best_model.state["stopped_early"]:
        logging.info("the interrupted run had already stopped early; exporting its best model")
    else:
        progress = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
        decoder.fit(train_batches, validation_data=eval_batches, epochs=args.epochs, callbacks=callbacks,
                    verbose=progress)
    if not os.path.exists(best_model.best_path):
        raise RuntimeError("training finished without a single completed epoch")
    decoder.load_weights(best_model.best_path)

    history = best_model.history
    plot_history(history, os.path.join(args.model_dir, CURVE_FILE))
    best_epoch = best_model.state["best_epoch"]
    seconds = [row["seconds"] for row in history]
    training = {
        "data_dir": os.path.basename(os.path.normpath(args.data_dir)),
        "train_split": args.train_split, "eval_split": args.eval_split if has_eval else None,
        "train_images": data.split_sizes(metadata, args.train_split)[0], "train_captions": train_pairs,
        "epochs_run": len(history), "best_epoch": best_epoch, "best_" + monitor: best_model.state["best"],
        "stopped_early": best_model.state["stopped_early"],
        "median_epoch_seconds": sorted(seconds)[len(seconds) // 2],
        "median_captions_per_second": sorted(r["captions_per_second"] for r in history)[len(history) // 2],
        "hyperparameters": {key: getattr(args, key) for key in (
            "batch_size", "embedding_dim", "units", "dropout", "recurrent_dropout", "learning_rate", "clipnorm",
            "patience", "seed", "epochs", "feature_scaling", "decoder", "lr_decay", "select_by", "label_smoothing")}
        | {"length_buckets": args.length_buckets}
        | ({"attention_dim": args.attention_dim} if attention else {}),
    }
    config_written = bundle_lib.export_bundle(
        args.model_dir, decoder, vocabulary, metadata, training,
        decoding={DecodingKeys.BEAM_WIDTH: args.beam_width, DecodingKeys.LENGTH_PENALTY: args.length_penalty,
                  DecodingKeys.NO_REPEAT_NGRAM_SIZE: args.no_repeat_ngram_size},
        int8_source=fileio.join(args.data_dir, bundle_schema.INT8_DIR))
    logging.info("best %s %.4f at epoch %s of %d; median %.1f s/epoch, %.0f captions/s\nbundle %s written to %s",
                 monitor, best_model.state["best"], best_epoch, len(history), training["median_epoch_seconds"],
                 training["median_captions_per_second"], config_written["model_id"], args.model_dir)
    return {"model_id": config_written["model_id"], **training}


def main(argv=None) -> int:
    cli.setup_logging()
    cli.quiet_tensorflow()
    args = parse_args(argv)
    return cli.exit_status(lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())
