"""The tf.data input pipeline: one element per caption, teacher-forcing shift, padding that the loss ignores."""
import numpy as np
import pytest

from schemas.vocabulary import END_ID, PAD_ID, START_ID
from tests.conftest import write_feature_records
from trainer import data

CAPTIONS = {
    "a.jpg": ["A red circle .", "A circle that is red ."],
    "b.jpg": ["A blue square above a green triangle ."],
    "c.jpg": ["Blue .", "A square .", "Three words here ."],
}


def _features(index, dim=16):
    return np.full(dim, float(index + 1), np.float32)


def _write(tmp_path, shards=2):
    items = [(name, _features(i), caps) for i, (name, caps) in enumerate(CAPTIONS.items())]
    vocab = write_feature_records(str(tmp_path), {"train": items, "dev": items[:1]}, shards=shards)
    return str(tmp_path), vocab


@pytest.mark.parametrize("buckets", [None, (4, 6)])
def test_one_element_per_caption_with_shift_and_padding(tmp_path, buckets):
    data_dir, vocab = _write(tmp_path)
    batches = list(data.caption_dataset(data_dir, "train", 16, batch_size=4, training=False,
                                        bucket_boundaries=buckets))
    assert len(batches) == data.count_batches(data_dir, "train", 16, 4, buckets) == (2 if buckets is None else 3)
    pairs = []
    for (features, inputs), targets in batches:
        features, inputs, targets = features.numpy(), inputs.numpy(), targets.numpy()
        assert features.shape[1] == 16 and inputs.shape == targets.shape and inputs.shape[0] == features.shape[0]
        for row in range(inputs.shape[0]):
            length = int((targets[row] != PAD_ID).sum())
            assert inputs[row, 0] == START_ID and targets[row, length - 1] == END_ID
            assert (inputs[row, 1:length] == targets[row, :length - 1]).all()  # teacher forcing: shifted by one
            assert (targets[row, length:] == PAD_ID).all() and (inputs[row, length:] == PAD_ID).all()
            words = vocab.decode(targets[row, :length - 1])
            pairs.append((float(features[row, 0]), " ".join(words)))
    expected = sorted((float(i + 1), " ".join(c.lower().replace(".", "").split()))
                      for i, caps in enumerate(CAPTIONS.values()) for c in caps)
    assert sorted(pairs) == expected


def test_training_order_is_shuffled_but_repeatable(tmp_path):
    data_dir, _ = _write(tmp_path)

    def order(seed):
        dataset = data.caption_dataset(data_dir, "train", 16, batch_size=1, training=True, seed=seed)
        return [tuple(targets.numpy()[0]) for (_, _), targets in dataset]

    unshuffled = [tuple(targets.numpy()[0]) for (_, _), targets in
                  data.caption_dataset(data_dir, "train", 16, batch_size=1, training=False)]
    assert order(7) == order(7)
    assert sorted(order(7)) == sorted(order(8)) == sorted(unshuffled)
    assert order(7) != unshuffled and order(8) != unshuffled and order(7) != order(8)  # 1 in 720 by chance


def test_an_images_captions_are_spread_over_the_epoch(tmp_path):
    """Training shuffles pairs as well as images: an image's five captions do not come one after the other."""
    items = [(f"{i}.jpg", _features(i), [f"caption {word} of image" for word in ("one", "two", "three", "four",
                                                                                  "five")]) for i in range(6)]
    write_feature_records(str(tmp_path), {"train": items})
    order = [float(features.numpy()[0, 0]) for (features, _), _ in
             data.caption_dataset(str(tmp_path), "train", 16, batch_size=1, training=True, seed=3)]
    assert sorted(order) == sorted(float(i + 1) for i in range(6) for _ in range(5))
    runs = 1 + sum(1 for before, after in zip(order, order[1:]) if before != after)
    assert runs > 12  # 6 when only the images are shuffled; about 25 when the pairs are


def test_length_buckets_group_similar_lengths(tmp_path):
    data_dir, _ = _write(tmp_path)
    # Target lengths (words + <end>): 4, 6, 8, 2, 3, 4 -> buckets [<4], [4, 6), [>=6] with boundaries (4, 6).
    lengths = [sorted(int(n) for n in (targets.numpy() != 0).sum(axis=1)) for (_, _), targets in
               data.caption_dataset(data_dir, "train", 16, batch_size=8, training=True, seed=0,
                                    bucket_boundaries=(4, 6))]
    assert sorted(lengths) == [[2, 3], [4, 4], [6, 8]]


def test_cardinality_is_declared(tmp_path):
    data_dir, _ = _write(tmp_path)
    dataset = data.caption_dataset(data_dir, "train", 16, batch_size=4, training=True, seed=0,
                                   bucket_boundaries=data.DEFAULT_BUCKETS,
                                   batches=data.count_batches(data_dir, "train", 16, 4, data.DEFAULT_BUCKETS))
    assert int(dataset.cardinality()) == len(list(dataset)) == 3  # 5 captions shorter than 8, 1 of 8


def test_references_keep_all_captions(tmp_path):
    data_dir, _ = _write(tmp_path, shards=1)
    image_ids, features, references = data.references(data_dir, "train", 16)
    assert image_ids == list(CAPTIONS)
    assert features.shape == (3, 16)
    assert references[2] == ["blue", "a square", "three words here"]


@pytest.mark.parametrize("version", [None, 0, 2])
def test_records_of_another_format_version_are_refused_with_what_to_do(tmp_path, version):
    import json
    data_dir, _ = _write(tmp_path)
    path = tmp_path / "metadata.json"
    metadata = json.loads(path.read_text())
    if version is None:
        del metadata["format_version"]
    else:
        metadata["format_version"] = version
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="run the extract job of this version again"):
        data.read_metadata(data_dir)

