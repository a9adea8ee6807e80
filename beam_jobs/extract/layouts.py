"""The caption files of each dataset layout, parsed into one shape: `CaptionEntry` and `SplitEntry`.

======================  =========================================================================================
 format                  file
======================  =========================================================================================
 ``token``               Flickr8k/Flickr30k ``<image>#<n><TAB><caption>`` lines (splits from split lists)
 ``table-csv``           CSV with a header naming an image column and a caption column, optionally a split column
                         (Kaggle's Flickr8k ``captions.txt``, header ``image,caption``, is one; splits from lists)
 ``table-jsonl``         JSON Lines: one object per line with the same keys
 ``coco``                COCO's ``annotations/captions_<split>.json`` (``images`` and ``annotations``), one per split
 ``karpathy``            Karpathy's ``dataset_{coco,flickr8k,flickr30k}.json`` (``images[]`` with ``filename``,
                         ``filepath``, ``split`` and ``sentences[].raw``)
 ``split-list``          one image file name per line (Flickr8k's ``Flickr_8k.trainImages.txt``)
======================  =========================================================================================

An entry's ``key`` is the image's path relative to the dataset's images directory (or an absolute path or URI,
which tables may give); its ``image_id`` is what the records call it: the file name for Flickr8k, COCO and Karpathy
(COCO's ``file_name``, Karpathy's ``filename``), the path as written for tables. So the same images and captions
written in any layout give the same records.

Each parser raises `DatasetError` with the file and the position of the first problem (``file:line``,
``file:line:column`` for JSON syntax, ``file: annotations[12]`` for JSON structure) and what to fix. The launching
machine runs them once over every file (`beam_jobs.extract.discovery.validate_layout`); the pipeline runs them again on
a worker (`beam_jobs.extract.reading`).
"""
import csv
import io
import json
import posixpath
import re
import typing

