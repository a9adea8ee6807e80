"""Reading the Flickr8k layout: both caption formats, custom layouts, and clear errors for malformed files.
(COCO, Karpathy and tables: tests/beam_jobs/extract/test_layouts.py.)"""
import os

import pytest

from beam_jobs.extract import discovery, layouts
from beam_jobs.extract.layouts import CSV_FORMAT, TOKEN_FORMAT, DatasetError


def _csv_rows(text):
    return [(entry.key, entry.index, entry.caption) for entry in layouts.csv_entries("captions.txt", text)]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


def test_token_line():
    parsed = layouts.parse_token_line("1000_ab.jpg#3\tA dog runs .\n")
    assert (parsed.key, parsed.index, parsed.caption) == ("1000_ab.jpg", 3, "A dog runs .")


def test_token_line_keeps_stray_image_ids():
    # Real Flickr8k has "2258277193_586949ec62.jpg.1#0": the id is kept as is (it names no image file).
    parsed = layouts.parse_token_line("2258277193_586949ec62.jpg.1#0\tA man .")
    assert parsed.key == "2258277193_586949ec62.jpg.1"


def test_csv_line_with_unquoted_and_quoted_commas():
    # Kaggle's file (header exactly image,caption) leaves commas inside captions unquoted.
    assert _csv_rows('image,caption\na.jpg,A dog , a cat and a bird .\nb.jpg,"A dog, running"\n') == [
        ("a.jpg", 2, "A dog , a cat and a bird ."), ("b.jpg", 3, "A dog, running")]


def test_blank_lines_are_skipped():
    assert layouts.parse_token_line("   \r\n") is None
    assert _csv_rows("image,caption\n\n , \na.jpg,x\n") == [("a.jpg", 4, "x")]


@pytest.mark.parametrize("line, problem", [
    ("a.jpg#0 A dog", "no TAB"),
    ("a.jpg\tA dog", "is not '<image>#<n>'"),
    ("a.jpg#x\tA dog", "does not end in '#<number>'"),
    ("a.jpg#0\t   ", "empty caption"),
])
def test_malformed_token_lines(line, problem):
    with pytest.raises(ValueError, match=problem):
        layouts.parse_token_line(line)


def _layout(tmp_path, captions_text, captions_name="Flickr8k.token.txt", splits=None):
    root = tmp_path / "ds"
    os.makedirs(root / "Images", exist_ok=True)
    _write(root / "Images" / "a.jpg", "")  # tables: the images directory is where the first images are
    _write(root / captions_name, captions_text)
    for split, names in (splits or {"train": ["a.jpg"]}).items():
        _write(root / discovery.SPLIT_FILES[split], "".join(f"{n}\n" for n in names))
    return str(root)


def test_resolves_token_layout(tmp_path):
    root = _layout(tmp_path, "a.jpg#0\tA dog .\n", splits={"train": ["a.jpg"], "dev": []})
    layout = discovery.resolve_layout(root)
    assert layout.images_dir.endswith("Images")
    assert layout.caption_format == TOKEN_FORMAT
    assert list(layout.split_files) == ["train", "dev"]
    summary = discovery.validate_layout(layout)
    assert (summary.caption_lines, summary.captioned_images, summary.split_sizes) == (1, 1, {"train": 1, "dev": 0})


def test_resolves_kaggle_csv_layout(tmp_path):
    root = _layout(tmp_path, "image,caption\na.jpg,A dog .\na.jpg,\"A dog, again\"\n", captions_name="captions.txt")
    layout = discovery.resolve_layout(root)
    assert layout.caption_format == CSV_FORMAT
    assert discovery.validate_layout(layout).caption_lines == 2


def test_malformed_captions_file_names_file_and_line(tmp_path):
    root = _layout(tmp_path, "a.jpg#0\tA dog .\na.jpg#1\tA dog .\na.jpg#2 no tab here\n")
    layout = discovery.resolve_layout(root)
    with pytest.raises(DatasetError, match=r"Flickr8k.token.txt:3: no TAB"):
        discovery.validate_layout(layout)


def test_malformed_csv_names_line(tmp_path):
    root = _layout(tmp_path, "image,caption\na.jpg,A dog .\nonly-one-field\n", captions_name="captions.txt")
    with pytest.raises(DatasetError, match=r"captions.txt:3: expected 'image,caption'"):
        discovery.validate_layout(discovery.resolve_layout(root))


def test_unrecognised_captions_format(tmp_path):
    root = _layout(tmp_path, "just some text\n")
    with pytest.raises(DatasetError, match="cannot tell the captions format"):
        discovery.resolve_layout(root)


def test_binary_captions_file(tmp_path):
    root = _layout(tmp_path, "a.jpg#0\tA dog .\n")
    with open(os.path.join(root, "Flickr8k.token.txt"), "ab") as handle:
        handle.write(b"b.jpg#0\t\xff\xfe broken\n")
    with pytest.raises(DatasetError, match=r"Flickr8k.token.txt:2: not UTF-8"):
        discovery.validate_layout(discovery.resolve_layout(root))


def test_missing_files_say_what_to_pass(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        discovery.resolve_layout(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    os.makedirs(empty / "Images")
    with pytest.raises(DatasetError, match="no captions file .* pass --captions_file"):
        discovery.resolve_layout(str(empty))
    with pytest.raises(DatasetError, match="--captions_file .*: no such file"):
        discovery.resolve_layout(str(empty), captions_file=str(tmp_path / "missing.txt"))


def test_image_in_two_splits_is_an_error(tmp_path):
    root = _layout(tmp_path, "a.jpg#0\tA dog .\n", splits={"train": ["a.jpg"], "dev": ["a.jpg"]})
    with pytest.raises(DatasetError, match="a.jpg is also in the train split"):
        discovery.validate_layout(discovery.resolve_layout(root))


def test_duplicate_in_split_list_names_line(tmp_path):
    root = _layout(tmp_path, "a.jpg#0\tA dog .\n", splits={"train": ["a.jpg", "b.jpg", "a.jpg"]})
    with pytest.raises(DatasetError, match=r"trainImages.txt:3: a.jpg is listed twice \(first on line 1\)"):
        discovery.validate_layout(discovery.resolve_layout(root))


def test_custom_layout_flags(tmp_path):
    images = tmp_path / "pics"
    os.makedirs(images)
    captions = _write(tmp_path / "caps" / "mine.txt", "x.jpg#0\tA cat .\n")
    split = _write(tmp_path / "lists" / "val.txt", "x.jpg\n")
    layout = discovery.resolve_layout(images_dir=str(images), captions_file=captions, split_files={"val": split})
    assert layout.split_files == {"val": split}
    assert discovery.validate_layout(layout).split_sizes == {"val": 1}
