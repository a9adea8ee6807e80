"""The extract job's output directory and its TFRecord format -- the trainer's input.

Layout of ``--output_dir``::

    <split>-SSSSS-of-NNNNN.tfrecord   one tf.train.Example per image, per split (train, dev, test, ...)
    vocab.txt                         see `schemas.vocabulary`
    metadata.json                     counts and the feature extractor's identity (keys below)
    errors.parquet                    one row per image that produced no record (`schemas.tables.ERROR_SCHEMA`)

Each Example holds one image and all of its captions:

==================  ==============  ===========================================================================
 key                 type            content
==================  ==============  ===========================================================================
 ``image_id``        bytes           file name of the image, e.g. ``1000268201_693b08cb0e.jpg``
 ``split``           bytes           the split the image belongs to
 ``image_features``  float x D       pooled backbone features (D = ``metadata["feature_dim"]``)
 ``image_grid``      bytes           only with ``--spatial_grid``: the backbone's last convolutional map, average
                                     pooled to a g x g grid (or not at all), as float16 bytes (little-endian, row
                                     major) of shape ``metadata["grid_shape"]`` = [g, g, D]; 2 * g * g * D bytes
 ``captions``        bytes x C       the cleaned captions (`schemas.captions.normalize_caption`)
 ``caption_ids``     int64 x sum(L)  token ids of all captions, concatenated; each starts with <start> and ends
                                     with <end>
 ``caption_lengths`` int64 x C       number of ids of each caption, so ``caption_ids`` splits back into C rows
==================  ==============  ===========================================================================
"""
import typing

import numpy as np

from schemas import fileio
from schemas.fileio import join

IMAGE_ID = "image_id"
SPLIT = "split"
IMAGE_FEATURES = "image_features"
IMAGE_GRID = "image_grid"
GRID_DTYPE = np.dtype("<f2")
CAPTIONS = "captions"
CAPTION_IDS = "caption_ids"
CAPTION_LENGTHS = "caption_lengths"

METADATA_FILE = "metadata.json"
ERRORS_FILE = "errors.parquet"
RECORD_SUFFIX = ".tfrecord"


class SplitKeys:
    """Keys of each split's entry in metadata.json's SPLITS."""
    IMAGES = "images"
    CAPTIONS = "captions"
    FILES = "files"  # the glob of its records, relative to the directory


class DatasetKeys:
    """Keys of each dataset's entry in metadata.json's DATASETS. Over all datasets, the sum of IMAGES less the sum
    of DUPLICATES is the number of records, and the sum of CAPTIONS the number of captions in them."""
    ORDER = "order"  # its place among the --dataset_dir flags (the first dataset's copy of a duplicate wins)
    LAYOUT = "layout"  # token, table-csv, table-jsonl, coco or karpathy
    IMAGES_DIR = "images_dir"
    IMAGES = "images"  # its images in the records (a duplicate counts for each dataset it is in)
    CAPTIONS = "captions"  # captions it gave to the records (a caption text an image already had is not counted)
    DUPLICATES = "duplicates"  # its images whose record is shared with an image named earlier (same content)
    LEFT_OUT_OF_TRAIN = "left_out_of_train"  # its train images not written: a copy is in an evaluation split


