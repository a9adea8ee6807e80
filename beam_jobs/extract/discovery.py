"""Finding and checking a captioned image dataset in any of the layouts the extract job reads.

    Flickr8k      Flicker8k_Dataset/ (or Images/), Flickr8k.token.txt (Flickr30k: results_20130124.token) or
                  Kaggle's captions.txt, split lists Flickr_8k.{train,dev,test}Images.txt (also under Flickr8k_text/)
    COCO          annotations/captions_<split><year>.json, images under <split><year>/ (or images/<split><year>/);
                  the split is the file's name without the year: captions_val2017.json -> val
    Karpathy      dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json; images under the dataset
                  directory (its ``filepath``s, e.g. val2014/) or under Images/, Flicker8k_Dataset/, ...;
                  restval goes to train unless --karpathy_restval says otherwise
    table         captions.csv, captions.txt (CSV) or captions.jsonl: an image path and a caption per row, and a
                  split column or split lists as for Flickr8k; paths relative to the images directory

Which layout a directory holds is detected from its files; a directory with captions in two layouts (say
Flickr8k.token.txt and dataset_flickr8k.json) is refused, since which is meant cannot be told, and ``--captions_file``
chooses (its format is detected from its content). Each file's format is parsed by `beam_jobs.extract.layouts`.
`resolve_layout` finds the files (or takes them from flags) and `validate_layout` parses all of them once on the
launching machine, so that a malformed file fails before any worker starts, with the file, the position and what is
wrong; the pipeline parses them again on a worker (`beam_jobs.extract.reading`).
"""
import dataclasses
import posixpath
import re
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from beam_jobs.extract import layouts as formats
from beam_jobs.extract.layouts import (
    COCO_FORMAT,
    CSV_FORMAT,
    JSONL_FORMAT,
    KARPATHY_FORMAT,
    SPLIT_LIST,
    TOKEN_FORMAT,
    CaptionEntry,
    DatasetError,
    SourceFile,
)

IMAGE_DIR_CANDIDATES = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images", "Images", "images")
TEXT_DIR_CANDIDATES = ("", "Flickr8k_text")
TOKEN_CAPTIONS = ("Flickr8k.token.txt", "results_20130124.token")
TABLE_CAPTIONS = ("captions.txt", "captions.csv", "captions.jsonl")
KARPATHY_FILES = ("dataset_coco.json", "dataset_flickr8k.json", "dataset_flickr30k.json")
COCO_ANNOTATIONS = "annotations/captions_*.json"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
PROBE_IMAGES = 20  # images of a file that are looked for to find its images directory
RESTVAL_TO_TRAIN = "train"

