"""Self-critical sequence training (Rennie et al. 2017): fine-tunes a trained decoder on the metric itself.

    python -m trainer.scst --data_dir FEATURES --init_model_dir MODEL --model_dir MODEL_SCST [--epochs 3] \
        [--learning_rate 5e-5] [--samples 5] [--images_per_batch 16]

(also installed as ``imcap-scst``). Teacher forcing trains a decoder to predict the next word of a reference; SCST
then trains it on what is measured, the CIDEr-D of whole captions it generates. For each train image it samples
``--samples`` captions from the model, scores each against the image's references, and raises the log-probability
of the captions that beat a baseline, lowering the others:

    loss = - mean over samples of (CIDEr-D(sample) - baseline) * log p(sample)

``--baseline mean`` (default): the mean reward of the image's *other* samples (Luo 2020, "A better variant of
self-critical sequence training"), so the advantages of an image's samples sum to zero. ``--baseline greedy``: the
reward of the model's own greedy caption, as in Rennie et al.; on Flickr8k from a teacher-forced decoder most samples
score below the greedy caption, the update mostly pushes probability down, and dev CIDEr-D collapsed in our run
(0.429 -> 0.066 after one epoch), hence the default. The log-probabilities are taken without dropout, as the
samples were drawn.

The reward is pycocoevalcap's CIDEr-D with document frequencies from the train split's references (the
convention of SCST implementations), so it is the metric of ``trainer.evaluate``, only with train statistics.
After each epoch the dev split's greedy captions are scored (CIDEr-D with dev statistics, as evaluated); the epoch
with the best dev score becomes the bundle in ``--model_dir`` (``decoder.keras``, ``vocab.txt``, ``bundle.json``
with the initial bundle's decoding defaults and both trainings' records) and training stops after ``--patience``
epochs without a better one. An interrupted run starts again from ``--init_model_dir``.
"""
import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from schemas import fileio, records
from schemas import int8_model as int8_schema
from schemas.records import MetadataKeys
from schemas.vocabulary import END_ID, START_ID
from trainer import cli

BASELINES = ("mean", "greedy")


class _FrequencyTable(dict):
    def __missing__(self, key):
        return 0.0


class CorpusCider:
    """CIDEr-D of captions with n-gram document frequencies fixed from a reference corpus (pycocoevalcap's
    scorer; its own `compute_score` takes them from the captions being scored)."""

    def __init__(self, corpus_references: list[list[str]]):
        from pycocoevalcap.cider.cider_scorer import CiderScorer
        corpus = CiderScorer()
        for references in corpus_references:
            corpus.cook_append(None, references)
        corpus.compute_doc_freq()
        log_corpus_size = float(np.log(float(len(corpus_references))))

        class FixedCorpusScorer(CiderScorer):  # compute_cider sets ref_len from the scored captions: keep the corpus's
            ref_len = property(lambda self: log_corpus_size, lambda self, value: None)

        # pycocoevalcap looks n-grams up in a defaultdict, which would insert every new n-gram of every sampled
        # caption into the corpus's table for good: a dict whose misses are 0 without being stored.
        self._document_frequency = _FrequencyTable(corpus.document_frequency)
        self._scorer_class = FixedCorpusScorer

    def scores(self, captions: list[str], references: list[list[str]]) -> np.ndarray:
        """CIDEr-D of each caption against its references, [N]."""
        scorer = self._scorer_class()
        for caption, refs in zip(captions, references):
            scorer.cook_append(caption, refs)
        scorer.document_frequency = self._document_frequency
        return np.asarray(scorer.compute_cider(), np.float64)


def sequence_batch(token_ids: list[tuple], finished: list[bool]):
    """Generated ids -> (decoder inputs [N, T], targets [N, T], mask [N, T]) as teacher forcing would see them:
    inputs start with <start>, targets end with <end> where the caption ended with it."""
    targets = [list(ids) + ([END_ID] if done else []) for ids, done in zip(token_ids, finished)]
    length = max(1, max(len(t) for t in targets))
    inputs = np.zeros((len(targets), length), np.int32)
    padded = np.zeros((len(targets), length), np.int32)
    mask = np.zeros((len(targets), length), np.float32)
    for row, target in enumerate(targets):
        inputs[row, :len(target)] = [START_ID] + target[:-1] if target else []
        padded[row, :len(target)] = target
        mask[row, :len(target)] = 1.0
    return inputs, padded, mask