class MetadataKeys:
    """Keys of metadata.json."""
    SPLITS = "splits"  # {split: {SplitKeys.IMAGES: int, SplitKeys.CAPTIONS: int, SplitKeys.FILES: glob}}
    RECORD_FILES = "record_files"  # names of the record shards written
    IMAGES_FAILED = "images_failed"
    ERRORS_BY_CLASS = "errors_by_class"
    CAPTIONS_WITHOUT_IMAGE = "captions_without_image"
    IMAGES_WITHOUT_SPLIT = "images_without_split"
    DATASETS = "datasets"  # {name: {DatasetKeys...}}: where the records came from
    TRAIN_DUPLICATES_LEFT_OUT = "train_duplicates_left_out"  # train images left out: a copy is evaluated
    CAPTIONS_EMPTY = "captions_empty_after_normalization"
    CAPTIONS_TOO_LONG = "captions_too_long"  # left out: more words than MAX_CAPTION_WORDS after normalization
    MAX_CAPTION_WORDS = "max_caption_words"
    VOCAB_SIZE = "vocab_size"
    MIN_WORD_COUNT = "min_word_count"
    VOCAB_SOURCE = "vocab_source"
    MAX_LENGTH = "max_length"  # ids in the longest caption, <start> and <end> included
    FEATURE_DIM = "feature_dim"
    GRID_SHAPE = "grid_shape"  # [g, g, D] of IMAGE_GRID, or null: records without a grid
    GRID_BYTES_PER_IMAGE = "grid_bytes_per_image"  # storage of one image's grid (0: none)
    BACKBONE = "backbone"
    WEIGHTS = "weights"
    WEIGHTS_SHA256 = "weights_sha256"
    IMAGE_SIZE = "image_size"
    PREPROCESSING = "preprocessing"
    INFERENCE_BACKEND = "inference_backend"  # keras | openvino | openvino-f32 | openvino-int8 (same weights)
    INT8_MODEL = "int8_model"  # openvino-int8: its quantization.json (calibration set, bin_sha256); else absent
    FORMAT_VERSION = "format_version"


FORMAT_VERSION = 1


class SpatialFeatures(typing.NamedTuple):
    """What a spatial feature extractor gives per image: the pooled vector [D] (float32) and the grid it is pooled
    from, [g, g, D] (float16: half the storage, and ample precision for ReLU-activated features)."""
    vector: np.ndarray
    grid: np.ndarray


def checked_grid_shape(shape, feature_dim, source: str) -> tuple:
    """A [rows, columns, D] grid shape as a tuple of ints, or a ValueError naming ``source`` (its metadata or bundle
    config) when it is not three positive sizes whose depth is the pooled vector's ``feature_dim``."""
    try:
        sizes = tuple(int(size) for size in shape)
        valid = len(sizes) == 3 and all(size > 0 and size == float(given) for size, given in zip(sizes, shape))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{source}: grid_shape {shape!r} is not [rows, columns, depth] in positive integers")
    if feature_dim is not None and sizes[2] != int(feature_dim):
        raise ValueError(f"{source}: grid_shape {list(sizes)} has depth {sizes[2]}, but the pooled vectors have "
                         f"{feature_dim} dimensions: the grid and the vector come from the same map")
    return sizes


def grid_shape(metadata: dict) -> tuple | None:
    """(g, g, D) of the records' grids, or None when they have none."""
    shape = metadata.get(MetadataKeys.GRID_SHAPE)
    if not shape:
        return None
    return checked_grid_shape(shape, metadata.get(MetadataKeys.FEATURE_DIM), "metadata.json")


def check_metadata(metadata: dict, source: str) -> dict:
    """metadata.json as the trainer reads it, or a ValueError saying what to do."""
    version = metadata.get(MetadataKeys.FORMAT_VERSION)
    if version != FORMAT_VERSION:
        written = "no format version (an early imcap)" if version is None else f"format {version}"
        raise ValueError(f"{source}: records of {written}, but this imcap reads format {FORMAT_VERSION}; run the "
                         "extract job of this version again (or the imcap version that wrote them)")
    missing = [key for key in (MetadataKeys.SPLITS, MetadataKeys.FEATURE_DIM, MetadataKeys.MAX_LENGTH)
               if key not in metadata]
    if missing:
        raise ValueError(f"{source}: not the extract job's metadata, missing {', '.join(missing)}")
    if metadata.get(MetadataKeys.GRID_SHAPE):
        checked_grid_shape(metadata[MetadataKeys.GRID_SHAPE], metadata[MetadataKeys.FEATURE_DIM], source)
    return metadata


EVAL_SPLIT_NAMES = ("dev", "val")  # the split a trainer watches and evaluates on by default, in this order