__all__ = ["DatasetError", "DatasetLayout", "DatasetSummary", "resolve_layout", "validate_layout", "read_text"]


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    images_dir: str  # image keys are paths relative to it ("" until validate_layout finds it, for some layouts)
    captions_file: str  # token, table and Karpathy layouts; COCO: the first annotation file
    caption_format: str  # `beam_jobs.extract.layouts`: token, table-csv, table-jsonl, coco or karpathy
    split_files: dict  # split -> split list (token, tables without a split column) or COCO annotation file
    name: str = ""  # the dataset's name where several are combined (`beam_jobs.extract.datasets`)
    restval: str = RESTVAL_TO_TRAIN  # Karpathy: the split restval images go to
    coco_image_dirs: tuple = ()  # COCO: (split, directory of its images) pairs, in split_files' order
    image_dir_candidates: tuple = ()  # where validate_layout looks for the images when images_dir is ""

    def sources(self) -> list[SourceFile]:
        """Every file to parse, in a stable order."""
        if self.caption_format == COCO_FORMAT:
            directories = dict(self.coco_image_dirs)
            return [SourceFile(COCO_FORMAT, path, split, directories[split])
                    for split, path in self.split_files.items()]
        lists = [SourceFile(SPLIT_LIST, path, split) for split, path in self.split_files.items()]
        return [SourceFile(self.caption_format, self.captions_file)] + lists


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What `validate_layout` found on the launching machine."""
    caption_lines: int
    captioned_images: int
    split_sizes: dict
    images_dir: str = ""  # where the images are (found by looking for the first images named)
    directories: tuple = ()  # directories of the images, relative to images_dir (or absolute), to list


def _join(directory: str, *names: str) -> str:
    return posixpath.join(directory, *[n for n in names if n])


def exists(path: str) -> bool:
    """A file, or a directory (on object stores: a prefix with at least one object under it)."""
    if FileSystems.exists(path):
        return True
    if "://" not in path:
        return False
    try:
        return bool(FileSystems.match([glob_escape(path.rstrip("/")) + "/**"], limits=[1])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  (a filesystem that cannot list: treated as absent)
        return False


def glob_escape(path: str) -> str:
    """``path`` as a glob that matches itself: '*' and '?' as '[*]' and '[?]', and '[' as '?' (Beam's pattern
    translation warns on '[[]'), so it may also match a sibling that differs there: callers keep exact matches."""
    return "".join({"*": "[*]", "?": "[?]", "[": "?"}.get(character, character) for character in path)


def read_text(path: str) -> str:
    try:
        with FileSystems.open(path) as handle:
            raw = handle.read()
    except (OSError, IOError) as error:
        raise DatasetError(f"{path}: cannot read it ({error.__class__.__name__}: {error}); expected a text "
                           "file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start}); "
                           "save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # Windows and old Mac line endings


def detect_caption_format(path: str, text: str) -> str:
    """The format of a captions file, from its content."""
    stripped = text.lstrip("\ufeff \t\r\n")
    first_line = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if not stripped:
        raise DatasetError(f"{path}:1: the captions file is empty")
    if path.endswith(".json") or (stripped.startswith("{") and not first_line.endswith("}")):
        data = formats._load_json(path, text)  # pylint: disable=protected-access
        if isinstance(data, dict) and "annotations" in data:
            return COCO_FORMAT
        if isinstance(data, dict) and isinstance(data.get("images"), list) and \
                all(isinstance(image, dict) and "sentences" in image for image in data["images"][:1]):
            return KARPATHY_FORMAT
        raise DatasetError(f"{path}: JSON that is neither COCO captions ('images' and 'annotations') nor "
                           "Karpathy's split file ('images' with 'sentences')")
    if first_line.startswith("{") or path.endswith(".jsonl"):
        return JSONL_FORMAT
    if path.endswith(".csv"):
        return CSV_FORMAT
    if not first_line:
        raise DatasetError(f"{path}:1: the captions file starts with a blank line")
    if "\t" in first_line:
        return TOKEN_FORMAT
    header = [field.strip().strip('"').strip().lower() for field in first_line.split(",")]
    if any(name in header for name in formats.IMAGE_COLUMNS) and \
            any(name in header for name in formats.CAPTION_COLUMNS):
        return CSV_FORMAT
    raise DatasetError(
        f"{path}:1: cannot tell the captions format from the first line {first_line[:80]!r}. Expected the Flickr8k "
        "token format '<image>#<n><TAB><caption>', a CSV with a header such as 'image,caption' (and optionally "
        "split), JSON Lines, COCO captions JSON or Karpathy's dataset_*.json")


def _find_first(paths: list[str]) -> Optional[str]:
    return next((path for path in paths if exists(path)), None)


def _given_or_found(flag: str, given: str | None, kind: str, candidates, not_found: str) -> str:
    """The path a flag gives (which must exist), else the first of ``candidates()`` that exists."""
    if given:
        if not exists(given):
            raise DatasetError(f"{flag} {given}: no such {kind}")
        return given
    found = _find_first(candidates())
    if found is None:
        raise DatasetError(f"{not_found}; pass {flag}")
    return found


def coco_split(path: str) -> tuple[str, str]:
    """(split, image directory) of a COCO annotation file: captions_train2017.json -> (train, train2017)."""
    stem = posixpath.basename(path)
    match = re.fullmatch(r"captions_(.+)\.json", stem)
    directory = match.group(1) if match else posixpath.splitext(stem)[0]
    split = re.sub(r"(?<=[A-Za-z])(19|20)\d\d$", "", directory)
    return formats.check_split_name(split, path), directory


def _coco_layout(dataset_dir: str, annotation_files: list[str], images_dir: Optional[str]) -> DatasetLayout:
    split_files, directories = {}, []
    years = {path: re.search(r"(19|20)\d\d$", coco_split(path)[1]) for path in annotation_files}
    releases = {match.group(0) for match in years.values() if match}
    if len(releases) > 1:
        raise DatasetError(f"{', '.join(sorted(annotation_files))}: captions of different COCO releases "
                           f"({', '.join(sorted(releases))}); 2017's train holds most of 2014's val under other "
                           "file names, so one photo would be in two splits: keep the files of one release")
    for path in sorted(annotation_files):
        split, directory = coco_split(path)
        if split in split_files:
            raise DatasetError(f"{path} and {split_files[split]} are both the {split} split (COCO 2017's train "
                               "holds 2014's train and most of its val): keep one of them")
        split_files[split] = path
        directories.append((split, directory))
    roots = (images_dir,) if images_dir else (dataset_dir, _join(dataset_dir, "images"))
    return DatasetLayout(images_dir="", captions_file=next(iter(split_files.values())), caption_format=COCO_FORMAT,
                         split_files=split_files, coco_image_dirs=tuple(directories), image_dir_candidates=roots)


def _split_lists(dataset_dir: Optional[str], given: Optional[dict], required: bool) -> dict:
    if given:
        for split, path in given.items():
            formats.check_split_name(split, f"--split_file {split}={path}")
            if not exists(path):
                raise DatasetError(f"--split_file {split}={path}: no such file")
        return dict(given)
    found = {}
    for split, name in SPLIT_FILES.items():
        path = _find_first([_join(dataset_dir, sub, name) for sub in TEXT_DIR_CANDIDATES]) if dataset_dir else None
        if path:
            found[split] = path
    if not found and required:
        raise DatasetError(f"no split lists in {dataset_dir} (looked for {', '.join(SPLIT_FILES.values())}, also "
                           "under Flickr8k_text/); pass --split_file NAME=PATH, or add a split column to the table")
    return found


def _image_candidates(dataset_dir: Optional[str], images_dir: Optional[str], with_root: bool) -> tuple:
    if images_dir:
        return (images_dir,)
    candidates = tuple(_join(dataset_dir, name) for name in IMAGE_DIR_CANDIDATES)
    return candidates + ((dataset_dir,) if with_root else ())


def resolve_layout(dataset_dir: Optional[str] = None, images_dir: Optional[str] = None,
                   captions_file: Optional[str] = None, split_files: Optional[dict] = None,
                   restval: str = RESTVAL_TO_TRAIN, name: str = "") -> DatasetLayout:
    """Finds the layout's files (flags override what is found). The images directory of COCO, Karpathy and table
    layouts is settled by `validate_layout`, which looks for the images the files name."""
    if not dataset_dir and not (images_dir and captions_file):
        raise DatasetError("give --dataset_dir, or --images_dir and --captions_file (and --split_file where the "
                           "captions name no splits)")
    if dataset_dir and not exists(dataset_dir):
        raise DatasetError(f"--dataset_dir {dataset_dir}: no such directory")
    if images_dir and not exists(images_dir):
        raise DatasetError(f"--images_dir {images_dir}: no such directory")
    if not captions_file:
        annotations = [m.path for m in FileSystems.match([_join(glob_escape(dataset_dir), COCO_ANNOTATIONS)])[0]
                       .metadata_list  # only this directory's (the escaped pattern may match a sibling's)
                       if posixpath.dirname(m.path) == _join(dataset_dir.rstrip("/"), "annotations")]
        found = _found_caption_files(dataset_dir)
        if annotations and found:
            raise DatasetError(f"{dataset_dir} holds COCO annotations ({annotations[0]}) and {found[0]}: pass "
                               "--captions_file to say which captions to read")
        if annotations:
            if split_files:
                raise DatasetError("COCO's annotation files name the splits (one file per split): drop --split_file")
            return dataclasses.replace(_coco_layout(dataset_dir, annotations, images_dir), name=name)
        if not found:
            raise DatasetError(f"no captions file in {dataset_dir} (looked for annotations/captions_*.json, "
                               f"{', '.join(TOKEN_CAPTIONS + TABLE_CAPTIONS + KARPATHY_FILES)}, also under "
                               "Flickr8k_text/); pass --captions_file")
        captions_file = found[0]
    elif not exists(captions_file):
        raise DatasetError(f"--captions_file {captions_file}: no such file")
    text = read_text(captions_file)
    caption_format = detect_caption_format(captions_file, text)
    if caption_format == COCO_FORMAT and split_files:
        raise DatasetError(f"{captions_file} is a COCO annotation file, which is one split: drop --split_file")
    if caption_format == COCO_FORMAT:
        return dataclasses.replace(_coco_layout(dataset_dir or posixpath.dirname(captions_file), [captions_file],
                                                images_dir), name=name)
    if caption_format == KARPATHY_FORMAT:
        if split_files:
            raise DatasetError(f"{captions_file} is Karpathy's split file, which names the splits: drop --split_file")
        return DatasetLayout(images_dir="", captions_file=captions_file, caption_format=caption_format,
                             split_files={}, name=name, restval=restval,
                             image_dir_candidates=_image_candidates(dataset_dir, images_dir, with_root=True))
    if caption_format == TOKEN_FORMAT:
        images_dir = _given_or_found(
            "--images_dir", images_dir, "directory", lambda: _image_candidates(dataset_dir, None, False),
            f"no images directory in {dataset_dir} (looked for {', '.join(IMAGE_DIR_CANDIDATES)})")
        return DatasetLayout(images_dir=images_dir, captions_file=captions_file, caption_format=caption_format,
                             split_files=_split_lists(dataset_dir, split_files, required=True), name=name)
    named = formats.table_has_split_column(captions_file, text, caption_format)
    if named and split_files:
        raise DatasetError(f"{captions_file} has a split column: drop --split_file (or the column)")
    lists = {} if named else _split_lists(dataset_dir, split_files, required=True)
    return DatasetLayout(images_dir="", captions_file=captions_file, caption_format=caption_format,
                         split_files=lists, name=name,
                         image_dir_candidates=_image_candidates(dataset_dir or posixpath.dirname(captions_file),
                                                                images_dir, with_root=True))


def _found_caption_files(dataset_dir: str) -> list[str]:
    """The captions files in a dataset directory, of one kind (Flickr8k token, table, Karpathy); several kinds are
    refused, since which one is meant cannot be told."""
    kinds = (TOKEN_CAPTIONS, TABLE_CAPTIONS, KARPATHY_FILES)
    found = [[_join(dataset_dir, sub, name) for name in names for sub in TEXT_DIR_CANDIDATES
              if (sub == "" or names is not KARPATHY_FILES) and exists(_join(dataset_dir, sub, name))]
             for names in kinds]
    present = [paths for paths in found if paths]
    if len(present) > 1:
        layouts = ", ".join(p[0] for p in present)
        raise DatasetError(f"{dataset_dir} holds captions in more than one layout ({layouts}): "
                           "pass --captions_file to say which to read")
    return present[0] if present else []


def read_split_list(path: str) -> list[str]:
    """Image names of a split list file: one per line, blank lines ignored, no duplicates."""
    return [entry.image_id for entry in formats.split_list_entries(path, read_text(path), "")]


def _find_images_dir(layout: DatasetLayout, keys: list[str]) -> str:
    """The first candidate directory under which one of the first images named exists."""
    if layout.images_dir:
        return layout.images_dir
    relative = [key for key in keys if not formats.is_absolute(key)][:PROBE_IMAGES]
    if not relative:
        return layout.image_dir_candidates[0]
    for candidate in layout.image_dir_candidates:
        if exists(candidate) and any(exists(_join(candidate, key)) for key in relative):
            return candidate
    looked = ", ".join(layout.image_dir_candidates)
    raise DatasetError(f"none of the first {len(relative)} images {layout.captions_file} names (e.g. "
                       f"{relative[0]}) is under {looked}; pass --images_dir (the directory their paths are "
                       "relative to)")


def validate_layout(layout: DatasetLayout) -> DatasetSummary:
    """Parses every file once; raises DatasetError at the first problem, with file and position. Also finds where
    the images are (`DatasetSummary.images_dir`) and which directories hold them."""
    caption_count, captioned, owner, split_sizes, order = 0, set(), {}, {}, []
    for source in layout.sources():
        for entry in formats.entries(source, read_text(source.path), layout.restval):
            if isinstance(entry, CaptionEntry):
                caption_count += 1
                if entry.key not in captioned:
                    captioned.add(entry.key)
                    order.append(entry.key)
                continue
            first = owner.get(entry.key)
            if first is not None and first.split == entry.split:
                continue  # a table names an image's split on each of its rows
            if first is not None:
                raise DatasetError(f"{entry.where}: {entry.key} is also in the {first.split} split ({first.where}); "
                                   "an image belongs to one split")
            owner[entry.key] = entry
            split_sizes[entry.split] = split_sizes.get(entry.split, 0) + 1
    for split in layout.split_files:
        split_sizes.setdefault(split, 0)
    if caption_count == 0:
        raise DatasetError(f"{layout.captions_file}: no captions in the file")
    if not owner:
        raise DatasetError(f"{layout.captions_file}: no image is in a split")
    images_dir = _find_images_dir(layout, [key for key in order if key in owner] or order)
    directories = sorted({posixpath.dirname(key) for key in owner})
    schemes = {directory.split("://", 1)[0]: directory for directory in directories if "://" in directory}
    for scheme, directory in schemes.items():  # listed on the workers: a filesystem Beam cannot use fails here
        try:
            FileSystems.match([glob_escape(directory) + "/*"], limits=[1])
        except Exception as error:  # pylint: disable=broad-except  (ValueError, BeamIOError, ImportError, ...)
            raise DatasetError(f"{layout.captions_file}: images under {scheme}:// ({directory}) cannot be listed "
                               f"here ({str(error)[:200]}); install Beam's support for it (e.g. imcap[gcp]) or give "
                               "local paths") from None
    return DatasetSummary(caption_lines=caption_count, captioned_images=len(captioned), split_sizes=split_sizes,
                          images_dir=images_dir, directories=tuple(directories))