class SelfCriticalTrainer:
    """One SCST update per batch of images (see the module docstring)."""

    def __init__(self, model, vocabulary, max_length: int, reward: CorpusCider, learning_rate: float,
                 samples: int, clipnorm: float | None = 5.0, seed: int = 0, baseline: str = "mean"):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; one of {', '.join(BASELINES)}")
        if baseline == "mean" and samples < 2:
            raise ValueError("--baseline mean compares each sample with the image's others: --samples must be >= 2")
        self.baseline = baseline
        import keras
        import tensorflow as tf

        from trainer.decoding import CaptionDecoder
        self.model, self.reward, self.samples = model, reward, samples
        self.decoder = CaptionDecoder(model, vocabulary, max_length)  # runs the model's own (trained) layers
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm)
        self.generator = tf.random.Generator.from_seed(seed)
        self._update = tf.function(self._update_fn, reduce_retracing=True)

    def _update_fn(self, grids, image_index, inputs, targets, mask, advantage):
        import tensorflow as tf
        with tf.GradientTape() as tape:
            logits = self.model([grids, image_index, inputs], training=False)
            # The policy is the distribution samples are drawn from: <pad>, <start> and <unk> suppressed. Without
            # this, pushing sampled captions down moves mass onto those never-sampled tokens.
            log_probs = tf.nn.log_softmax(logits + self.decoder.suppressed)
            chosen = tf.gather(log_probs, targets, batch_dims=2)  # [N, T]
            sequence_log_prob = tf.reduce_sum(chosen * mask, axis=1)
            loss = -tf.reduce_mean(advantage * sequence_log_prob)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def step(self, features: records.SpatialFeatures, references: list[list[str]]) -> dict:
        """One update on a batch of images; returns the batch's mean sampled and greedy rewards."""
        import tensorflow as tf
        count = len(references)
        repeated = records.SpatialFeatures(np.repeat(features.vector, self.samples, axis=0),
                                           np.repeat(features.grid, self.samples, axis=0))
        sampled = self.decoder.sample(repeated, self.generator)
        sample_references = [refs for refs in references for _ in range(self.samples)]
        rewards = self.reward.scores([self.decoder.to_text(h) for h in sampled], sample_references)
        if self.baseline == "greedy":
            greedy = self.decoder.greedy(features)
            baseline = np.repeat(self.reward.scores([self.decoder.to_text(h) for h in greedy], references),
                                 self.samples)
        else:  # the mean of the image's other samples
            per_image = rewards.reshape(count, self.samples)
            baseline = ((per_image.sum(axis=1, keepdims=True) - per_image) / (self.samples - 1)).reshape(-1)
        advantage = rewards - baseline
        inputs, targets, mask = sequence_batch([h.token_ids for h in sampled], [h.finished for h in sampled])
        grids = np.asarray(features.grid, np.float32).reshape(count, -1, features.grid.shape[-1])
        self._update(tf.constant(grids), tf.constant(np.repeat(np.arange(count), self.samples).astype(np.int32)),
                     tf.constant(inputs), tf.constant(targets), tf.constant(mask),
                     tf.constant(advantage.astype(np.float32)))
        return {"sample_reward": float(rewards.mean()), "baseline": float(baseline.mean())}


def _batches(features: records.SpatialFeatures, references: list, size: int, rng: np.random.Generator):
    order = rng.permutation(len(references))
    for start in range(0, len(order), size):
        rows = np.sort(order[start:start + size])
        yield (records.SpatialFeatures(features.vector[rows], features.grid[rows]),
               [references[row] for row in rows])


