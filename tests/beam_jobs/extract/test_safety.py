"""What a dataset's files may name and say: paths stay inside the dataset's folder (absolute ones only in tables and
split lists), text every later step can encode, captions of a sensible length made of printable words."""
import json
import os

import pyarrow.parquet as pq
import pytest

from beam_jobs.extract import job as extract_job
from beam_jobs.extract.datasets import load_datasets
from beam_jobs.extract.layouts import DatasetError
from schemas import captions, fileio, records
from schemas.records import MetadataKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary
from tests.conftest import TEST_IMAGE_SIZE, local_test_pipeline
from tests.support.fakes import FAKE_MODELS


def _dataset(root, files: dict, images=("a.jpg", "b.jpg"), image_bytes=b""):
    os.makedirs(root / "Images", exist_ok=True)
    for name in images:
        (root / "Images" / name).write_bytes(image_bytes)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content, encoding="utf-8")
    return str(root)


SPLIT_LIST = {"Flickr_8k.trainImages.txt": "a.jpg\n"}


@pytest.mark.parametrize("files, message", [
    ({"Flickr8k.token.txt": "../../secret/photo.jpg#0\tA dog .\n", **SPLIT_LIST},
     r"Flickr8k.token.txt:1: '../../secret/photo.jpg' leads out of the images directory"),
    ({"Flickr8k.token.txt": "a.jpg#0\tA dog .\nImages/../../x.jpg#0\tA cat .\n", **SPLIT_LIST},
     r"Flickr8k.token.txt:2: 'Images/../../x.jpg' leads out"),
    ({"Flickr8k.token.txt": "/etc/passwd#0\tA dog .\n", **SPLIT_LIST},
     r"Flickr8k.token.txt:1: '/etc/passwd' is an absolute path or URI, but this layout names the images of its own"),
    ({"Flickr8k.token.txt": "a.jpg#0\tA dog .\n", "Flickr_8k.trainImages.txt": "a.jpg\n../../secret.jpg\n"},
     r"Flickr_8k.trainImages.txt:2: '../../secret.jpg' leads out of the images directory"),
    ({"annotations/captions_train2017.json": json.dumps({"images": [{"id": 1, "file_name": "/etc/passwd"}],
                                                         "annotations": [{"image_id": 1, "caption": "x"}]})},
     r"captions_train2017.json: images\[0\]: '/etc/passwd' is an absolute path"),
    ({"dataset_flickr8k.json": json.dumps({"images": [{"filename": "passwd", "filepath": "/etc", "split": "train",
                                                       "sentences": [{"raw": "x"}]}]})},
     r"dataset_flickr8k.json: images\[0\].filepath: '/etc' is absolute"),
])
def test_dataset_paths_stay_inside_the_dataset(files, message, tmp_path):
    with pytest.raises(DatasetError, match=message):
        load_datasets([_dataset(tmp_path / "ds", files)])


def test_absolute_paths_are_allowed_in_tables_and_their_split_lists(tmp_path):
    outside = tmp_path / "elsewhere" / "c.jpg"
    outside.parent.mkdir()
    outside.write_bytes(b"")
    root = _dataset(tmp_path / "ds", {"captions.csv": f"image,caption\na.jpg,A dog .\n{outside},A cat .\n",
                                      "Flickr_8k.trainImages.txt": f"a.jpg\n{outside}\n"})
    (loaded,) = load_datasets([root])
    assert loaded.summary.split_sizes == {"train": 2}


