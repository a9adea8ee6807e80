"""tf.data input pipeline over the extract job's TFRecords (`schemas.records`).

One element per (image, caption) pair; the feature vector of an image is shared by its captions. For teacher
forcing each caption's ids ``[<start>, w1, ..., wn, <end>]`` give the decoder input ``[<start>, w1, ..., wn]`` and
the target ``[w1, ..., wn, <end>]``; batches are padded with 0 (``<pad>``), which the loss ignores.

    ((image_features [B, D], caption_tokens [B, T]), next_tokens [B, T])
"""
import math

import numpy as np
import tensorflow as tf

from schemas import fileio, records
from schemas.records import MetadataKeys, SplitKeys

AUTOTUNE = tf.data.AUTOTUNE


def read_metadata(data_dir: str) -> dict:
    path = fileio.join(data_dir, records.METADATA_FILE)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path}: no such file; --data_dir must be the --output_dir of the extract job")
    return records.check_metadata(fileio.read_json(path), path)


def split_files(data_dir: str, split: str) -> list[str]:
    """The split's record shards, as local files tf.data can read: shards on another filesystem (any scheme Beam
    reads) are copied to a local cache first, once per version (`fileio.local_copy`)."""
    files = fileio.glob(records.split_pattern(data_dir, split))
    if not files:
        raise FileNotFoundError(f"no {split} records in {data_dir} ({records.split_pattern(data_dir, split)}); "
                                "run the extract job with that split")
    return [fileio.local_copy(path) for path in files]


def parse_record(serialized, feature_dim: int) -> dict:
    """One serialized Example -> {image_id, image_features [D], captions [C], caption_ids ragged [C, None]}."""
    parsed = tf.io.parse_single_example(serialized, records.feature_spec(feature_dim))
    ids = tf.RaggedTensor.from_row_lengths(tf.sparse.to_dense(parsed[records.CAPTION_IDS]),
                                           tf.sparse.to_dense(parsed[records.CAPTION_LENGTHS]))
    return {records.IMAGE_ID: parsed[records.IMAGE_ID], records.IMAGE_FEATURES: parsed[records.IMAGE_FEATURES],
            records.CAPTIONS: tf.sparse.to_dense(parsed[records.CAPTIONS]), records.CAPTION_IDS: ids}


def image_dataset(data_dir: str, split: str, feature_dim: int, *, shuffle_files: bool = False,
                  seed: int | None = None) -> tf.data.Dataset:
    """One element per image (records read with a parallel interleave over the shards)."""
    files = split_files(data_dir, split)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.map(lambda raw: parse_record(raw, feature_dim), num_parallel_calls=AUTOTUNE, deterministic=True)


def _caption_pairs(record: dict) -> tf.data.Dataset:
    ids = record[records.CAPTION_IDS]
    count = ids.nrows()
    features = tf.repeat(record[records.IMAGE_FEATURES][tf.newaxis], count, axis=0)
    return tf.data.Dataset.from_tensor_slices((features, ids))


def _teacher_forcing(features, ids):
    return (features, ids[:-1]), ids[1:]


# Target lengths (words + <end>) at which length buckets start: Flickr8k captions are 4-30 words, most 8-14.
DEFAULT_BUCKETS = (8, 10, 12, 14, 16, 20, 25)


def _target_length(inputs, targets):
    return tf.shape(targets)[0]


def count_batches(data_dir: str, split: str, feature_dim: int, batch_size: int,
                  bucket_boundaries: tuple | None) -> int:
    """How many batches `caption_dataset` yields for a split (one cheap pass over the caption lengths)."""
    lengths = np.concatenate([record[records.CAPTION_IDS].row_lengths().numpy() - 1 for record in
                              image_dataset(data_dir, split, feature_dim)]) if split_files(data_dir, split) else []
    if not bucket_boundaries:
        return math.ceil(len(lengths) / batch_size)
    buckets = np.searchsorted(np.asarray(bucket_boundaries), lengths, side="right")
    return int(sum(math.ceil(count / batch_size) for count in np.bincount(buckets) if count))


