"""Trainer throughput: the tf.data teacher-forcing trainer vs a faithful re-implementation of the seed tutorial's
generator (one training sample per word, one image's samples per batch), same model size, same run.

    python bench/trainer_throughput.py --data_dir FEATURES [--seed_steps 60] [--steps 120] [--repeats 3] [--epoch]

The seed (the widespread Keras "merge model" tutorial): for every image, for every caption, for every prefix
``seq[:i]`` a sample (photo, prefix pre-padded to max_length) -> one-hot next word; a Python generator yields one
image's samples as a batch; the model is image -> dropout -> dense(256); prefix -> embedding(256, mask_zero) ->
dropout -> LSTM(256) (last state); add -> dense(256) -> softmax; categorical cross-entropy.

Ours (`trainer.model` + `trainer.data`): one element per caption, the whole sequence in one forward pass, padded
batches of 64, sparse cross-entropy ignoring padding, embedding and LSTM at 256 as well.

Captions/s = captions whose every word received a training signal, per second. ``--epoch`` also times one full
epoch of our trainer on the train split.
"""
import argparse
import math
import os

import numpy as np
from common import machine, median, print_table, timed


def seed_model(vocab_size: int, max_length: int, feature_dim: int, units: int = 256):
    import keras
    from keras import layers
    photo = keras.Input((feature_dim,))
    image = layers.Dense(units, activation="relu")(layers.Dropout(0.5)(photo))
    prefix = keras.Input((max_length,))
    text = layers.Embedding(vocab_size, units, mask_zero=True)(prefix)
    text = layers.LSTM(units)(layers.Dropout(0.5)(text))
    hidden = layers.Dense(units, activation="relu")(layers.add([image, text]))
    outputs = layers.Dense(vocab_size, activation="softmax")(hidden)
    model = keras.Model([photo, prefix], outputs)
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    return model


def seed_generator(records, vocab_size: int, max_length: int):
    """The seed's data_generator: per image, every (photo, padded prefix) -> one-hot next word, forever."""
    from keras.utils import pad_sequences, to_categorical
    while True:
        for features, sequences in records:
            photos, prefixes, targets = [], [], []
            for sequence in sequences:
                for i in range(1, len(sequence)):
                    photos.append(features)
                    prefixes.append(pad_sequences([sequence[:i]], maxlen=max_length)[0])
                    targets.append(to_categorical([sequence[i]], num_classes=vocab_size)[0])
            yield (np.array(photos), np.array(prefixes)), np.array(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="the extract job's output on Flickr8k")
    parser.add_argument("--seed_steps", type=int, default=60, help="images per seed measurement")
    parser.add_argument("--steps", type=int, default=120, help="batches per measurement of our trainer")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epoch", action="store_true", help="also time one full epoch of our trainer")
    parser.add_argument("--length_buckets", action="store_true", help="our trainer with length buckets")
    args = parser.parse_args()

    import warnings
    warnings.filterwarnings("ignore")
    from schemas import records
    from schemas.records import MetadataKeys
    from schemas.vocabulary import Vocabulary
    from trainer import data
    from trainer import model as model_lib

    metadata = data.read_metadata(args.data_dir)
    vocabulary = Vocabulary.load(os.path.join(args.data_dir, "vocab.txt"))
    feature_dim, max_length = metadata[MetadataKeys.FEATURE_DIM], metadata[MetadataKeys.MAX_LENGTH]
    train_images, train_captions = data.split_sizes(metadata, "train")

    seed_records = [(record[records.IMAGE_FEATURES], [[int(i) for i in row] for row in record[records.CAPTION_IDS]])
                    for record in data.image_dataset(args.data_dir, "train", feature_dim).take(args.seed_steps)
                    .as_numpy_iterator()]
    seed_captions = sum(len(ids) for _, ids in seed_records[:args.seed_steps])
    seed = seed_model(len(vocabulary), max_length, feature_dim)
    ours = model_lib.compile_decoder(model_lib.build_decoder(model_lib.DecoderConfig(
        vocab_size=len(vocabulary), feature_dim=feature_dim, embedding_dim=256, units=256, dropout=0.5)), 1e-3)
    batches = data.caption_dataset(args.data_dir, "train", feature_dim, args.batch_size, training=True, seed=0,
                                   bucket_boundaries=data.DEFAULT_BUCKETS if args.length_buckets else None)
    batches = batches.repeat()

    # Warm up both (tracing, dataset cache) outside the timings.
    seed.fit(seed_generator(seed_records, len(vocabulary), max_length), steps_per_epoch=3, epochs=1, verbose=0)
    ours.fit(batches, steps_per_epoch=20, epochs=1, verbose=0)

    seed_rates, our_rates = [], []
    for repeat in range(args.repeats):
        seconds, _ = timed(seed.fit, seed_generator(seed_records, len(vocabulary), max_length),
                           steps_per_epoch=args.seed_steps, epochs=1, verbose=0)
        seed_rates.append(seed_captions / seconds)
        seconds, _ = timed(ours.fit, batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
        our_rates.append(args.steps * args.batch_size / seconds)
        print(f"repeat {repeat + 1}: seed {seed_rates[-1]:.1f} captions/s, ours {our_rates[-1]:.1f} captions/s",
              flush=True)
    seed_rate, our_rate = median(seed_rates), median(our_rates)
    rows = [("trainer", "captions/s", "speed-up", "epoch on Flickr8k train (est.)"),
            ("tf.data teacher forcing (ours)", f"{our_rate:.0f}", f"{our_rate / seed_rate:.1f}x",
             f"{train_captions / our_rate:.0f} s"),
            ("seed generator, one sample per word", f"{seed_rate:.1f}", "1.0x", f"{train_captions / seed_rate:.0f} s")]
    if args.epoch:
        epoch_data = data.caption_dataset(args.data_dir, "train", feature_dim, args.batch_size, training=True,
                                          seed=1, bucket_boundaries=data.DEFAULT_BUCKETS if args.length_buckets
                                          else None)
        seconds, _ = timed(ours.fit, epoch_data, epochs=1, verbose=0)
        rows.append(("ours, one measured full epoch", f"{train_captions / seconds:.0f}", "",
                     f"{seconds:.0f} s ({math.ceil(train_captions / args.batch_size)} steps)"))
    print_table(f"Trainer throughput, embedding/LSTM 256, vocabulary {len(vocabulary)}, max length {max_length}, "
                f"{train_images} train images / {train_captions} captions, medians of {args.repeats} ({machine()})",
                rows)


if __name__ == "__main__":
    main()
