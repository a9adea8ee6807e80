"""The extract job on generated images with random-init Xception: records, vocabulary, metadata, errors."""
import os
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.elements import Tally
from beam_jobs.extract import job as extract_job
from beam_jobs.extract.datasets import Naming
from beam_jobs.extract.reading import ClassifyImages, WorkItem
from beam_jobs.extract.vocabulary import CountWords
from schemas import backbones, captions, fileio, images, records
from schemas.images import prepare_image
from schemas.records import MetadataKeys
from schemas.vocabulary import Vocabulary
from tests.conftest import REPO_ROOT, TEST_IMAGE_SIZE, local_test_pipeline
from tests.support.fakes import FAKE_MODELS


def _argv(dataset_dir, output_dir, *extra):
    """The flags of `sample_features` (Keras features: the default int8 path has its own tests)."""
    return ["--dataset_dir", dataset_dir, "--output_dir", output_dir, "--weights", "none",
            "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend", "keras", *extra]


def _token_captions(dataset_dir):
    by_image = {}
    with open(os.path.join(dataset_dir, "Flickr8k_text", "Flickr8k.token.txt"), encoding="utf-8") as handle:
        for line in handle:
            caption_id, caption = line.rstrip("\n").split("\t")
            by_image.setdefault(caption_id.rsplit("#", 1)[0], []).append(caption)
    return by_image