def caption_dataset(data_dir: str, split: str, feature_dim: int, batch_size: int, *, training: bool,
                    seed: int | None = None, bucket_boundaries: tuple | None = None,
                    batches: int | None = None) -> tf.data.Dataset:
    """Padded batches of (image, caption) pairs for `model.fit`/`evaluate`.

    ``training`` shuffles (images fully, then pairs within a window so an image's captions spread over batches)
    and caches the parsed records in memory after the first epoch. With ``bucket_boundaries`` (e.g.
    `DEFAULT_BUCKETS`) a batch holds captions of similar length, so little of it is padding: epochs are ~1.7x
    faster on Flickr8k, but the model came out worse in our runs (see `trainer.task --length_buckets`). ``batches``
    (from `count_batches`) declares the cardinality so that Keras shows a progress bar with a total.
    """
    images = image_dataset(data_dir, split, feature_dim, shuffle_files=training, seed=seed).cache()
    if training:
        images = images.shuffle(8192, seed=seed, reshuffle_each_iteration=True)
    pairs = images.flat_map(_caption_pairs)
    if training:
        pairs = pairs.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    pairs = pairs.map(_teacher_forcing, num_parallel_calls=AUTOTUNE)
    padded_shapes = (([feature_dim], [None]), [None])
    padding = ((0.0, tf.constant(0, tf.int64)), tf.constant(0, tf.int64))
    if bucket_boundaries:
        batched = pairs.bucket_by_sequence_length(
            _target_length, list(bucket_boundaries), [batch_size] * (len(bucket_boundaries) + 1),
            padded_shapes=padded_shapes, padding_values=padding)
    else:
        batched = pairs.padded_batch(batch_size, padded_shapes=padded_shapes, padding_values=padding)
    if batches is not None:
        batched = batched.apply(tf.data.experimental.assert_cardinality(batches))
    return batched.prefetch(AUTOTUNE)


def parse_grid_record(serialized, feature_dim: int, grid_shape: tuple) -> dict:
    """One serialized Example with a grid -> {image_id, image_features [D], image_grid [G, D] float16, captions [C],
    caption_ids ragged [C, None]}."""
    parsed = tf.io.parse_single_example(serialized, records.feature_spec(feature_dim, with_grid=True))
    ids = tf.RaggedTensor.from_row_lengths(tf.sparse.to_dense(parsed[records.CAPTION_IDS]),
                                           tf.sparse.to_dense(parsed[records.CAPTION_LENGTHS]))
    return {records.IMAGE_ID: parsed[records.IMAGE_ID], records.IMAGE_FEATURES: parsed[records.IMAGE_FEATURES],
            records.IMAGE_GRID: records.parse_grid(parsed[records.IMAGE_GRID], grid_shape,
                                                                parsed[records.IMAGE_ID]),
            records.CAPTIONS: tf.sparse.to_dense(parsed[records.CAPTIONS]), records.CAPTION_IDS: ids}


def grid_dataset(data_dir: str, split: str, feature_dim: int, grid_shape: tuple) -> tf.data.Dataset:
    """One element per image with its grid (`parse_grid_record`), in record order."""
    files = split_files(data_dir, split)
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE, deterministic=True
    ).map(lambda raw: parse_grid_record(raw, feature_dim, grid_shape), num_parallel_calls=AUTOTUNE,
          deterministic=True)


def _grid_batch(grids, ids):
    """(float16 grids [K, G, D], caption ids ragged [K, C, L]) -> ((float32 grids, image_index [N], inputs [N, T]),
    targets [N, T]) over the N = sum(C) captions of the K images (float16 in the cache, float32 in the model)."""
    captions = ids.merge_dims(0, 1)
    image_index = tf.cast(ids.value_rowids(), tf.int32)
    return (tf.cast(grids, tf.float32), image_index, captions[:, :-1].to_tensor(0)), captions[:, 1:].to_tensor(0)