def train(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from tqdm import tqdm

    from trainer import attention as attention_lib
    from trainer import data
    from trainer.bundle import Bundle, check_int8_source, export_bundle
    from trainer.evaluate import cider_score

    initial = Bundle(args.init_model_dir)
    if not attention_lib.is_attention_decoder(initial.decoder_model):
        raise ValueError(f"{args.init_model_dir} is a merge bundle; trainer.scst fine-tunes attention bundles")
    metadata = data.read_metadata(args.data_dir)
    args.eval_split = args.eval_split or records.default_eval_split(metadata) or "dev"
    if metadata[MetadataKeys.WEIGHTS_SHA256] != initial.config["weights_sha256"] or \
            records.grid_shape(metadata) != initial.grid_shape:
        raise ValueError(f"{args.data_dir} does not hold the features {args.init_model_dir} was trained on (other "
                         "weights or another grid)")
    records_int8, bundle_int8 = int8_schema.identity(metadata), int8_schema.identity(initial.config)
    if records_int8 != bundle_int8:  # the bundle would be labelled with an extractor it was not fine-tuned on
        raise ValueError(f"{args.data_dir} holds {'int8' if records_int8 else 'float'} features and "
                         f"{args.init_model_dir} was trained on {'int8' if bundle_int8 else 'float'} features"
                         f"{' of another int8 model' if records_int8 and bundle_int8 else ''}: fine-tune on the "
                         "records it was trained on")
    if bundle_int8:  # the bundle's extractor_int8/ is exported with the result: checked before hours of training
        check_int8_source(initial.int8_model, metadata)
    keras.utils.set_random_seed(args.seed)
    feature_dim = metadata[MetadataKeys.FEATURE_DIM]
    count = data.split_sizes(metadata, args.train_split)[0]
    _, train_features, train_references = data.references(args.data_dir, args.train_split, feature_dim,
                                                          initial.grid_shape, count=count)
    _, dev_features, dev_references = data.references(args.data_dir, args.eval_split, feature_dim,
                                                      initial.grid_shape,
                                                      count=data.split_sizes(metadata, args.eval_split)[0])
    model = initial.decoder_model
    trainer = SelfCriticalTrainer(model, initial.vocabulary, initial.config["max_length"],
                                  CorpusCider(train_references), args.learning_rate, args.samples,
                                  args.clipnorm or None, args.seed, args.baseline)

    no_repeat = initial.decoding_for().no_repeat_ngram_size  # scored as the bundle will caption

    def dev_cider() -> float:
        captions = [text for text, _ in trainer.decoder.caption(dev_features, 1, 0.0, 250,
                                                                no_repeat_ngram_size=no_repeat)]
        return cider_score(dev_references, captions)

    os.makedirs(args.model_dir, exist_ok=True)
    best_path = os.path.join(args.model_dir, "scst_best.weights.h5")
    history = [{"epoch": 0, "dev_cider_d_greedy": dev_cider()}]
    model.save_weights(best_path)
    best, best_epoch, wait = history[0]["dev_cider_d_greedy"], 0, 0
    logging.info("SCST from %s: dev CIDEr-D (greedy) %.4f before", initial.model_id, best)
    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        start, totals = time.perf_counter(), []
        batches = list(_batches(train_features, train_references, args.images_per_batch, rng))
        for features, references in tqdm(batches, desc=f"SCST epoch {epoch}", unit="batch", disable=None):
            totals.append(trainer.step(features, references))
        score = dev_cider()
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1), "dev_cider_d_greedy": score,
               "train_sample_reward": float(np.mean([t["sample_reward"] for t in totals])),
               "train_baseline": float(np.mean([t["baseline"] for t in totals]))}
        history.append(row)
        logging.info("SCST epoch %d: %s", epoch, json.dumps(row))
        if score > best:
            best, best_epoch, wait = score, epoch, 0
            model.save_weights(best_path)
        else:
            wait += 1
            if wait >= args.patience:
                break
    model.load_weights(best_path)
    fileio.write_json(os.path.join(args.model_dir, "scst_history.json"), history)
    training = dict(initial.config.get("training") or {})
    training["scst"] = {"init_model_id": initial.model_id, "epochs_run": len(history) - 1,
                        "best_epoch": best_epoch, "best_dev_cider_d_greedy": best,
                        "hyperparameters": {key: getattr(args, key) for key in (
                            "learning_rate", "samples", "images_per_batch", "clipnorm", "seed", "patience",
                            "baseline")}}
    config = export_bundle(args.model_dir, model, initial.vocabulary, {
        MetadataKeys.WEIGHTS_SHA256: initial.config["weights_sha256"],
        MetadataKeys.BACKBONE: initial.config["backbone"],
        MetadataKeys.WEIGHTS: initial.config["weights"], MetadataKeys.IMAGE_SIZE: initial.config["image_size"],
        MetadataKeys.PREPROCESSING: initial.config["preprocessing"],
        MetadataKeys.FEATURE_DIM: initial.config["feature_dim"], MetadataKeys.MAX_LENGTH: initial.config["max_length"],
        MetadataKeys.GRID_SHAPE: list(initial.grid_shape), MetadataKeys.INFERENCE_BACKEND: initial.inference_backend,
        MetadataKeys.INT8_MODEL: initial.config.get("int8_model")}, training, decoding=initial.decoding,
        int8_source=initial.int8_model)
    os.remove(best_path)
    logging.info("best dev CIDEr-D (greedy) %.4f at SCST epoch %d; bundle %s written to %s", best, best_epoch,
                 config["model_id"], args.model_dir)
    return {"model_id": config["model_id"], "best_epoch": best_epoch, "best_dev_cider_d_greedy": best,
            "history": history}


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="imcap-scst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="the extract job's records the bundle was trained on")
    parser.add_argument("--init_model_dir", required=True, help="a trained attention bundle to start from")
    parser.add_argument("--model_dir", required=True, help="where the fine-tuned bundle goes")
    parser.add_argument("--train_split", default="train", help="the split of --data_dir to fine-tune on")
    parser.add_argument("--eval_split", help="default: dev, else val, else the first dataset's (as trainer.task)")
    parser.add_argument("--epochs", type=cli.positive_int, default=3, help="self-critical epochs, at most")
    parser.add_argument("--patience", type=cli.positive_int, default=1,
                        help="stop after this many epochs without a better dev CIDEr-D")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="Adam's learning rate")
    parser.add_argument("--samples", type=cli.positive_int, default=5, help="sampled captions per image")
    parser.add_argument("--images_per_batch", type=cli.positive_int, default=16,
                        help="images per update (each with --samples sampled captions)")
    parser.add_argument("--baseline", default="mean", choices=BASELINES,
                        help="mean (default): the mean reward of the image's other samples; greedy: the reward of "
                             "the model's greedy caption (Rennie et al.)")
    parser.add_argument("--clipnorm", type=float, default=5.0, help="gradient norm clipping (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling and shuffling (repeatable runs)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    cli.setup_logging()
    cli.quiet_tensorflow()
    args = parse_args(argv)
    return cli.exit_status(lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())
