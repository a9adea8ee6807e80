"""Shared fixtures: a generated sample dataset, local test pipelines, the real Flickr8k where present.

Tests marked ``integration`` (everything under tests/integration/, and the slow end-to-end tests elsewhere: whole
jobs with real Xception, training runs, worker processes, kills) run in ``make test-integration``; ``make test``
runs the others, real models included, in under 90 s on 2 cores. CI runs both.
"""
import os
import shutil

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLICKR8K_DIR = os.path.join(REPO_ROOT, "..", "shared", "datasets", "flickr8k")
IMAGENET_WEIGHTS = os.path.expanduser("~/.cache/imcap/xception_imagenet_notop.weights.h5")

# Small and fast: Xception's smallest input, random-init weights.
TEST_IMAGE_SIZE = 71


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: a slow end-to-end test (make test-integration runs these)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if f"{os.sep}integration{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.integration)


def built_once(tmp_path_factory, name: str, build) -> str:
    """A read-only directory of the session that ``build(directory)`` fills, built once for all pytest-xdist
    workers (the first one to ask builds it under a lock; the others wait and share it)."""
    import fcntl
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    directory, done = str(base / name), str(base / f"{name}.done")
    with open(str(base / f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory)
            build(directory)
            open(done, "w").close()
    return directory


def local_test_pipeline(argv=()):
    """A TestPipeline on the jobs' local runner (Beam's DirectRunner would first try to download Prism)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from beam_jobs.runtime import LocalRunner
    return TestPipeline(runner=LocalRunner(), options=PipelineOptions(list(argv)))


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """12 generated images in the Flickr8k layout (train 8, dev 2, test 2). Read-only: copy to modify."""
    from beam_jobs.tools.sample_dataset import write_sample_dataset
    return built_once(tmp_path_factory, "sample", lambda directory: write_sample_dataset(
        directory, num_images=12, image_size=96, seed=3))


@pytest.fixture
def sample_copy(sample_dataset, tmp_path):
    """A private copy of the sample dataset that a test may break."""
    target = tmp_path / "dataset"
    shutil.copytree(sample_dataset, target)
    return str(target)


def requires_flickr8k():
    return pytest.mark.skipif(not os.path.isdir(FLICKR8K_DIR),
                              reason="../shared/datasets/flickr8k is not present on this machine")


@pytest.fixture(scope="session")
def sample_features(sample_dataset, tmp_path_factory):
    """The extract job's output for the sample dataset (random-init Xception at 71 px, min word count 1), with the
    full 3x3 spatial grids; Keras features (the reference the other backends are compared with)."""
    from beam_jobs.extract import job as extract_job
    return built_once(tmp_path_factory, "sample_features", lambda output_dir: extract_job.run(
        ["--dataset_dir", sample_dataset, "--output_dir", output_dir, "--weights", "none",
         "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--spatial_grid", "full",
         "--inference_backend", "keras"],
        test_pipeline=local_test_pipeline()))


# Six images with one caption each, for trainer tests that overfit them (one caption per image: decodable exactly).
TINY_CAPTIONS = {
    "one.jpg": "A red circle above a blue square .",
    "two.jpg": "A small green triangle .",
    "three.jpg": "Two dogs run on the grass .",
    "four.jpg": "A man rides a red bike .",
    "five.jpg": "A blue square left of a red circle .",
    "six.jpg": "A black cat sleeps .",
}


def write_feature_records(output_dir, splits, feature_dim=16, shards=1, grid_shape=None):
    """Writes extract-job-format records without running the job (for trainer unit tests).

    ``splits``: {split: [(image_id, features, [raw captions])]}; the vocabulary comes from the train captions.
    With ``grid_shape`` (g, g, D) the features are `records.SpatialFeatures`.
    """
    import tensorflow as tf

    from schemas import captions as caption_rules
    from schemas import fileio, records
    from schemas.records import MetadataKeys, SplitKeys
    from schemas.vocabulary import Vocabulary

    counts = {}
    for image_id, _, raw in splits.get("train", []):
        for caption in raw:
            for word in caption_rules.caption_tokens(caption):
                counts[word] = counts.get(word, 0) + 1
    vocabulary = Vocabulary.from_word_counts(counts)
    os.makedirs(output_dir, exist_ok=True)
    max_length = 0
    split_counts = {}
    for split, items in splits.items():
        writers = [tf.io.TFRecordWriter(os.path.join(output_dir, f"{split}-{i:05d}-of-{shards:05d}.tfrecord"))
                   for i in range(shards)]
        for index, (image_id, features, raw) in enumerate(items):
            cleaned = [caption_rules.normalize_caption(c) for c in raw]
            ids = [vocabulary.encode(caption_rules.with_boundaries(c.split())) for c in cleaned]
            max_length = max([max_length] + [len(i) for i in ids])
            example = records.encode_example(image_id, split, features, cleaned, ids)
            writers[index % shards].write(example.SerializeToString())
        for writer in writers:
            writer.close()
        split_counts[split] = {SplitKeys.IMAGES: len(items), SplitKeys.CAPTIONS: sum(len(raw) for _, _, raw in items)}
    vocabulary.save(os.path.join(output_dir, "vocab.txt"))
    fileio.write_json(os.path.join(output_dir, records.METADATA_FILE), {
        MetadataKeys.FORMAT_VERSION: records.FORMAT_VERSION, MetadataKeys.SPLITS: split_counts,
        MetadataKeys.FEATURE_DIM: feature_dim, MetadataKeys.MAX_LENGTH: max_length,
        MetadataKeys.VOCAB_SIZE: len(vocabulary), MetadataKeys.BACKBONE: "xception", MetadataKeys.WEIGHTS: "none",
        MetadataKeys.WEIGHTS_SHA256: "test-features", MetadataKeys.IMAGE_SIZE: 71,
        MetadataKeys.PREPROCESSING: "test", MetadataKeys.IMAGES_FAILED: 0,
        MetadataKeys.GRID_SHAPE: list(grid_shape) if grid_shape else None})
    return vocabulary


@pytest.fixture(scope="session")
def fake_bundle(tmp_path_factory):
    """A bundle for `tests.support.fakes.FAKE_MODELS` (no decoder; jobs run with it need ``models=FAKE_MODELS``)."""
    from tests.support.fakes import write_fake_bundle
    return write_fake_bundle(str(tmp_path_factory.mktemp("fake_bundle")))


@pytest.fixture(scope="session")
def sample_bundle(sample_features, tmp_path_factory):
    """A small decoder trained for a few epochs on the sample features (a real bundle, quality beside the point)."""
    from trainer import task
    return built_once(tmp_path_factory, "sample_bundle", lambda model_dir: task.train(task.parse_args(
        ["--data_dir", sample_features, "--model_dir", model_dir, "--decoder", "merge", "--epochs", "3",
         "--embedding_dim", "32",
         "--units", "64", "--batch_size", "16", "--verbose", "0", "--beam_width", "2"])))


@pytest.fixture(scope="session")
def attention_bundle(sample_features, tmp_path_factory):
    """A small attention decoder trained for a few epochs on the sample features' grids."""
    from trainer import task
    return built_once(tmp_path_factory, "attention_bundle", lambda model_dir: task.train(task.parse_args(
        ["--data_dir", sample_features, "--model_dir", model_dir, "--decoder", "attention", "--epochs", "3",
         "--embedding_dim", "32", "--units", "64", "--attention_dim", "16", "--batch_size", "16", "--verbose", "0",
         "--beam_width", "2"])))


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory):
    """A Keras weights file of Xception whose weights are not random-init's ('none' x 1.01): other features."""
    from schemas import backbones

    def build(directory):
        model = backbones.build_feature_extractor(backbones.XCEPTION, backbones.RANDOM_INIT, TEST_IMAGE_SIZE)
        model.set_weights([w * 1.01 for w in model.get_weights()])
        model.save_weights(os.path.join(directory, "other.weights.h5"))
    return os.path.join(built_once(tmp_path_factory, "other_weights", build), "other.weights.h5")
