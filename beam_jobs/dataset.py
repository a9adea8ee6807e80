"""Reading a captioned image dataset in the Flickr8k layout (and custom layouts with the same files).

As distributed, Flickr8k has::

    Flicker8k_Dataset/ (or Images/)      the photos
    Flickr8k.token.txt                   ``<image>#<n><TAB><caption>``, 5 captions per image
      or captions.txt (Kaggle)           CSV with the header ``image,caption``
    Flickr_8k.trainImages.txt            one image file name per line, per split
    Flickr_8k.devImages.txt
    Flickr_8k.testImages.txt

The text files may sit in the dataset directory or in ``Flickr8k_text/``. Any subset of the split lists may be
present; each one present is a split. `resolve_layout` finds the files (or takes them from flags) and
`validate_layout` reads the captions and split files once on the launching machine, so that a malformed file fails
before any worker starts, with the file, the line and what is wrong. Inside the pipeline the same
`parse_caption_line` reads the captions file in parallel.
"""
import csv
import dataclasses
import posixpath
from typing import Optional

from apache_beam.io.filesystems import FileSystems

IMAGE_DIR_CANDIDATES = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
TEXT_DIR_CANDIDATES = ("", "Flickr8k_text")
TOKEN_CAPTIONS = "Flickr8k.token.txt"
CSV_CAPTIONS = "captions.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}

TOKEN_FORMAT = "token"
CSV_FORMAT = "csv"
CSV_HEADER = ("image", "caption")


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file and line and what to fix."""


@dataclasses.dataclass(frozen=True)
class CaptionLine:
    image: str
    index: Optional[int]  # the #n of the token format; None for the CSV format
    caption: str


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    images_dir: str
    captions_file: str
    caption_format: str
    split_files: dict  # split name -> path, in a stable order


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What `validate_layout` found on the launching machine."""
    caption_lines: int
    captioned_images: int
    split_sizes: dict


def _join(directory: str, *names: str) -> str:
    return posixpath.join(directory, *[n for n in names if n])


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def _read_text(path: str) -> str:
    with FileSystems.open(path) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start}); "
                           "save the file as UTF-8") from None
    return text


def detect_caption_format(path: str, first_line: str) -> str:
    line = first_line.lstrip("\ufeff").strip()
    if tuple(field.strip().lower() for field in line.split(",")) == CSV_HEADER:
        return CSV_FORMAT
    if "\t" in line:
        return TOKEN_FORMAT
    raise DatasetError(
        f"{path}:1: cannot tell the captions format from the first line {line[:80]!r}. Expected either the "
        f"Flickr8k token format '<image>#<n><TAB><caption>' or a CSV with the header 'image,caption'")


def parse_caption_line(line: str, caption_format: str) -> Optional[CaptionLine]:
    """Parses one line of a captions file; None for a blank line. Raises ValueError saying what is wrong."""
    line = line.lstrip("\ufeff").rstrip("\r\n")
    if not line.strip():
        return None
    if caption_format == TOKEN_FORMAT:
        if "\t" not in line:
            raise ValueError(f"no TAB between the caption id and the caption in {line[:80]!r}; "
                             "expected '<image>#<n><TAB><caption>'")
        caption_id, caption = line.split("\t", 1)
        image, separator, index = caption_id.strip().rpartition("#")
        if not separator or not image:
            raise ValueError(f"caption id {caption_id!r} is not '<image>#<n>'")
        if not index.isdigit():
            raise ValueError(f"caption id {caption_id!r} does not end in '#<number>'")
        parsed = CaptionLine(image=image, index=int(index), caption=caption.strip())
    elif caption_format == CSV_FORMAT:
        fields = next(csv.reader([line]))
        if len(fields) < 2:
            raise ValueError(f"expected 'image,caption', got {line[:80]!r}")
        # Kaggle's file leaves commas inside captions unquoted: everything after the first field is the caption.
        parsed = CaptionLine(image=fields[0].strip(), index=None, caption=",".join(fields[1:]).strip())
        if not parsed.image:
            raise ValueError(f"empty image name in {line[:80]!r}")
    else:
        raise ValueError(f"unknown caption format {caption_format!r}")
    if not parsed.caption:
        raise ValueError(f"image {parsed.image!r} has an empty caption")
    return parsed


def _find_first(paths: list[str]) -> Optional[str]:
    return next((path for path in paths if _exists(path)), None)