def split_file_stem(split: str) -> str:
    """The file name stem of a split's shards: the split's name, with the '/' of a dataset's split in records of
    several datasets (e.g. ``coco/val``) as '.' (``coco.val-00000-of-00001.tfrecord``). Split and dataset names are
    letters, digits, '_' and '-' (`beam_jobs.extract.layouts.check_split_name`), so stems never collide."""
    return split.replace("/", ".")


def shard_prefix(output_dir: str, split: str) -> str:
    """Prefix given to the TFRecord sink of a split; Beam appends -SSSSS-of-NNNNN.tfrecord."""
    return join(output_dir, split_file_stem(split))


def split_pattern(output_dir: str, split: str) -> str:
    """Glob of a split's shards."""
    return join(output_dir, f"{split_file_stem(split)}-*-of-*{RECORD_SUFFIX}")


def default_eval_split(metadata: dict) -> str | None:
    """The split to watch during training and to evaluate on when none is named: dev, else val, else (records of
    several datasets) the first dataset's (in --dataset_dir order) dev or val split, e.g. ``flickr8k/dev``; None
    when there is none."""
    splits = metadata.get(MetadataKeys.SPLITS) or {}
    datasets = metadata.get(MetadataKeys.DATASETS) or {}
    for name in sorted(datasets, key=lambda name: datasets[name].get(DatasetKeys.ORDER, 0)):
        for split in EVAL_SPLIT_NAMES:
            if split in splits or f"{name}/{split}" in splits:
                return split if split in splits else f"{name}/{split}"
    return next((split for split in EVAL_SPLIT_NAMES if split in splits), None)


def feature_spec(feature_dim: int, with_grid: bool = False) -> dict:
    """`tf.io.parse_single_example` spec of a record (``with_grid``: its grid too, as bytes: `parse_grid`)."""
    import tensorflow as tf
    spec = {
        IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
        SPLIT: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FEATURES: tf.io.FixedLenFeature([feature_dim], tf.float32),
        CAPTIONS: tf.io.VarLenFeature(tf.string),
        CAPTION_IDS: tf.io.VarLenFeature(tf.int64),
        CAPTION_LENGTHS: tf.io.VarLenFeature(tf.int64),
    }
    if with_grid:
        spec[IMAGE_GRID] = tf.io.FixedLenFeature([], tf.string)
    return spec


def stored_grid(grids: np.ndarray) -> np.ndarray:
    """Grids as stored (float16). A value beyond float16's range (65504) would be stored as inf and poison every
    caption of the image, so it is refused (it means a backbone or backend with unusual activations)."""
    with np.errstate(over="ignore"):  # checked just below, with a message that says what to do
        stored = np.asarray(grids).astype(GRID_DTYPE)
    if not np.isfinite(stored).all():
        raise ValueError(f"spatial features beyond float16's range (largest magnitude "
                         f"{float(np.nanmax(np.abs(np.asarray(grids, np.float32)))):.4g}, float16 holds up to 65504): "
                         "this backbone's maps cannot be stored as image_grid; extract without --spatial_grid")
    return stored


def grid_nbytes(shape: tuple) -> int:
    """Bytes of one record's ``image_grid`` of this [g, g, D] shape."""
    return int(np.prod(shape)) * np.dtype(GRID_DTYPE).itemsize


def parse_grid(grid_bytes, shape: tuple, image_id=None):
    """The parsed ``image_grid`` bytes -> float16 tensor [g * g, D] (regions in row-major order). Bytes of another
    size (a record of other grids, or damaged) fail with an InvalidArgumentError that names ``image_id``."""
    import tensorflow as tf
    expected = grid_nbytes(shape)
    length = tf.strings.length(grid_bytes)
    check = tf.debugging.Assert(tf.equal(length, expected), [
        f"{IMAGE_GRID} of the record below is not {expected} bytes (a {shape[0]}x{shape[1]}x{shape[2]} float16 grid, "
        "the records' metadata.json grid_shape): damaged records, or records of another extract run. Record, bytes:",
        image_id if image_id is not None else "(unnamed)", length])
    with tf.control_dependencies([check]):
        grid = tf.io.decode_raw(grid_bytes, tf.float16, little_endian=True)
    return tf.reshape(grid, [shape[0] * shape[1], shape[2]])