def _split_names(dataset_dir, split):
    with open(os.path.join(dataset_dir, "Flickr8k_text", f"Flickr_8k.{split}Images.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


@pytest.fixture(scope="module")
def extracted(sample_features):
    """The session's in-process run of the job on the sample dataset with `_argv`'s flags (read-only)."""
    return sample_features


def test_records_hold_features_and_captions(sample_dataset, extracted):
    metadata = fileio.read_json(os.path.join(extracted, records.METADATA_FILE))
    vocab = Vocabulary.load(os.path.join(extracted, "vocab.txt"))
    raw = _token_captions(sample_dataset)
    for split in ("train", "dev", "test"):
        found = records.read_records(extracted, split)
        assert [r[records.IMAGE_ID] for r in found] == sorted(_split_names(sample_dataset, split))
        for record in found:
            assert record[records.SPLIT] == split
            assert record[records.IMAGE_FEATURES].shape == (backbones.XCEPTION.feature_dim,)
            assert np.isfinite(record[records.IMAGE_FEATURES]).all()
            expected = [captions.normalize_caption(c) for c in raw[record[records.IMAGE_ID]]]
            assert record[records.CAPTIONS] == expected
            decoded = [" ".join(captions.strip_boundaries(vocab.decode(ids))) for ids in record[records.CAPTION_IDS]]
            if split == "train":  # every train word is in the vocabulary (min count 1)
                assert decoded == expected
            for ids in record[records.CAPTION_IDS]:
                assert ids[0] == vocab.id_of(captions.START_TOKEN) and ids[-1] == vocab.id_of(captions.END_TOKEN)
        assert metadata[MetadataKeys.SPLITS][split]["images"] == len(found)
        assert metadata[MetadataKeys.SPLITS][split]["captions"] == 5 * len(found)


def test_metadata_describes_the_run(extracted):
    metadata = fileio.read_json(os.path.join(extracted, records.METADATA_FILE))
    assert metadata[MetadataKeys.FEATURE_DIM] == 2048
    assert metadata[MetadataKeys.BACKBONE] == "xception"
    assert metadata[MetadataKeys.WEIGHTS] == "none"
    assert metadata[MetadataKeys.IMAGE_SIZE] == TEST_IMAGE_SIZE
    assert metadata[MetadataKeys.IMAGES_FAILED] == 0
    assert metadata[MetadataKeys.CAPTIONS_WITHOUT_IMAGE] == 0
    assert metadata[MetadataKeys.VOCAB_SIZE] == len(Vocabulary.load(os.path.join(extracted, "vocab.txt")))
    longest = max(len(r[records.CAPTION_IDS][i]) for s in ("train", "dev", "test")
                  for r in records.read_records(extracted, s) for i in range(5))
    assert metadata[MetadataKeys.MAX_LENGTH] == longest
    assert pq.read_table(os.path.join(extracted, records.ERRORS_FILE)).num_rows == 0


def test_vocabulary_is_built_from_train_only(sample_dataset, extracted):
    raw = _token_captions(sample_dataset)
    counts = {}
    for name in _split_names(sample_dataset, "train"):
        for caption in raw[name]:
            for word in captions.caption_tokens(caption):
                counts[word] = counts.get(word, 0) + 1
    assert Vocabulary.load(os.path.join(extracted, "vocab.txt")) == Vocabulary.from_word_counts(counts)


def test_features_match_xception_applied_directly(sample_dataset, extracted):
    model = backbones.build_feature_extractor(backbones.XCEPTION, "none", TEST_IMAGE_SIZE)
    record = records.read_records(extracted, "dev")[0]
    with open(os.path.join(sample_dataset, "Flicker8k_Dataset", record[records.IMAGE_ID]), "rb") as handle:
        pixels, _ = prepare_image(handle.read(), TEST_IMAGE_SIZE)
    direct = model.predict(backbones.preprocess(backbones.XCEPTION, pixels[None]), verbose=0)[0]
    got = record[records.IMAGE_FEATURES]
    cosine = float(np.dot(direct, got) / (np.linalg.norm(direct) * np.linalg.norm(got)))
    assert cosine >= 0.9999
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-6)


@pytest.mark.integration
def test_bad_inputs_go_to_errors_and_the_rest_is_written(sample_copy, tmp_path):
    images_dir = os.path.join(sample_copy, "Flicker8k_Dataset")
    train_list = os.path.join(sample_copy, "Flickr8k_text", "Flickr_8k.trainImages.txt")
    train = _split_names(sample_copy, "train")
    truncated, text_file = train[0], train[1]
    with open(os.path.join(images_dir, truncated), "rb") as handle:
        data = handle.read()
    with open(os.path.join(images_dir, truncated), "wb") as handle:
        handle.write(data[: len(data) // 3])
    with open(os.path.join(images_dir, text_file), "w", encoding="utf-8") as handle:
        handle.write("not an image at all")
    with open(train_list, "a", encoding="utf-8") as handle:
        handle.write("missing_photo.jpg\n")
    with open(os.path.join(sample_copy, "Flickr8k_text", "Flickr8k.token.txt"), "a", encoding="utf-8") as handle:
        handle.write("missing_photo.jpg#0\tA ghost .\n")
        handle.write("stray.jpg.1#0\tA caption whose image does not exist .\n")
        handle.write("stray.jpg.1#1\tAnother one .\n")
    unlisted_image = os.path.join(images_dir, "unlisted.jpg")
    with open(unlisted_image, "wb") as handle:
        handle.write(data)

    output_dir = str(tmp_path / "out")
    extract_job.run(_argv(sample_copy, output_dir), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)

    errors = pq.read_table(os.path.join(output_dir, records.ERRORS_FILE)).to_pylist()
    by_name = {os.path.basename(row["image_uri"]): row for row in errors}
    assert set(by_name) == {truncated, text_file, "missing_photo.jpg"}
    assert by_name[truncated]["error"] == images.DECODE_ERROR
    assert by_name[text_file]["error"] == images.UNSUPPORTED_FORMAT
    assert by_name["missing_photo.jpg"]["error"] == images.MISSING_FILE
    assert all(row["message"] for row in errors)

    written = [r[records.IMAGE_ID] for r in records.read_records(output_dir, "train")]
    assert written == sorted(set(train) - {truncated, text_file})
    metadata = fileio.read_json(os.path.join(output_dir, records.METADATA_FILE))
    assert metadata[MetadataKeys.IMAGES_FAILED] == 3
    assert metadata[MetadataKeys.ERRORS_BY_CLASS] == {"decode_error": 1, "missing_file": 1, "unsupported_format": 1}
    assert metadata[MetadataKeys.CAPTIONS_WITHOUT_IMAGE] == 3  # the ghost's caption and the two stray ones
    assert metadata[MetadataKeys.IMAGES_WITHOUT_SPLIT] == 1
    assert metadata[MetadataKeys.SPLITS]["train"]["images"] == len(train) - 2
    # Every image listed in a split is in the records or in the errors.
    listed = set(train + ["missing_photo.jpg"] + _split_names(sample_copy, "dev") + _split_names(sample_copy, "test"))
    recorded = {r[records.IMAGE_ID] for s in ("train", "dev", "test") for r in records.read_records(output_dir, s)}
    assert recorded | set(by_name) == listed and not recorded & set(by_name)


@pytest.mark.integration
def test_multi_processing_command_gives_the_same_records(sample_dataset, extracted, tmp_path):
    # The command line, as a user runs it: its classes must pickle by importable names for a worker process, which
    # builds the same random-init Xception as the launcher (its weights digest is checked there). Real models in a
    # worker process; two workers are run by the caption job's test (fake models: TensorFlow is imported per process).
    output_dir = str(tmp_path / "mp")
    subprocess.run([sys.executable, "-m", "beam_jobs.extract_features",
                    *_argv(sample_dataset, output_dir, "--direct_running_mode=multi_processing",
                           "--direct_num_workers=1")], check=True, cwd=REPO_ROOT, capture_output=True)
    for split in ("train", "dev", "test"):
        expected, got = records.read_records(extracted, split), records.read_records(output_dir, split)
        assert [r[records.IMAGE_ID] for r in got] == [r[records.IMAGE_ID] for r in expected]
        for mine, theirs in zip(got, expected):
            assert mine[records.CAPTIONS] == theirs[records.CAPTIONS]
            assert mine[records.CAPTION_IDS] == theirs[records.CAPTION_IDS]
            np.testing.assert_allclose(mine[records.IMAGE_FEATURES], theirs[records.IMAGE_FEATURES],
                                       rtol=1e-4, atol=1e-6)
    assert open(os.path.join(output_dir, "vocab.txt")).read() == open(os.path.join(extracted, "vocab.txt")).read()


def test_classify_images_joins_captions_splits_and_files():
    joined = [
        ("a.jpg", {"captions": [(1, "Second ."), (0, "A dog !")], "splits": [("train", "a.jpg")],
                   "files": ["/d/a.jpg"]}),
        ("gone.jpg", {"captions": [(0, "x")], "splits": [("dev", "gone.jpg")], "files": []}),
        ("stray.jpg.1", {"captions": [(0, "x"), (1, "y")], "splits": [], "files": []}),
        ("extra.jpg", {"captions": [], "splits": [], "files": ["/d/extra.jpg"]}),
        ("mute.jpg", {"captions": [(0, "42 !")], "splits": [("train", "mute.jpg")], "files": ["/d/mute.jpg"]}),
    ]
    with local_test_pipeline() as pipeline:
        out = (pipeline | beam.Create(joined)
               | beam.ParDo(ClassifyImages(Naming("d", False), "/d")).with_outputs("errors", "tallies", main="items"))
        assert_that(out.items, equal_to([WorkItem("a.jpg", "train", "/d/a.jpg", ("a dog", "second"),
                                                  (("d", 2),))]),
                    label="Items")
        assert_that(out.errors | beam.Map(lambda row: (row.image_uri, row.error)),
                    equal_to([("/d/gone.jpg", "missing_file"), ("/d/mute.jpg", "no_captions")]), label="Errors")
        assert_that(out.tallies, equal_to([Tally(Tally.STAT, "captions_without_image", 1),
                                           Tally(Tally.STAT, "captions_without_image", 2),
                                           Tally(Tally.STAT, "images_without_split", 1),
                                           Tally(Tally.STAT, "captions_empty_after_normalization", 1)]),
                    label="Tallies")


def test_word_counts_combine_across_bundles():
    with local_test_pipeline() as pipeline:
        counts = (pipeline | beam.Create(["a dog", "a cat", "a dog runs"], reshuffle=True)
                  | beam.CombineGlobally(CountWords()))
        assert_that(counts, equal_to([{"a": 3, "dog": 2, "cat": 1, "runs": 1}]))


def test_bad_flags_fail_fast(sample_dataset, tmp_path):
    with pytest.raises(SystemExit):
        extract_job.run(_argv(sample_dataset, str(tmp_path / "o"), "--image_size", "zero"))
    with pytest.raises(ValueError, match="too small for xception"):
        extract_job.run(_argv(sample_dataset, str(tmp_path / "o"), "--image_size", "32"))
    with pytest.raises(ValueError, match="--weights .*no such file"):
        extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "o"),
                              "--weights", str(tmp_path / "nope.h5")])
    with pytest.raises(SystemExit) as stopped:  # as argparse stops on any bad flag: usage, the message, status 2
        extract_job.run(_argv(sample_dataset, str(tmp_path / "o"), "--no_such_flag=1"))
    assert stopped.value.code == 2


