"""The dataset layouts the extract job reads (Flickr8k token and Kaggle CSV, COCO, Karpathy, CSV and JSON Lines
tables): the same images and captions in each layout give identical records; a malformed file of each layout is
refused with its file and position; several datasets combine into one set of records."""
import csv
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.extract import job as extract_job
from beam_jobs.extract.datasets import load_datasets
from beam_jobs.extract.layouts import DatasetError
from schemas import fileio, records
from schemas.records import DatasetKeys, MetadataKeys, SplitKeys
from tests.conftest import FLICKR8K_DIR, TEST_IMAGE_SIZE, local_test_pipeline
from tests.support.fakes import FAKE_MODELS

LAYOUTS = ("token", "kaggle", "coco", "karpathy", "csv", "jsonl")


def _read_flickr(directory, train=4, test=2):
    """(images dir, {name: captions in #n order}, {split: names}) of a few images of a Flickr8k-layout dataset:
    ``train`` of its train split and ``test`` of its dev split (called test here: every layout has that name)."""
    text_dir = os.path.join(directory, "Flickr8k_text")
    images_dir = os.path.join(directory, "Flicker8k_Dataset")

    def names(split):
        with open(os.path.join(text_dir, f"Flickr_8k.{split}Images.txt"), encoding="utf-8") as handle:
            return sorted(line.strip() for line in handle if line.strip())

    splits = {"train": names("train")[:train], "test": names("dev")[:test]}
    wanted = {name for group in splits.values() for name in group}
    captions = {}
    with open(os.path.join(text_dir, "Flickr8k.token.txt"), encoding="utf-8") as handle:
        for line in handle:
            caption_id, caption = line.rstrip("\n").split("\t")
            name, index = caption_id.rsplit("#", 1)
            if name in wanted:
                captions.setdefault(name, {})[int(index)] = caption
    return images_dir, {name: [by_index[i] for i in sorted(by_index)] for name, by_index in captions.items()}, splits


def _link_images(images_dir, names, target):
    os.makedirs(target, exist_ok=True)
    for name in names:
        os.symlink(os.path.join(images_dir, name), os.path.join(target, name))


def _split_of(splits):
    return {name: split for split, names in splits.items() for name in names}