def _given_or_found(flag: str, given: str | None, kind: str, candidates, not_found: str) -> str:
    """The path a flag gives (which must exist), else the first of ``candidates()`` that exists."""
    if given:
        if not _exists(given):
            raise DatasetError(f"{flag} {given}: no such {kind}")
        return given
    found = _find_first(candidates())
    if found is None:
        raise DatasetError(f"{not_found}; pass {flag}")
    return found


def resolve_layout(dataset_dir: Optional[str] = None, images_dir: Optional[str] = None,
                   captions_file: Optional[str] = None, split_files: Optional[dict] = None) -> DatasetLayout:
    """Finds the images directory, captions file and split lists; flags override what is found."""
    if not dataset_dir and not (images_dir and captions_file and split_files):
        raise DatasetError("give --dataset_dir, or all of --images_dir, --captions_file and --split_file")
    if dataset_dir and not _exists(dataset_dir):
        raise DatasetError(f"--dataset_dir {dataset_dir}: no such directory")

    images_dir = _given_or_found(
        "--images_dir", images_dir, "directory", lambda: [_join(dataset_dir, name) for name in IMAGE_DIR_CANDIDATES],
        f"no images directory in {dataset_dir} (looked for {', '.join(IMAGE_DIR_CANDIDATES)})")
    captions_file = _given_or_found(
        "--captions_file", captions_file, "file",
        lambda: [_join(dataset_dir, sub, name)
                 for name in (TOKEN_CAPTIONS, CSV_CAPTIONS) for sub in TEXT_DIR_CANDIDATES],
        f"no captions file in {dataset_dir} (looked for {TOKEN_CAPTIONS} and {CSV_CAPTIONS}, also under "
        "Flickr8k_text/)")

    if not split_files:
        split_files = {}
        for split, name in SPLIT_FILES.items():
            found = _find_first([_join(dataset_dir, sub, name) for sub in TEXT_DIR_CANDIDATES])
            if found:
                split_files[split] = found
        if not split_files:
            raise DatasetError(f"no split lists in {dataset_dir} (looked for {', '.join(SPLIT_FILES.values())}, "
                               "also under Flickr8k_text/); pass --split_file NAME=PATH")
    else:
        for split, path in split_files.items():
            if not _exists(path):
                raise DatasetError(f"--split_file {split}={path}: no such file")

    first_line = _read_text(captions_file).split("\n", 1)[0]
    if not first_line.strip():
        raise DatasetError(f"{captions_file}:1: the captions file is empty or starts with a blank line")
    caption_format = detect_caption_format(captions_file, first_line)
    return DatasetLayout(images_dir=images_dir, captions_file=captions_file, caption_format=caption_format,
                         split_files=dict(split_files))


def read_split_list(path: str) -> list[str]:
    """Image names of a split list file: one per line, blank lines ignored, no duplicates."""
    names, seen = [], {}
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        name = line.strip()
        if not name:
            continue
        if "\t" in name or "," in name:
            raise DatasetError(f"{path}:{line_number}: expected one image file name per line, got {name[:80]!r}")
        if name in seen:
            raise DatasetError(f"{path}:{line_number}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = line_number
        names.append(name)
    return names


def validate_layout(layout: DatasetLayout) -> DatasetSummary:
    """Reads the captions and split files once; raises DatasetError at the first problem, with file and line."""
    text = _read_text(layout.captions_file)
    lines = text.split("\n")
    start = 1 if layout.caption_format == CSV_FORMAT else 0
    caption_count, images = 0, set()
    for line_number, line in enumerate(lines[start:], start=start + 1):
        try:
            parsed = parse_caption_line(line, layout.caption_format)
        except ValueError as error:
            raise DatasetError(f"{layout.captions_file}:{line_number}: {error}") from None
        if parsed is not None:
            caption_count += 1
            images.add(parsed.image)
    if caption_count == 0:
        raise DatasetError(f"{layout.captions_file}: no captions in the file")

    split_sizes, owner = {}, {}
    for split, path in layout.split_files.items():
        names = read_split_list(path)
        for name in names:
            if name in owner:
                raise DatasetError(f"{path}: {name} is also in the {owner[name]} split "
                                   f"({layout.split_files[owner[name]]}); an image belongs to one split")
            owner[name] = split
        split_sizes[split] = len(names)
    return DatasetSummary(caption_lines=caption_count, captioned_images=len(images), split_sizes=split_sizes)