def encode_example(image_id: str, split: str, features, captions: list[str], caption_ids: list[list[int]]):
    """Builds the tf.train.Example of one image; ``features`` is the pooled vector, or `SpatialFeatures`."""
    import tensorflow as tf
    if len(captions) != len(caption_ids):
        raise ValueError(f"{image_id}: {len(captions)} captions but {len(caption_ids)} id sequences")
    grid = None
    if isinstance(features, SpatialFeatures):
        features, grid = features
    flat_ids = [token_id for ids in caption_ids for token_id in ids]
    feature = {
        IMAGE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode("utf-8")])),
        SPLIT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode("utf-8")])),
        IMAGE_FEATURES: tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(features, dtype=np.float32).ravel())),
        CAPTIONS: tf.train.Feature(bytes_list=tf.train.BytesList(value=[c.encode("utf-8") for c in captions])),
        CAPTION_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=flat_ids)),
        CAPTION_LENGTHS: tf.train.Feature(int64_list=tf.train.Int64List(value=[len(ids) for ids in caption_ids])),
    }
    if grid is not None:
        feature[IMAGE_GRID] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.ascontiguousarray(grid, dtype=GRID_DTYPE).tobytes()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_example(serialized: bytes, grid: tuple | None = None) -> dict:
    """Parses a serialized record into plain Python/numpy values (for tools and tests; the trainer uses tf.data).
    ``grid``: the [g, g, D] shape of its grid (`grid_shape`), returned as float16 under ``image_grid``."""
    import tensorflow as tf
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    flat_ids = list(feature[CAPTION_IDS].int64_list.value)
    lengths = list(feature[CAPTION_LENGTHS].int64_list.value)
    if sum(lengths) != len(flat_ids):
        raise ValueError(f"corrupt record: caption_lengths sum to {sum(lengths)} but there are {len(flat_ids)} ids")
    rows, start = [], 0
    for length in lengths:
        rows.append(flat_ids[start:start + length])
        start += length
    decoded = {
        IMAGE_ID: feature[IMAGE_ID].bytes_list.value[0].decode("utf-8"),
        SPLIT: feature[SPLIT].bytes_list.value[0].decode("utf-8"),
        IMAGE_FEATURES: np.asarray(feature[IMAGE_FEATURES].float_list.value, dtype=np.float32),
        CAPTIONS: [c.decode("utf-8") for c in feature[CAPTIONS].bytes_list.value],
        CAPTION_IDS: rows,
    }
    if grid is not None:
        if not feature[IMAGE_GRID].bytes_list.value:
            raise ValueError(f"{decoded[IMAGE_ID]}: the record has no {IMAGE_GRID} (records of an extract job run "
                             "without --spatial_grid)")
        raw = feature[IMAGE_GRID].bytes_list.value[0]
        if len(raw) != grid_nbytes(grid):
            raise ValueError(f"{decoded[IMAGE_ID]}: {IMAGE_GRID} holds {len(raw)} bytes, not the {grid_nbytes(grid)} "
                             f"of a {'x'.join(map(str, grid))} float16 grid (damaged records, or records of another "
                             "extract run)")
        decoded[IMAGE_GRID] = np.frombuffer(raw, GRID_DTYPE).reshape(grid)
    return decoded


def read_records(output_dir: str, split: str, grid: tuple | None = None) -> list[dict]:
    """All records of a split, decoded, sorted by image id (small datasets, tools and tests)."""
    import tensorflow as tf
    files = [fileio.local_copy(path) for path in fileio.glob(split_pattern(output_dir, split))]
    records = [decode_example(raw.numpy(), grid) for raw in tf.data.TFRecordDataset(files)] if files else []
    return sorted(records, key=lambda record: record[IMAGE_ID])