def write_layout(kind, source, root):
    """The images and captions of ``source`` (`_read_flickr`) written in layout ``kind`` under ``root``."""
    images_dir, captions, splits = source
    split_of = _split_of(splits)
    names = sorted(split_of)
    os.makedirs(root)

    def split_lists():
        for split, group in splits.items():
            with open(os.path.join(root, f"Flickr_8k.{split}Images.txt"), "w", encoding="utf-8") as handle:
                handle.write("".join(f"{name}\n" for name in group))

    if kind == "token":
        _link_images(images_dir, names, os.path.join(root, "Flicker8k_Dataset"))
        with open(os.path.join(root, "Flickr8k.token.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{name}#{i}\t{caption}\n" for name in names for i, caption in enumerate(captions[name]))
        split_lists()
    elif kind == "kaggle":
        _link_images(images_dir, names, os.path.join(root, "Images"))
        with open(os.path.join(root, "captions.txt"), "w", encoding="utf-8") as handle:
            handle.write("image,caption\n")  # Kaggle leaves commas in captions unquoted
            handle.writelines(f"{name},{caption}\n" for name in names for caption in captions[name])
        split_lists()
    elif kind == "coco":
        os.makedirs(os.path.join(root, "annotations"))
        for split, group in splits.items():
            _link_images(images_dir, group, os.path.join(root, f"{split}2014"))
            image_ids = {name: 1000 + position for position, name in enumerate(group)}
            annotations = [{"id": len(group) * i + j, "image_id": image_ids[name], "caption": captions[name][i]}
                           for i in range(5) for j, name in enumerate(group) if i < len(captions[name])]
            with open(os.path.join(root, "annotations", f"captions_{split}2014.json"), "w") as handle:
                json.dump({"info": {}, "images": [{"id": image_ids[name], "file_name": name, "width": 1, "height": 1}
                                                  for name in group], "annotations": annotations}, handle)
    elif kind == "karpathy":
        _link_images(images_dir, names, os.path.join(root, "Flicker8k_Dataset"))
        entries = [{"filename": name, "imgid": position,
                    # one train image is restval, which goes to train by default
                    "split": "restval" if name == splits["train"][0] else split_of[name],
                    "sentences": [{"raw": caption, "tokens": caption.lower().split()} for caption in captions[name]]}
                   for position, name in enumerate(names)]
        with open(os.path.join(root, "dataset_flickr8k.json"), "w") as handle:
            json.dump({"dataset": "flickr8k", "images": entries}, handle)
    elif kind == "csv":
        _link_images(images_dir, names, os.path.join(root, "Images"))
        with open(os.path.join(root, "captions.csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["split", "image_path", "caption"])
            writer.writerows([split_of[name], name, caption] for name in names for caption in captions[name])
    elif kind == "jsonl":
        _link_images(images_dir, names, os.path.join(root, "images"))
        with open(os.path.join(root, "captions.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"image": name, "caption": caption, "split": split_of[name]}) + "\n"
                              for name in reversed(names) for caption in captions[name])
    else:
        raise ValueError(kind)
    return str(root)


def _extract(dataset_dirs, output_dir, *extra):
    argv = ["--output_dir", str(output_dir), "--weights", "none", "--image_size", str(TEST_IMAGE_SIZE),
            "--min_word_count", "1", "--inference_backend", "keras", *extra]
    for directory in dataset_dirs:
        argv += ["--dataset_dir", directory]
    extract_job.run(argv, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    return fileio.read_json(os.path.join(output_dir, records.METADATA_FILE))


def _records(output_dir, split):
    return [(r[records.IMAGE_ID], r[records.SPLIT], list(r[records.CAPTIONS]),
             [list(ids) for ids in r[records.CAPTION_IDS]], r[records.IMAGE_FEATURES])
            for r in records.read_records(output_dir, split)]


def _assert_same_records(mine, theirs):
    assert [r[:4] for r in mine] == [r[:4] for r in theirs]
    for first, second in zip(mine, theirs):
        np.testing.assert_array_equal(first[4], second[4])


@pytest.fixture(scope="module", params=["sample", "flickr8k"])
def flickr_source(request, sample_dataset):
    if request.param == "flickr8k":
        if not os.path.isdir(FLICKR8K_DIR):
            pytest.skip("../shared/datasets/flickr8k is not present on this machine")
        return _read_flickr(FLICKR8K_DIR)
    return _read_flickr(sample_dataset)


@pytest.mark.integration
def test_every_layout_gives_identical_records(flickr_source, tmp_path):
    outputs = {}
    for kind in LAYOUTS:
        directory = write_layout(kind, flickr_source, tmp_path / kind)
        metadata = _extract([directory], tmp_path / f"out-{kind}")
        assert sorted(metadata[MetadataKeys.SPLITS]) == ["test", "train"], kind
        assert metadata[MetadataKeys.IMAGES_FAILED] == 0, kind
        outputs[kind] = tmp_path / f"out-{kind}"
    _, captions, splits = flickr_source
    reference = outputs["token"]
    for split, names in splits.items():
        expected = _records(reference, split)
        assert [r[0] for r in expected] == sorted(names)
        assert sum(len(r[2]) for r in expected) == sum(len(captions[name]) for name in names)
        for kind in LAYOUTS[1:]:
            _assert_same_records(_records(outputs[kind], split), expected)
    vocabulary = (reference / "vocab.txt").read_text()
    for kind in LAYOUTS[1:]:
        assert (outputs[kind] / "vocab.txt").read_text() == vocabulary, kind
        assert fileio.read_json(str(outputs[kind] / records.METADATA_FILE))[MetadataKeys.DATASETS][kind][
            DatasetKeys.LAYOUT] == {"kaggle": "table-csv", "csv": "table-csv", "jsonl": "table-jsonl"}.get(kind, kind)


def test_karpathy_restval_can_be_its_own_split(sample_dataset, tmp_path):
    source = _read_flickr(sample_dataset)
    directory = write_layout("karpathy", source, tmp_path / "karpathy")
    metadata = _extract([directory], tmp_path / "out", "--karpathy_restval", "restval")
    assert {split: counts[SplitKeys.IMAGES] for split, counts in metadata[MetadataKeys.SPLITS].items()} == {
        "train": 3, "restval": 1, "test": 2}


# -- malformed files --------------------------------------------------------------------------------------------
def _break(path, old, new):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert old in text, old
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(old, new, 1))


def _first_caption_line(path, number=2):
    with open(path, encoding="utf-8") as handle:
        return handle.read().split("\n")[number - 1]


MALFORMED = {
    # kind: (file, how to break it, the error's file:position and problem)
    "token": ("Flickr8k.token.txt", lambda p: _break(p, "#1\t", "#1 "), r"Flickr8k.token.txt:2: no TAB"),
    "kaggle": ("captions.txt", lambda p: _break(p, _first_caption_line(p, 3), "just-a-name.jpg"),
               r"captions.txt:3: expected 'image,caption', got 1 field"),
    "coco": ("annotations/captions_train2014.json", lambda p: _break(p, '"image_id": 1001', '"image_id": 99'),
             r"captions_train2014.json: annotations\[\d+\]: image_id 99 is not in 'images'"),
    "karpathy": ("dataset_flickr8k.json", lambda p: _break(p, '"split": "test"', '"split": "holdout"'),
                 r"dataset_flickr8k.json: images\[\d+\].split: 'holdout' is not one of train, restval, val, test"),
    "csv": ("captions.csv", lambda p: _break(p, _first_caption_line(p, 4),
                                             _first_caption_line(p, 4) + ",an extra field"),
            r"captions.csv:4: 4 fields, but the header has 3 .*double quotes"),
    "jsonl": ("captions.jsonl", lambda p: _break(p, _first_caption_line(p, 3), '{"image": "x.jpg", "caption": '),
              r"captions.jsonl:3:\d+: not valid JSON"),
}


@pytest.mark.parametrize("kind", LAYOUTS)
def test_a_malformed_file_names_file_and_position(kind, sample_dataset, tmp_path):
    directory = write_layout(kind, _read_flickr(sample_dataset), tmp_path / kind)
    name, damage, message = MALFORMED[kind]
    damage(os.path.join(directory, name))
    with pytest.raises(DatasetError, match=message):
        load_datasets([directory])
    # the job fails before any worker starts, and writes nothing
    with pytest.raises(DatasetError, match=message):
        _extract([directory], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / records.METADATA_FILE)


@pytest.mark.parametrize("content, message", [
    ("image,caption,split\na.jpg,A dog .,train\na.jpg,A cat .,test\n",
     r"captions.csv:3: a.jpg is also in the train split \(.*captions.csv:2\)"),
    ("image,caption,split\na.jpg,A dog .,dev set\n", r"captions.csv:2: split name 'dev set' must be"),
    ("image,caption,split\na.jpg,,train\n", r"captions.csv:2: image 'a.jpg' has an empty caption"),
    ("picture,words\na.jpg,A dog .\n", r"captions.csv:1: no image column \(one of image, image_path"),
    ('{"image": "a.jpg", "caption": "A dog .", "split": "train"}\n[1, 2]\n',
     r"captions.jsonl:2: expected a JSON object"),
    ('{"image": "a.jpg", "caption": "A dog .", "split": "train"}\n{"image": "b.jpg", "split": "train"}\n',
     r"captions.jsonl:2: no 'caption' key"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}',
     r"captions_train2017.json: annotations\[0\]: no 'caption'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}],\n "annotations": [{"image_id": 1, "caption": "x"},]}',
     r"captions_train2017.json:2:\d+: not valid JSON"),
    ('{"images": [{"id": 1}], "annotations": []}', r"captions_train2017.json: images\[0\]: no 'file_name'"),
    ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["a"]}]}]}',
     r"dataset_flickr8k.json: images\[0\].sentences\[0\]: no 'raw'"),
    ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a"}]},'
     ' {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "b"}]}]}',
     r"dataset_flickr8k.json: images\[1\]: a.jpg is also images\[0\]"),
])
def test_malformed_tables_and_json(content, message, tmp_path):
    name = "annotations/captions_train2017.json" if "annotations" in content else \
        "dataset_flickr8k.json" if "sentences" in content else \
        "captions.jsonl" if content.startswith("{") else "captions.csv"
    path = tmp_path / "ds" / name
    os.makedirs(path.parent)
    path.write_text(content, encoding="utf-8")
    for images in ("Images", "train2017"):
        os.makedirs(tmp_path / "ds" / images, exist_ok=True)
        (tmp_path / "ds" / images / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=message):
        load_datasets([str(tmp_path / "ds")])