def test_an_expected_failure_is_one_line_and_exit_status_2(sample_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        extract_job.main(_argv(sample_dataset, str(tmp_path / "o"), "--no_such_flag=1"))
    assert stopped.value.code == 2
    flag_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag_error.startswith("imcap-extract: error: unrecognized flag --no_such_flag")
    assert extract_job.main(["--dataset_dir", str(tmp_path / "nothing"), "--output_dir", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1 and not any("Traceback" in line for line in errors)


def test_refuses_to_mix_with_an_earlier_run(extracted, sample_dataset):
    with pytest.raises(ValueError, match="already holds the output of a run.*--overwrite"):
        extract_job.run(_argv(sample_dataset, extracted))


def test_kaggle_layout_gives_the_same_captions(sample_dataset, extracted, tmp_path):
    """Images/ + captions.txt (image,caption CSV, commas inside captions) instead of the token file."""
    root = tmp_path / "kaggle"
    os.makedirs(root)
    os.symlink(os.path.join(sample_dataset, "Flicker8k_Dataset"), root / "Images")
    lines = ["image,caption"]
    for name, raw in _token_captions(sample_dataset).items():
        lines.extend(f"{name},{caption.replace(' and ', ' , and ')}" for caption in raw)
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text_dir = os.path.join(sample_dataset, "Flickr8k_text")
    for split in ("train", "dev"):
        os.symlink(os.path.join(text_dir, f"Flickr_8k.{split}Images.txt"), root / f"Flickr_8k.{split}Images.txt")
    output_dir = str(tmp_path / "out")
    extract_job.run(_argv(str(root), output_dir), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    for split in ("train", "dev"):
        kaggle, token = records.read_records(output_dir, split), records.read_records(extracted, split)
        assert [r[records.IMAGE_ID] for r in kaggle] == [r[records.IMAGE_ID] for r in token]
        for mine, theirs in zip(kaggle, token):
            assert sorted(mine[records.CAPTIONS]) == sorted(theirs[records.CAPTIONS])
    assert not records.read_records(output_dir, "test")


def test_overwrite_deletes_only_its_own_files_and_only_once_every_check_passed(extracted, sample_dataset, tmp_path):
    output_dir = tmp_path / "out"
    shutil.copytree(extracted, output_dir)
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "other-00000-of-00001.tfrecord").write_bytes(b"not a split of this dataset")
    before = sorted(os.listdir(output_dir))
    with pytest.raises(ValueError, match="--weights .*no such file"):
        extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", str(output_dir), "--overwrite",
                              "--weights", str(tmp_path / "missing.weights.h5")])
    assert sorted(os.listdir(output_dir)) == before  # a failed check deletes nothing
    args, _ = extract_job.parse_args(_argv(sample_dataset, str(output_dir), "--overwrite"))
    extract_job.prepare(args, models=FAKE_MODELS)
    assert sorted(os.listdir(output_dir)) == ["notes.txt", "other-00000-of-00001.tfrecord"]


def test_overwrite_also_removes_what_the_sinks_of_a_killed_run_left(sample_dataset, tmp_path):
    output_dir = tmp_path / "out"
    uuid = "8676808cec9311f1854f02fc00000001"
    (output_dir / f"beam-temp-train-{uuid}").mkdir(parents=True)
    (output_dir / f"beam-temp-train-{uuid}" / "c9c48d7e.train.tfrecord").write_bytes(b"half a shard")
    (output_dir / f"beam-temp-errors.parquet-{uuid}").mkdir()  # killed before it wrote anything
    (output_dir / f"beam-temp-other-{uuid}").mkdir()  # not a split of this dataset: not this job's
    (output_dir / f"beam-temp-other-{uuid}" / "x.tfrecord").write_bytes(b"someone else's")
    args, _ = extract_job.parse_args(_argv(sample_dataset, str(output_dir)))
    with pytest.raises(ValueError, match="already holds the output of a run .*--overwrite"):
        extract_job.prepare(args, models=FAKE_MODELS)
    args, _ = extract_job.parse_args(_argv(sample_dataset, str(output_dir), "--overwrite"))
    extract_job.prepare(args, models=FAKE_MODELS)
    assert sorted(os.listdir(output_dir)) == [f"beam-temp-other-{uuid}"]
    assert os.listdir(output_dir / f"beam-temp-other-{uuid}") == ["x.tfrecord"]