def grid_caption_dataset(data_dir: str, split: str, feature_dim: int, grid_shape: tuple, images_per_batch: int, *,
                         training: bool, seed: int | None = None, image_count: int | None = None,
                         cache_file: str = "") -> tf.data.Dataset:
    """Batches of ``images_per_batch`` images with *all* their captions, for the attention decoder
    (`trainer.attention`): each grid travels once per epoch, not once per caption (on Flickr8k a caption-level
    pipeline would copy 30,000 grids of 400 KB per epoch). ``training`` shuffles the images every epoch; the parsed
    records (grids as float16) are cached after the first epoch: in memory (2.4 GB for Flickr8k's train split at
    10x10), or in ``cache_file`` on disk (`tf.data.Dataset.cache`). ``image_count`` (from metadata.json)
    declares the cardinality, so that Keras shows a progress bar with a total."""
    images = grid_dataset(data_dir, split, feature_dim, grid_shape).map(
        lambda record: (record[records.IMAGE_GRID], record[records.CAPTION_IDS])).cache(cache_file)
    if training:
        images = images.shuffle(8192, seed=seed, reshuffle_each_iteration=True)
    batched = images.batch(images_per_batch).map(_grid_batch, num_parallel_calls=AUTOTUNE)
    if image_count is not None:
        batched = batched.apply(tf.data.experimental.assert_cardinality(math.ceil(image_count / images_per_batch)))
    return batched.prefetch(AUTOTUNE)


def grid_scale(data_dir: str, split: str, feature_dim: int, grid_shape: tuple, images: int = 1000) -> float:
    """1 / the root mean square of the grids of the split's first ``images`` images (the "scale" feature scaling
    of `trainer.model`, for grids)."""
    total, count = 0.0, 0
    for grid in grid_dataset(data_dir, split, feature_dim, grid_shape).take(images).map(
            lambda record: record[records.IMAGE_GRID]).batch(32).as_numpy_iterator():
        total += float(np.square(grid, dtype=np.float32).sum(dtype=np.float64))
        count += grid.size
    root_mean_square = math.sqrt(total / count) if count else 0.0
    if root_mean_square == 0.0:
        raise ValueError(f"the {split} grids of {data_dir} are all zero: nothing to learn from")
    return 1.0 / root_mean_square


def feature_matrix(data_dir: str, split: str, feature_dim: int, batch_size: int = 512) -> tf.data.Dataset:
    """Batches of image features only (to fit the feature normalization)."""
    return image_dataset(data_dir, split, feature_dim).map(
        lambda record: record[records.IMAGE_FEATURES]).batch(batch_size)


def references(data_dir: str, split: str, feature_dim: int, grid_shape: tuple | None = None,
               count: int | None = None):
    """(image ids, features, cleaned reference captions per image) of a split, in record order. The features are
    the pooled vectors [N, D], or with ``grid_shape`` `records.SpatialFeatures` (vectors, grids [N, G, D] float16).
    ``count``: the split's number of images (metadata.json), so that the grids are filled into one preallocated
    array instead of being stacked from a list (half the peak memory: 400 KB per image at 10x10)."""
    image_ids, features, captions = [], [], []
    grids = np.empty((count, grid_shape[0] * grid_shape[1], grid_shape[2]), np.float16) \
        if grid_shape and count is not None else []
    dataset = grid_dataset(data_dir, split, feature_dim, grid_shape) if grid_shape else \
        image_dataset(data_dir, split, feature_dim)
    for record in dataset.as_numpy_iterator():
        image_ids.append(record[records.IMAGE_ID].decode("utf-8"))
        features.append(record[records.IMAGE_FEATURES])
        if grid_shape and isinstance(grids, list):
            grids.append(record[records.IMAGE_GRID])
        elif grid_shape:
            if len(image_ids) > len(grids):
                raise ValueError(f"the {split} split of {data_dir} holds more images than metadata.json says "
                                 f"({len(grids)})")
            grids[len(image_ids) - 1] = record[records.IMAGE_GRID]
        captions.append([c.decode("utf-8") for c in record[records.CAPTIONS]])
    vectors = np.stack(features) if features else np.zeros((0, feature_dim), np.float32)
    if not grid_shape:
        return image_ids, vectors, captions
    if isinstance(grids, list):
        grids = np.stack(grids) if grids else np.zeros((0, grid_shape[0] * grid_shape[1], grid_shape[2]), np.float16)
    return image_ids, records.SpatialFeatures(vectors, grids[:len(image_ids)]), captions


def split_sizes(metadata: dict, split: str) -> tuple[int, int]:
    """(images, captions) of a split according to metadata.json."""
    try:
        counts = metadata[MetadataKeys.SPLITS][split]
    except KeyError:
        raise ValueError(f"split {split!r} is not in the extracted data (splits: "
                         f"{', '.join(metadata[MetadataKeys.SPLITS])})") from None
    return counts[SplitKeys.IMAGES], counts[SplitKeys.CAPTIONS]