def test_images_not_found_under_any_candidate_say_to_pass_images_dir(sample_dataset, tmp_path):
    directory = write_layout("csv", _read_flickr(sample_dataset), tmp_path / "csv")
    shutil.rmtree(os.path.join(directory, "Images"))
    with pytest.raises(DatasetError, match=r"none of the first 6 images .*captions.csv names .* pass --images_dir"):
        load_datasets([directory])


# -- several datasets -------------------------------------------------------------------------------------------
def _copy_image(images_dir, name, target_dir, new_name):
    os.makedirs(target_dir, exist_ok=True)
    shutil.copyfile(os.path.join(images_dir, name), os.path.join(target_dir, new_name))


@pytest.mark.integration
def test_several_datasets_combine_and_duplicates_are_settled_by_split(sample_dataset, tmp_path):
    """flickr (token layout: train t0-t3, test e0-e1) and coco (COCO layout, its own file names), with copies of
    flickr's photos in coco: a train copy of a train image is merged into one record with both datasets' captions;
    a train copy of an evaluated image is left out of train (either way round); copies in two evaluation splits
    stay in each with their own captions. Every image is accounted for in metadata.json."""
    images_dir, captions, splits = source = _read_flickr(sample_dataset, train=4, test=2)
    flickr = write_layout("token", source, tmp_path / "flickr")
    (t0, t1, t2, t3), (e0, e1) = splits["train"], splits["test"]
    _, extra_captions, extra_splits = _read_flickr(sample_dataset, train=6, test=0)
    own = extra_splits["train"][4:6]  # two photos only coco has
    coco = tmp_path / "coco"
    os.makedirs(coco / "annotations")
    coco_images = {"train": [(e0, "c1.jpg", ["a copy of a flickr test image ."]),
                             (own[0], "c2.jpg", extra_captions[own[0]][:2]),
                             (t2, "c5.jpg", [captions[t2][0], "another caption of a flickr train image ."])],
                   "val": [(t1, "c3.jpg", ["a copy of a flickr train image .", captions[t1][0]]),
                           (own[1], "c4.jpg", extra_captions[own[1]][:1]),
                           (e1, "c6.jpg", ["a copy of a flickr test image in coco val ."])]}
    for split, group in coco_images.items():
        annotations, images = [], []
        for position, (original, new_name, texts) in enumerate(group):
            _copy_image(images_dir, original, coco / f"{split}2017", new_name)
            images.append({"id": position, "file_name": new_name})
            annotations.extend({"image_id": position, "caption": text} for text in texts)
        (coco / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations}))

    output = tmp_path / "out"
    metadata = _extract([f"flickr={flickr}", str(coco)], output)
    split_counts = {split: (c[SplitKeys.IMAGES], c[SplitKeys.CAPTIONS])
                    for split, c in metadata[MetadataKeys.SPLITS].items()}
    assert sorted(split_counts) == ["coco/val", "flickr/test", "train"]
    found = {split: {r[0]: r[2] for r in _records(output, split)} for split in split_counts}
    assert sorted(found["train"]) == ["coco/c2.jpg", f"flickr/{t0}", f"flickr/{t2}", f"flickr/{t3}"]
    assert sorted(found["flickr/test"]) == sorted([f"flickr/{e0}", f"flickr/{e1}"])
    assert sorted(found["coco/val"]) == ["coco/c3.jpg", "coco/c4.jpg", "coco/c6.jpg"]
    # train + train: one record, flickr's captions then coco's new one (the one flickr has is not repeated)
    assert found["train"][f"flickr/{t2}"] == _clean(captions[t2]) + ["another caption of a flickr train image"]
    # evaluation splits keep their own images and references
    assert found["flickr/test"][f"flickr/{e0}"] == _clean(captions[e0])
    assert found["flickr/test"][f"flickr/{e1}"] == _clean(captions[e1])
    assert found["coco/val"]["coco/c3.jpg"] == _clean(["a copy of a flickr train image .", captions[t1][0]])
    assert found["coco/val"]["coco/c6.jpg"] == ["a copy of a flickr test image in coco val"]
    # every image named in a split is accounted for, and the per-dataset counts add up to the records
    sources = metadata[MetadataKeys.DATASETS]
    assert sorted(sources, key=lambda name: sources[name][DatasetKeys.ORDER]) == ["flickr", "coco"]
    counts = {name: (s[DatasetKeys.IMAGES], s[DatasetKeys.DUPLICATES], s[DatasetKeys.LEFT_OUT_OF_TRAIN])
              for name, s in sources.items()}
    assert counts == {"flickr": (5, 0, 1), "coco": (5, 1, 1)}
    assert metadata[MetadataKeys.TRAIN_DUPLICATES_LEFT_OUT] == 2 and metadata[MetadataKeys.IMAGES_FAILED] == 0
    assert sum(s[DatasetKeys.IMAGES] + s[DatasetKeys.LEFT_OUT_OF_TRAIN] for s in sources.values()) == 6 + 6
    total_images = sum(images for images, _ in split_counts.values())
    assert total_images == 9 == sum(s[DatasetKeys.IMAGES] - s[DatasetKeys.DUPLICATES] for s in sources.values())
    total_captions = sum(c for _, c in split_counts.values())
    assert total_captions == sum(s[DatasetKeys.CAPTIONS] for s in sources.values()) == \
        sum(len(texts) for split in found.values() for texts in split.values())
    assert sources["coco"][DatasetKeys.CAPTIONS] == 2 + 1 + 2 + 1 + 1
    # the vocabulary is built from the one train split, which has words of both datasets
    vocabulary = set((output / "vocab.txt").read_text().split())
    assert {"another", "caption", "flickr"} <= vocabulary
    assert "copy" not in vocabulary  # only in evaluation splits and left-out train copies