@pytest.mark.parametrize("files, message", [
    ({"captions.jsonl": '{"image": "a.jpg", "caption": "A dog .", "split": "train"}\n'
                        '{"image": "b.jpg", "caption": "A \\ud800 cat", "split": "train"}\n'},
     r"captions.jsonl:2: the caption: the text holds a lone surrogate \(\\ud800, at character 3\)"),
    ({"annotations/captions_train2017.json": json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                         "annotations": [{"image_id": 1, "caption": "a \udfff"}]})},
     r"captions_train2017.json: annotations\[0\].caption: the text holds a lone surrogate"),
    ({"dataset_flickr8k.json": json.dumps({"images": [{"filename": "a\ud800.jpg", "split": "train",
                                                       "sentences": [{"raw": "x"}]}]})},
     r"dataset_flickr8k.json: images\[0\].filename: the text holds a lone surrogate"),
])
def test_lone_surrogates_are_a_launch_error_with_the_position(files, message, tmp_path):
    with pytest.raises(DatasetError, match=message):
        load_datasets([_dataset(tmp_path / "ds", files)])


def test_the_extract_job_stops_at_launch_on_a_lone_surrogate(tmp_path):
    """Before: the launcher's checks passed and the job crashed on a worker with a traceback, leaving beam-temp-*
    behind. Now: exit status 2 with one line, before any worker starts, and nothing written."""
    root = _dataset(tmp_path / "ds", {"captions.jsonl": '{"image": "a.jpg", "caption": "A \\ud800 cat", '
                                                        '"split": "train"}\n'})
    out = tmp_path / "out"
    status = extract_job.main(["--dataset_dir", root, "--output_dir", str(out), "--weights", "none",
                                    "--inference_backend", "keras"], models=FAKE_MODELS, tensorflow=False)
    assert status == 2
    assert not out.exists() or not os.listdir(out)


def test_control_and_invisible_characters_never_make_tokens():
    assert captions.caption_tokens("A d\x00og \u202eevil ran\u200b away\u00a0now") == \
        ["a", "d", "og", "evil", "ran", "away", "now"]
    assert all(token.isprintable() for token in captions.caption_tokens("".join(map(chr, range(0, 0x3000)))))


def test_overlong_captions_are_left_out_counted_and_never_set_max_length(sample_dataset, tmp_path):
    """One caption of 250,000 words made max_length 250,002 in metadata.json and in every bundle trained on it."""
    from PIL import Image
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    names = sorted(os.listdir(source))[:3]
    root = tmp_path / "ds"
    (root / "Images").mkdir(parents=True)
    for name in names:
        Image.open(os.path.join(source, name)).save(root / "Images" / name)
    rows = [(names[0], "A dog runs on the grass ."),
            (names[0], " ".join(["dog"] * 250_000)),  # 1 MB
            (names[1], "A d\x00og \u202eevil sits ."),
            (names[2], " ".join(["bird"] * 51))]  # its only caption is too long: the image has none
    (root / "captions.jsonl").write_text("".join(json.dumps({"image": image, "caption": caption, "split": "train"})
                                                 + "\n" for image, caption in rows), encoding="utf-8")
    out = tmp_path / "out"
    extract_job.run(["--dataset_dir", str(root), "--output_dir", str(out), "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1",
                          "--inference_backend", "keras"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    metadata = fileio.read_json(os.path.join(out, records.METADATA_FILE))
    assert metadata[MetadataKeys.CAPTIONS_TOO_LONG] == 2
    assert metadata[MetadataKeys.MAX_CAPTION_WORDS] == captions.DEFAULT_MAX_CAPTION_WORDS
    assert metadata[MetadataKeys.MAX_LENGTH] == 2 + len("a dog runs on the grass".split())
    errors = pq.read_table(os.path.join(out, records.ERRORS_FILE)).to_pylist()
    assert [(row["error"], "longer than 50 words" in row["message"]) for row in errors] == [("no_captions", True)]
    tokens = Vocabulary.load(os.path.join(out, VOCAB_FILE)).tokens
    assert all(token.isprintable() for token in tokens) and "evil" in tokens and "d\x00og" not in tokens


def test_a_csv_cell_too_long_to_be_a_caption_is_named_as_such(tmp_path):
    root = _dataset(tmp_path / "ds", {"captions.csv": "image,caption,split\na.jpg," + "x" * 200_000 + ",train\n"})
    with pytest.raises(DatasetError, match=r"captions.csv:2: a field of more than 131,072 characters"):
        load_datasets([root])