from beam_jobs.naming import normalize_uri


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file and position and what to fix."""


TOKEN_FORMAT = "token"
CSV_FORMAT = "table-csv"
JSONL_FORMAT = "table-jsonl"
COCO_FORMAT = "coco"
KARPATHY_FORMAT = "karpathy"
SPLIT_LIST = "split-list"
TABLE_FORMATS = (CSV_FORMAT, JSONL_FORMAT)

IMAGE_COLUMNS = ("image", "image_path", "file_name", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "sentence")
SPLIT_COLUMN = "split"
KARPATHY_SPLITS = ("train", "restval", "val", "test")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class CaptionEntry(typing.NamedTuple):
    key: str  # the image's path relative to the images directory, or an absolute path / URI
    index: int  # the caption's place among its image's captions (the #n of the token format, else file order)
    caption: str  # raw; cleaned later (`schemas.captions.normalize_caption`)


class SplitEntry(typing.NamedTuple):
    key: str
    split: str
    image_id: str  # the record's image_id
    where: str  # file and position that put the image in this split (for error messages)


class SourceFile(typing.NamedTuple):
    """One file of a dataset to parse: its format, path, and for per-split files the split (and for COCO the
    directory of that split's images, relative to the images directory)."""
    format: str
    path: str
    split: str = ""
    image_dir: str = ""


def check_split_name(split: str, where: str) -> str:
    if not NAME_PATTERN.fullmatch(split):
        raise DatasetError(f"{where}: split name {split!r} must be letters, digits, '_' or '-'")
    return split


def is_absolute(path: str) -> bool:
    return path.startswith("/") or "://" in path


def checked_text(value: str, where: str) -> str:
    """Text from a captions file that every later step can write: JSON's ``\\ud800`` escapes give lone surrogates,
    which no UTF-8 encoder (TFRecords, Parquet) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DatasetError(f"{where}: the text holds a lone surrogate (\\u{ord(value[error.start]):04x}, at "
                           f"character {error.start + 1}): JSON \\ud800-\\udfff escapes must come in valid pairs; "
                           "fix or remove it") from None
    return value


def checked_key(path: str, where: str, absolute_allowed: bool = True) -> str:
    """The key of a path a captions file gives (`sources.normalize_uri`: one spelling per file). A relative path
    must stay inside the images directory; an absolute path or URI is allowed where the layout's own files may name
    images anywhere (tables and split lists), and refused where they name files of the dataset's own folders
    (Flickr token files, COCO, Karpathy)."""
    key = normalize_uri(checked_text(path, where))
    if not is_absolute(key) and (key == ".." or key.startswith("../")):
        raise DatasetError(f"{where}: {path!r} leads out of the images directory; give paths relative to it"
                           + (", or absolute ones" if absolute_allowed else ""))
    if is_absolute(key) and not absolute_allowed:
        raise DatasetError(f"{where}: {path!r} is an absolute path or URI, but this layout names the images of its "
                           "own folder: give paths relative to it (or use a CSV/JSON Lines table, whose paths may be "
                           "absolute)")
    return key


def image_uri(images_dir: str, key: str) -> str:
    return key if is_absolute(key) else posixpath.join(images_dir, key)


# -- Flickr8k token lines ---------------------------------------------------------------------------------------
def parse_token_line(line: str) -> typing.Optional[CaptionEntry]:
    """One ``<image>#<n><TAB><caption>`` line; None for a blank line. Raises ValueError saying what is wrong."""
    line = line.lstrip("\ufeff").rstrip("\r\n")
    if not line.strip():
        return None
    if "\t" not in line:
        raise ValueError(f"no TAB between the caption id and the caption in {line[:80]!r}; "
                         "expected '<image>#<n><TAB><caption>'")
    caption_id, caption = line.split("\t", 1)
    image, separator, index = caption_id.strip().rpartition("#")
    if not separator or not image:
        raise ValueError(f"caption id {caption_id!r} is not '<image>#<n>'")
    if not index.isdigit():
        raise ValueError(f"caption id {caption_id!r} does not end in '#<number>'")
    if not caption.strip():
        raise ValueError(f"image {image!r} has an empty caption")
    return CaptionEntry(image.strip(), int(index), caption.strip())


def token_entries(path: str, text: str):
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            entry = parse_token_line(line)
        except ValueError as error:
            raise DatasetError(f"{path}:{number}: {error}") from None
        if entry is not None:
            yield entry._replace(key=checked_key(entry.key, f"{path}:{number}", absolute_allowed=False))


# -- split lists ------------------------------------------------------------------------------------------------
def split_list_entries(path: str, text: str, split: str):
    """Image names of a split list: one per line, blank lines ignored, no duplicates."""
    seen = {}
    for number, line in enumerate(text.split("\n"), start=1):
        name = line.strip().lstrip("\ufeff")
        if not name:
            continue
        if "\t" in name or "," in name:
            raise DatasetError(f"{path}:{number}: expected one image file name per line, got {name[:80]!r}")
        if name in seen:
            raise DatasetError(f"{path}:{number}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = number
        yield SplitEntry(checked_key(name, f"{path}:{number}"), split, name, f"{path}:{number}")


# -- tables: CSV and JSON Lines ---------------------------------------------------------------------------------
def _columns(path: str, where: str, names) -> tuple[str, str, typing.Optional[str]]:
    lowered = {str(name).strip().lower(): name for name in names}
    image = next((lowered[c] for c in IMAGE_COLUMNS if c in lowered), None)
    caption = next((lowered[c] for c in CAPTION_COLUMNS if c in lowered), None)
    if image is None or caption is None:
        missing = "image column (one of " + ", ".join(IMAGE_COLUMNS) + ")" if image is None else \
            "caption column (one of " + ", ".join(CAPTION_COLUMNS) + ")"
        raise DatasetError(f"{path}:{where}: no {missing} among {sorted(map(str, names))}")
    return image, caption, lowered.get(SPLIT_COLUMN)


def _table_row(path: str, where: str, index: int, image, caption, split):
    if not isinstance(image, str) or not image.strip():
        raise DatasetError(f"{path}:{where}: the image path is empty or not text ({image!r})")
    if not isinstance(caption, str) or not caption.strip():
        raise DatasetError(f"{path}:{where}: image {image!r} has an empty caption (or one that is not text)")
    key = checked_key(image.strip(), f"{path}:{where}")
    yield CaptionEntry(key, index, checked_text(caption.strip(), f"{path}:{where}: the caption"))
    if split is not None:
        if not isinstance(split, str):
            raise DatasetError(f"{path}:{where}: image {image!r}: the split must be text, got {split!r:.40}")
        if not split.strip():
            raise DatasetError(f"{path}:{where}: image {image!r} has an empty split")
        yield SplitEntry(key, check_split_name(split.strip(), f"{path}:{where}"), image.strip(), f"{path}:{where}")


def table_has_split_column(path: str, text: str, table_format: str) -> bool:
    """Whether the table names its splits (else they come from split lists)."""
    if table_format == CSV_FORMAT:
        header = next(csv.reader([text.lstrip("\ufeff").split("\n", 1)[0]]), [])
        return _columns(path, "1", header)[2] is not None
    for record in jsonl_entries(path, text, columns_only=True):
        return record[2] is not None
    return False


def csv_entries(path: str, text: str):
    """A CSV with a header. With exactly the columns ``image,caption`` (Kaggle's Flickr8k file), commas inside an
    unquoted caption are part of it; otherwise a row must have as many fields as the header (quote commas)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{path}:1: the table is empty; expected a header such as 'image,caption,split'") from None
    image_column, caption_column, split_column = _columns(path, "1", header)
    positions = {name: header.index(name) for name in (image_column, caption_column, split_column) if name}
    lenient = [name.strip().lower() for name in header] == ["image", "caption"]
    try:
        end = reader.line_num
        for fields in reader:
            line, end = end + 1, reader.line_num
            if any("\n" in field or "\r" in field for field in fields):
                raise DatasetError(f"{path}:{line}: a quote opened on this line is closed only on line {end}; "
                                   "captions are one line: close the quote or remove it")
            if not any(field.strip() for field in fields):
                continue
            if lenient and len(fields) > 2:
                fields = [fields[0], ",".join(fields[1:])]
            if len(fields) != len(header):
                raise DatasetError(
                    f"{path}:{line}: {len(fields)} fields, but the header has {len(header)} ({','.join(header)}); "
                    "put a caption that holds commas in double quotes" if len(fields) > len(header) else
                    f"{path}:{line}: expected '{','.join(header)}', got {len(fields)} field(s) {fields!r:.80}")
            yield from _table_row(path, str(line), line, fields[positions[image_column]],
                                  fields[positions[caption_column]],
                                  fields[positions[split_column]] if split_column else None)
    except csv.Error as error:
        if "field larger than field limit" in str(error):
            raise DatasetError(f"{path}:{reader.line_num}: a field of more than {csv.field_size_limit():,} "
                               "characters, which is no caption or image path (an unclosed quote, or a paragraph "
                               "in a cell)") from None
        raise DatasetError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None


def jsonl_entries(path: str, text: str, columns_only: bool = False):
    """JSON Lines; ``columns_only``: yield just the (image, caption, split) keys the first line names."""
    columns = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}:{error.colno}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        if columns is None:
            columns = _columns(path, str(number), record)
            if columns_only:
                yield columns
                return
        image_column, caption_column, split_column = columns
        if split_column is None and SPLIT_COLUMN in record:
            raise DatasetError(f"{path}:{number}: a {SPLIT_COLUMN!r} key, which the first line has not: give every "
                               "line its split, or none")
        for column in (image_column, caption_column, split_column):
            if column is not None and column not in record:
                raise DatasetError(f"{path}:{number}: no {column!r} key (the first line has it)")
        yield from _table_row(path, str(number), number, record[image_column], record[caption_column],
                              record[split_column] if split_column else None)


# -- COCO and Karpathy JSON -------------------------------------------------------------------------------------
def _load_json(path: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to be a captions file") from None


def _field(path: str, where: str, record, name: str, kinds):
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise DatasetError(f"{path}: {where}: no {name!r}")
    value = record[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = " or ".join(kind.__name__ for kind in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise DatasetError(f"{path}: {where}.{name}: expected {expected}, got {value!r:.60}")
    return checked_text(value, f"{path}: {where}.{name}") if isinstance(value, str) else value


def coco_entries(path: str, text: str, split: str, image_dir: str):
    """One COCO captions file: ``images`` [{id, file_name}], ``annotations`` [{image_id, caption}]; the images
    are in ``image_dir`` (e.g. ``train2017``)."""
    data = _load_json(path, text)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO captions object with 'images' and 'annotations'")
    if "annotations" not in data:
        raise DatasetError(f"{path}: no 'annotations' (a COCO image-info file of a test set has no captions; "
                           "leave it out)")
    images, annotations = _field(path, "", data, "images", list), _field(path, "", data, "annotations", list)
    names = {}
    for position, image in enumerate(images):
        where = f"images[{position}]"
        image_id = _field(path, where, image, "id", (int, str))
        file_name = _field(path, where, image, "file_name", str).strip()
        if not file_name:
            raise DatasetError(f"{path}: {where}.file_name is empty")
        if image_id in names:
            raise DatasetError(f"{path}: {where}: image id {image_id} is also images[{names[image_id][1]}]")
        names[image_id] = (checked_key(posixpath.join(image_dir, file_name), f"{path}: {where}",
                                       absolute_allowed=False), position)
        yield SplitEntry(names[image_id][0], split, file_name, f"{path}: {where}")
    for position, annotation in enumerate(annotations):
        where = f"annotations[{position}]"
        image_id = _field(path, where, annotation, "image_id", (int, str))
        caption = _field(path, where, annotation, "caption", str)
        if image_id not in names:
            raise DatasetError(f"{path}: {where}: image_id {image_id} is not in 'images'")
        if not caption.strip():
            raise DatasetError(f"{path}: {where}: empty caption")
        yield CaptionEntry(names[image_id][0], position, caption.strip())


def karpathy_entries(path: str, text: str, restval: str):
    """Karpathy's split file: ``images`` [{filename, filepath?, split, sentences [{raw}]}]; ``restval`` images go
    to ``restval`` (the split name to give them: train by default, as in the literature)."""
    data = _load_json(path, text)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected Karpathy's split file, an object with 'images'")
    seen = {}
    for position, image in enumerate(_field(path, "", data, "images", list)):
        where = f"images[{position}]"
        filename = _field(path, where, image, "filename", str).strip()
        if not filename:
            raise DatasetError(f"{path}: {where}.filename is empty")
        filepath = image.get("filepath") or ""
        if not isinstance(filepath, str):
            raise DatasetError(f"{path}: {where}.filepath: expected str, got {filepath!r:.60}")
        if filepath.startswith("/") or "://" in filepath:
            raise DatasetError(f"{path}: {where}.filepath: {filepath!r} is absolute, but Karpathy's filepath names a "
                               "folder of the dataset (e.g. 'train2014'): give it relative to the dataset's folder")
        split = _field(path, where, image, "split", str)
        if split not in KARPATHY_SPLITS:
            raise DatasetError(f"{path}: {where}.split: {split!r} is not one of {', '.join(KARPATHY_SPLITS)}")
        key = checked_key(posixpath.join(filepath, filename), f"{path}: {where}", absolute_allowed=False)
        if key in seen:
            raise DatasetError(f"{path}: {where}: {key} is also images[{seen[key]}]")
        seen[key] = position
        yield SplitEntry(key, restval if split == "restval" else split, filename, f"{path}: {where}")
        for index, sentence in enumerate(_field(path, where, image, "sentences", list)):
            caption = _field(path, f"{where}.sentences[{index}]", sentence, "raw", str)
            if not caption.strip():
                raise DatasetError(f"{path}: {where}.sentences[{index}].raw is empty")
            yield CaptionEntry(key, index, caption.strip())


def entries(source: SourceFile, text: str, restval: str = "train"):
    """The entries of one file of a dataset."""
    if source.format == TOKEN_FORMAT:
        return token_entries(source.path, text)
    if source.format == SPLIT_LIST:
        return split_list_entries(source.path, text, source.split)
    if source.format == CSV_FORMAT:
        return csv_entries(source.path, text)
    if source.format == JSONL_FORMAT:
        return jsonl_entries(source.path, text)
    if source.format == COCO_FORMAT:
        return coco_entries(source.path, text, source.split, source.image_dir)
    if source.format == KARPATHY_FORMAT:
        return karpathy_entries(source.path, text, restval)
    raise ValueError(f"unknown dataset file format {source.format!r}")