def _clean(texts):
    from schemas.captions import normalize_caption
    return [normalize_caption(text) for text in texts]


def test_several_datasets_need_distinct_names_and_their_own_files(sample_dataset, tmp_path):
    source = _read_flickr(sample_dataset)
    first = write_layout("token", source, tmp_path / "a" / "data")
    second = write_layout("csv", source, tmp_path / "b" / "data")
    with pytest.raises(DatasetError, match="two datasets are named data: name them"):
        load_datasets([first, second])
    with pytest.raises(DatasetError, match="describe one dataset"):
        load_datasets([f"one={first}", f"two={second}"], images_dir=first)
    loaded = load_datasets([f"one={first}", f"two={second}"])
    assert [(d.name, d.split_name("train"), d.split_name("test"), d.image_id("x.jpg")) for d in loaded] == [
        ("one", "train", "one/test", "one/x.jpg"), ("two", "train", "two/test", "two/x.jpg")]


# -- evaluation per dataset -------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_bundle_is_evaluated_on_each_datasets_split_side_by_side(sample_dataset, sample_features, sample_bundle,
                                                                   tmp_path, capsys):
    """Records of two datasets (real random-init Xception features, as the bundle's): trainer.evaluate scores the
    bundle on one split of each, side by side; trainer.task watches the first dataset's dev split."""
    from beam_jobs.tools.sample_dataset import write_sample_dataset
    from trainer import evaluate, task
    other = str(tmp_path / "other")
    write_sample_dataset(other, num_images=6, image_size=80, seed=11)
    output = tmp_path / "combined"
    extract_job.run(["--dataset_dir", f"shapes={sample_dataset}", "--dataset_dir", f"more={other}",
                          "--output_dir", str(output), "--weights", "none", "--image_size", str(TEST_IMAGE_SIZE),
                          "--min_word_count", "1", "--inference_backend", "keras"],
                         test_pipeline=local_test_pipeline())
    metadata = fileio.read_json(str(output / records.METADATA_FILE))
    assert records.default_eval_split(metadata) == "shapes/dev"
    assert os.path.exists(output / "shapes.dev-00000-of-00001.tfrecord")
    capsys.readouterr()
    assert evaluate.main(["--data_dir", str(output), "--model_dir", sample_bundle, "--split", "shapes/test",
                          "--split", "more/test", "--beam_width", "1"]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert list(results) == ["shapes/test", "more/test"]
    for split, result in results.items():
        assert result["split"] == split
        assert result["images"] == metadata[MetadataKeys.SPLITS][split][SplitKeys.IMAGES] > 0
        assert 0 <= result["bleu_4"] <= 1 and result["cider_d"] >= 0 and result["no_repeat_ngram_size"] == 2
        assert os.path.exists(os.path.join(sample_bundle, f"eval_{split.replace('/', '.')}_beam1.json"))
    table = [line.split() for line in out.err.splitlines() if line.startswith(("split", "shapes/", "more/"))]
    assert [row[0] for row in table] == ["split", "shapes/test", "more/test"]
    assert float(table[1][5]) == pytest.approx(results["shapes/test"]["bleu_4"], abs=1e-4)
    with pytest.raises(ValueError, match="split 'coco/val' is not in the extracted data"):
        evaluate.evaluate(str(output), sample_bundle, "coco/val")
    # in-domain and out-of-domain: the bundle's own records and the combined ones, each split where it is
    assert evaluate.main(["--data_dir", sample_features, "--data_dir", str(output), "--model_dir", sample_bundle,
                          "--split", "dev", "--split", "more/test", "--beam_width", "1"]) == 0
    both = json.loads(capsys.readouterr().out)
    own = os.path.basename(sample_features)
    assert list(both) == [f"{own}:dev", "combined:more/test"]
    assert both["combined:more/test"]["cider_d"] == pytest.approx(results["more/test"]["cider_d"])
    assert both[f"{own}:dev"]["bleu_4"] == pytest.approx(
        evaluate.evaluate(sample_features, sample_bundle, "dev", beam_width=1)["bleu_4"])
    assert evaluate.main(["--data_dir", sample_features, "--data_dir", str(output), "--model_dir", sample_bundle,
                          "--split", "coco/val"]) == 2
    assert "no --data_dir holds a coco/val split" in capsys.readouterr().err
    summary = task.train(task.parse_args(["--data_dir", str(output), "--model_dir", str(tmp_path / "model"),
                                          "--epochs", "1", "--units", "8", "--embedding_dim", "8", "--verbose", "0"]))
    assert summary["eval_split"] == "shapes/dev"


# -- inputs the layouts were not written for --------------------------------------------------------------------
def test_a_dataset_on_an_object_store_and_names_that_look_like_globs(sample_dataset, tmp_path):
    """A dataset whose directories exist only as name prefixes (as on GCS), with '[' and '*' in its directory
    names: found, listed and read like a local one; a missing image is one error row, however many captions name
    it."""
    from tests.support import prefixfs
    prefixfs.clear()
    images_dir, captions, splits = _read_flickr(sample_dataset)
    root = "prefixfs://bucket/my [data]*"
    rows = [("split", "image", "caption")]
    for split, names in splits.items():
        for name in names:
            with open(os.path.join(images_dir, name), "rb") as handle:
                prefixfs.put(f"{root}/Images/{name}", handle.read())
            rows.extend((split, name, caption) for caption in captions[name])
    rows.extend(("train", "gone.jpg", text) for text in ("A missing photo .", "Still missing ."))
    table = io.StringIO()
    csv.writer(table).writerows(rows)
    prefixfs.put(f"{root}/captions.csv", table.getvalue().encode("utf-8"))
    metadata = _extract([root], tmp_path / "out")
    assert {split: c[SplitKeys.IMAGES] for split, c in metadata[MetadataKeys.SPLITS].items()} == {"train": 4, "test": 2}
    assert metadata[MetadataKeys.ERRORS_BY_CLASS] == {"missing_file": 1}  # one row, not one per caption
    errors = pq.read_table(str(tmp_path / "out" / records.ERRORS_FILE)).to_pylist()
    assert [row["image_uri"] for row in errors] == [f"{root}/Images/gone.jpg"]
    assert [r[0] for r in _records(tmp_path / "out", "train")] == sorted(splits["train"])


@pytest.mark.parametrize("content, message", [
    ('image,caption,split\na.jpg,"A dog that never ends,train\nb.jpg,A cat .,train\nc.jpg,"A bird",train\n',
     r"captions.csv:2: a quote opened on this line is closed only on line 4"),
    ("image,caption,split\n../outside.jpg,A dog .,train\n", r"captions.csv:2: '../outside.jpg' leads out of"),
    ('{"image": "a.jpg", "caption": "x"}\n{"image": "a.jpg", "caption": "y", "split": "test"}\n',
     r"captions.jsonl:2: a 'split' key, which the first line has not"),
    ('{"image": "a.jpg", "caption": "x", "split": 3}\n', r"captions.jsonl:1: image 'a.jpg': the split must be text"),
    ("image,caption,split\nhttps://example.com/a.jpg,A dog .,train\n", r"images under https:// .* cannot be listed"),
])
def test_hostile_tables(content, message, tmp_path):
    name = "captions.jsonl" if content.startswith("{") else "captions.csv"
    os.makedirs(tmp_path / "ds" / "Images")
    (tmp_path / "ds" / "Images" / "a.jpg").write_bytes(b"")
    (tmp_path / "ds" / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")  # for a table without a split column
    (tmp_path / "ds" / name).write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        load_datasets([str(tmp_path / "ds")])


def test_line_endings_and_byte_order_marks_do_not_matter(tmp_path):
    os.makedirs(tmp_path / "ds" / "Images")
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "ds" / "Images" / name).write_bytes(b"")
    token = "\ufeffa.jpg#0\tA dog .\r./b.jpg #0\tA cat .\r"  # old Mac line endings, a BOM, ./ and a space
    (tmp_path / "ds" / "Flickr8k.token.txt").write_text(token, encoding="utf-8")
    (tmp_path / "ds" / "Flickr_8k.trainImages.txt").write_text("a.jpg\r\nb.jpg\r\n", encoding="utf-8")
    (loaded,) = load_datasets([str(tmp_path / "ds")])
    assert (loaded.summary.caption_lines, loaded.summary.captioned_images, loaded.summary.split_sizes) == (
        2, 2, {"train": 2})


def test_ambiguous_directories_are_refused(sample_dataset, tmp_path):
    source = _read_flickr(sample_dataset)
    both = write_layout("token", source, tmp_path / "both")
    shutil.copy(os.path.join(write_layout("karpathy", source, tmp_path / "k"), "dataset_flickr8k.json"), both)
    with pytest.raises(DatasetError, match="captions in more than one layout .* pass --captions_file"):
        load_datasets([both])
    (chosen,) = load_datasets([both], captions_file=os.path.join(both, "Flickr8k.token.txt"))
    assert chosen.layout.caption_format == "token"
    coco = write_layout("coco", source, tmp_path / "coco")
    os.rename(os.path.join(coco, "annotations", "captions_test2014.json"),
              os.path.join(coco, "annotations", "captions_val2017.json"))
    with pytest.raises(DatasetError, match="different COCO releases .* keep the files of one release"):
        load_datasets([coco])


def test_a_merged_duplicate_that_cannot_be_decoded_gives_each_copy_its_error_row(sample_dataset, tmp_path):
    source = _read_flickr(sample_dataset)
    first = write_layout("token", source, tmp_path / "first")
    second = write_layout("csv", source, tmp_path / "second")
    broken = source[2]["train"][0]
    for directory, images in ((first, "Flicker8k_Dataset"), (second, "Images")):
        path = os.path.join(directory, images, broken)
        os.remove(path)  # a symlink to the shared photo: replaced by the same broken file in both
        with open(path, "wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0 this is not a JPEG any more")
    output = tmp_path / "out"
    metadata = _extract([f"a={first}", f"b={second}"], output)
    errors = pq.read_table(str(output / records.ERRORS_FILE)).to_pylist()
    assert sorted(row["image_uri"] for row in errors) == sorted(
        [os.path.join(first, "Flicker8k_Dataset", broken), os.path.join(second, "Images", broken)])
    assert {row["error"] for row in errors} == {"decode_error"}
    assert any("the same file as" in row["message"] for row in errors)
    assert metadata[MetadataKeys.IMAGES_FAILED] == 2
    sources = metadata[MetadataKeys.DATASETS]
    # every other image: one record per content, each dataset's copy counted; train holds 3 merged records
    assert metadata[MetadataKeys.SPLITS]["train"][SplitKeys.IMAGES] == 3
    assert {name: (s[DatasetKeys.IMAGES], s[DatasetKeys.DUPLICATES]) for name, s in sources.items()} == {
        "a": (5, 0), "b": (5, 3)}


def test_evaluations_without_an_evaluation_split_say_to_pass_split(sample_features, tmp_path):
    from trainer import evaluate
    metadata = fileio.read_json(os.path.join(sample_features, records.METADATA_FILE))
    metadata[MetadataKeys.SPLITS] = {split: counts for split, counts in metadata[MetadataKeys.SPLITS].items()
                                     if split in ("train", "test")}
    directories = []
    for name in ("one", "two"):
        os.makedirs(tmp_path / name)
        fileio.write_json(str(tmp_path / name / records.METADATA_FILE), metadata)
        directories.append(str(tmp_path / name))
    with pytest.raises(ValueError, match="no --data_dir holds a dev or val split .* pass --split"):
        evaluate.evaluations(directories, None)
    assert evaluate.evaluations(directories, ["test"]) == [("one:test", directories[0], "test"),
                                                          ("two:test", directories[1], "test")]


@pytest.mark.parametrize("kind", ["karpathy", "coco", "jsonl"])
def test_int8_calibration_photos_come_from_the_train_split_of_any_layout(kind, sample_dataset, tmp_path):
    import argparse

    from beam_jobs.tools import quantize
    images_dir, _, splits = source = _read_flickr(sample_dataset)
    directory = write_layout(kind, source, tmp_path / kind)
    candidates, where = quantize.calibration_candidates(argparse.Namespace(dataset_dir=directory, split="train",
                                                                           input=None))
    assert sorted(os.path.basename(path) for path in candidates) == sorted(splits["train"])  # each once
    assert all(os.path.exists(path) for path in candidates) and where == f"train split of {directory}"
    with pytest.raises(quantize.QuantizationError, match="--split dev: .* has the splits train, test"):
        quantize.calibration_candidates(argparse.Namespace(dataset_dir=directory, split="dev", input=None))
