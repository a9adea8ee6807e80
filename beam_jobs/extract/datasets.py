"""Several datasets as one extract job's input: their names, how each is found and checked, and how their ids and
splits are written into one set of records.

    --dataset_dir flickr8k=data/flickr8k --dataset_dir coco=gs://bucket/coco     (or DIR: named after its directory)

With one dataset nothing is renamed (ids ``1000268201_693b08cb0e.jpg``, splits train/dev/test). With several, an
image id becomes ``<dataset>/<id>`` and every split but train ``<dataset>/<split>`` (``coco/val``,
``flickr8k/dev``): train is one split over all datasets (the vocabulary and the trainer use all of it), and each
evaluation split stays its own dataset's (``trainer.evaluate --split coco/val``).
"""
import logging
import posixpath
import re
import typing

from beam_jobs.extract import discovery
from beam_jobs.extract import layouts as formats
from beam_jobs.extract.layouts import DatasetError

TRAIN = "train"


class Naming(typing.NamedTuple):
    """How a dataset's ids and splits are written in the records."""
    name: str
    prefixed: bool  # several datasets: ids and evaluation splits carry the dataset's name

    def split_name(self, split: str) -> str:
        return f"{self.name}/{split}" if self.prefixed and split != TRAIN else split

    def image_id(self, image_id: str) -> str:
        return f"{self.name}/{image_id}" if self.prefixed else image_id


class Dataset(typing.NamedTuple):
    """A dataset as the pipeline reads it: its layout, what validation found, and how its names are written."""
    layout: discovery.DatasetLayout
    summary: discovery.DatasetSummary
    name: str
    prefixed: bool  # several datasets: ids and evaluation splits carry the dataset's name

    @property
    def naming(self) -> Naming:
        return Naming(self.name, self.prefixed)

    def split_name(self, split: str) -> str:
        return self.naming.split_name(split)

    def image_id(self, image_id: str) -> str:
        return self.naming.image_id(image_id)

    def output_splits(self) -> list[str]:
        return [self.split_name(split) for split in self.summary.split_sizes]


def parse_spec(text: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` -> (name, dir); a name is letters, digits, '_' and '-' (else, or when the whole text
    is an existing directory such as ``date=2024/flickr8k``, the text is a DIR)."""
    name, separator, directory = text.partition("=")
    if separator and formats.NAME_PATTERN.fullmatch(name) and directory and not discovery.exists(text):
        return name, directory
    return "", text


def default_name(directory: str) -> str:
    base = posixpath.basename(directory.rstrip("/")) or "dataset"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", base).lower()


def load_datasets(specs: list[str], images_dir=None, captions_file=None, split_files=None,
                  restval: str = discovery.RESTVAL_TO_TRAIN) -> list[Dataset]:
    """Finds and validates each dataset (`discovery.resolve_layout`, `discovery.validate_layout`); raises
    DatasetError with what to fix."""
    specs = [parse_spec(spec) for spec in specs or []]
    several = len(specs) > 1
    if several and (images_dir or captions_file or split_files):
        raise DatasetError("--images_dir, --captions_file and --split_file describe one dataset; with several "
                           "--dataset_dir each directory must hold its own files")
    if not specs:
        specs = [("", "")]
    names = [name or (default_name(directory) if directory else "dataset") for name, directory in specs]
    if len(set(names)) < len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise DatasetError(f"two datasets are named {repeated[0]}: name them, e.g. --dataset_dir "
                           f"{repeated[0]}1=DIR --dataset_dir {repeated[0]}2=DIR")
    loaded = []
    for name, (_, directory) in zip(names, specs):
        layout = discovery.resolve_layout(directory or None, images_dir, captions_file, split_files, restval, name)
        summary = discovery.validate_layout(layout)
        logging.info("dataset %s: %s layout, images in %s; %d captions of %d images in %s; splits %s", name,
                     layout.caption_format, summary.images_dir, summary.caption_lines, summary.captioned_images,
                     layout.captions_file, summary.split_sizes)
        loaded.append(Dataset(layout=layout, summary=summary, name=name, prefixed=several))
    return loaded


def output_splits(datasets: list[Dataset]) -> list[str]:
    """The splits of the records, train first, then each dataset's in order."""
    splits = []
    for data in datasets:
        splits.extend(split for split in data.output_splits() if split not in splits)
    return sorted(splits, key=lambda split: split != TRAIN)


def split_image_uris(datasets: list[Dataset], split: str) -> list[str]:
    """The image files of one output split (e.g. train, for calibrating an int8 model), each once, in the files'
    order."""
    uris = {}
    for data in datasets:
        for source in data.layout.sources():
            for entry in formats.entries(source, discovery.read_text(source.path), data.layout.restval):
                if isinstance(entry, formats.SplitEntry) and data.split_name(entry.split) == split:
                    uris.setdefault(formats.image_uri(data.summary.images_dir, entry.key))
    return list(uris)
