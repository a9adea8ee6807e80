"""Reading captioned datasets in a pipeline: captions, splits and image files joined per image, and several
datasets made one (duplicate images found by content and captioned once).

    dataset = pipeline | ReadDataset(datasets)   # -> .items (WorkItem), .errors (ErrorRow), .tallies (Tally)

The files are found and validated on the launching machine by `beam_jobs.extract.discovery`; here a worker parses them
again with the same parsers (`beam_jobs.extract.layouts`). Per dataset, each image ends as a `WorkItem` (it has a
file, a split and at least one usable caption), an error row (in a split but no file, or no usable caption), or a
`Tally` of what is reported without being an input's failure (captions without an image, images in no split).

Several datasets (`Dataset`s with names): image ids become ``<dataset>/<id>``, and the splits other than train
``<dataset>/<split>`` (train is one split: the vocabulary and the trainer use all of it). With ``dedupe`` the
images are hashed (SHA-256 of the file: the bytes are read here and again for the features, and only the digest
travels) and the items of one content are settled per split:

- copies in one split become one record with all their captions (a caption text already there is not added
  twice), under the first dataset's id: an image in two datasets' train splits is trained on once;
- a train copy of an image that is also in an evaluation split is left out (counted per dataset as
  ``left_out_of_train``): no image is both trained on and evaluated on;
- copies in different evaluation splits stay in each, with their own captions, so that every dataset's
  evaluation split keeps its published images and references.
"""
import hashlib
import posixpath
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs import naming
from beam_jobs.elements import ERRORS, Tally
from beam_jobs.extract import discovery
from beam_jobs.extract import layouts as formats
from beam_jobs.extract.datasets import TRAIN, Dataset, Naming
from beam_jobs.features import ExtractFeatures, read_and_prepare, read_error_row
from beam_jobs.runtime import counter
from schemas import captions, fileio, images, tables
from schemas.records import MetadataKeys
from schemas.tables import ErrorRow

TALLIES = "tallies"
SPLITS = "splits"
HASH_CHUNK = 1 << 20


class WorkItem(typing.NamedTuple):
    """One image to featurize: its id, split, location and cleaned captions. ``origins``: (dataset, captions it
    gave) per dataset item merged into this one, the item whose id and split it has first; ``copies``: the files
    of the other items (the same content: if this one cannot be used, each of them gets an error row too)."""
    image_id: str
    split: str
    uri: str
    captions: tuple
    origins: tuple = ()
    copies: tuple = ()


class ParseSource(beam.DoFn):
    """A dataset file -> (key, (index, caption)) and on ``splits`` (key, (split, image id))."""

    def __init__(self, restval: str):
        self._restval = restval

    def process(self, source: formats.SourceFile):
        for entry in formats.entries(source, discovery.read_text(source.path), self._restval):
            if isinstance(entry, formats.CaptionEntry):
                yield entry.key, (entry.index, entry.caption)
            else:
                yield beam.pvalue.TaggedOutput(SPLITS, (entry.key, (entry.split, entry.image_id)))


def _list_directory(directory: str, images_dir: str):
    """(key, uri) of every file in one directory of the images."""
    base = (directory if formats.is_absolute(directory) else posixpath.join(images_dir, directory)).rstrip("/")
    for metadata in FileSystems.match([posixpath.join(discovery.glob_escape(base), "*")])[0].metadata_list:
        if posixpath.dirname(metadata.path) == base:  # not a sibling the escaped pattern also matches
            yield naming.normalize_uri(posixpath.join(directory, posixpath.basename(metadata.path))), metadata.path


@beam.typehints.with_output_types(WorkItem)
class ClassifyImages(beam.DoFn):
    """Joins captions, splits and files per image key and decides what becomes of each image.

    Main output: `WorkItem`s. ``errors``: images in a split that cannot be used (no file, no caption).
    ``tallies``: what is reported but is not an error of an input image.
    """
    def __init__(self, naming: Naming, images_dir: str,
                 max_caption_words: int = captions.DEFAULT_MAX_CAPTION_WORDS):
        self._naming = naming
        self._images_dir = images_dir
        self._max_words = max_caption_words

    def _tally(self, name: str, value: int):
        counter(name).inc(value)
        return beam.pvalue.TaggedOutput(TALLIES, Tally(Tally.STAT, name, value))

    def process(self, element):
        key, joined = element
        raw_captions = sorted(joined["captions"])
        splits, files = sorted(set(joined["splits"])), sorted(joined["files"])
        if not files:
            if raw_captions:
                yield self._tally(MetadataKeys.CAPTIONS_WITHOUT_IMAGE, len(raw_captions))
            if splits:  # one row per image (a table names its split on each caption's row)
                counter("images_missing").inc()
                uri = formats.image_uri(self._images_dir, key)
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    uri, images.MISSING_FILE, f"{key} is in the {self._naming.split_name(splits[0][0])} split but "
                    f"there is no such file ({uri})"))
            return
        if not splits:
            yield self._tally(MetadataKeys.IMAGES_WITHOUT_SPLIT, 1)
            return
        (split, image_id), uri = splits[0], files[0]
        cleaned = [captions.caption_tokens(caption) for _, caption in raw_captions]
        nonempty = [tokens for tokens in cleaned if tokens]
        kept = tuple(" ".join(tokens) for tokens in nonempty if len(tokens) <= self._max_words)
        if len(nonempty) < len(cleaned):
            yield self._tally(MetadataKeys.CAPTIONS_EMPTY, len(cleaned) - len(nonempty))
        if len(kept) < len(nonempty):
            yield self._tally(MetadataKeys.CAPTIONS_TOO_LONG, len(nonempty) - len(kept))
        if not kept:
            counter("images_without_captions").inc()
            too_long = len(nonempty) - len(kept)
            reason = (f" ({too_long} longer than {self._max_words} words: --max_caption_words)" if too_long else "")
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                uri, images.NO_CAPTIONS,
                f"{key} is in the {self._naming.split_name(split)} split but has no usable caption{reason}"))
            return
        yield WorkItem(image_id=self._naming.image_id(image_id), split=self._naming.split_name(split), uri=uri,
                       captions=kept, origins=((self._naming.name, len(kept)),))


class HashImage(beam.DoFn):
    """`WorkItem` -> (SHA-256 of its file, item); an unreadable file -> an error row (as the featurizing step
    would write it)."""

    def process(self, item: WorkItem):
        digest = hashlib.sha256()
        try:
            with fileio.open_read(item.uri) as handle:
                for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
                    digest.update(chunk)
        except Exception as error:  # pylint: disable=broad-except  (filesystems raise their own types)
            row = read_error_row(item.uri, error)
            counter("images_failed").inc()
            counter(f"images_failed_{row.error}").inc()
            yield beam.pvalue.TaggedOutput(ERRORS, row)
            return
        yield digest.hexdigest(), item


class MergeDuplicates(beam.DoFn):
    """(digest, items of the same file content) -> a `WorkItem` per split they are in (see the module's rules)."""

    def __init__(self, dataset_order: tuple):
        self._order = {name: position for position, name in enumerate(dataset_order)}

    def process(self, element):
        _, items = element
        items = sorted(items, key=lambda item: (self._order[item.origins[0][0]], item.image_id))
        if len(items) == 1:
            yield items[0]
            return
        by_split = {}
        for item in items:
            by_split.setdefault(item.split, []).append(item)
        if TRAIN in by_split and len(by_split) > 1:  # also evaluated: not trained on
            for item in by_split.pop(TRAIN):
                counter("train_duplicates_left_out").inc()
                yield beam.pvalue.TaggedOutput(TALLIES, Tally(Tally.STAT, MetadataKeys.TRAIN_DUPLICATES_LEFT_OUT, 1))
                yield beam.pvalue.TaggedOutput(TALLIES, Tally(Tally.DATASET_LEFT_OUT, item.origins[0][0], 1))
        for group in by_split.values():
            first = group[0]
            merged, origins = list(first.captions), [first.origins[0]]
            for item in group[1:]:
                counter("duplicate_images").inc()
                added = [caption for caption in item.captions if caption not in merged]
                merged.extend(added)
                origins.append((item.origins[0][0], len(added)))
            yield first._replace(captions=tuple(merged), origins=tuple(origins),
                                 copies=tuple(item.uri for item in group[1:]))


class _Read(typing.NamedTuple):
    items: beam.PCollection  # WorkItem
    errors: beam.PCollection  # ErrorRow
    tallies: beam.PCollection  # Tally


@beam.ptransform_fn
def ReadOneDataset(pbegin, data: Dataset, max_caption_words: int = captions.DEFAULT_MAX_CAPTION_WORDS):  # pylint: disable=invalid-name
    """One dataset -> `_Read` (items, errors, tallies)."""
    layout = data.layout
    parsed = (pbegin
              | "Files" >> beam.Create(layout.sources())
              | "Parse" >> beam.ParDo(ParseSource(layout.restval)).with_outputs(SPLITS, main="captions"))
    files = (pbegin
             | "Directories" >> beam.Create(list(data.summary.directories))
             | "ListImages" >> beam.FlatMap(_list_directory, data.summary.images_dir))
    joined = ({"captions": parsed.captions, "splits": parsed[SPLITS], "files": files}
              | "JoinByImage" >> beam.CoGroupByKey())
    classified = joined | "ClassifyImages" >> beam.ParDo(
        ClassifyImages(data.naming, data.summary.images_dir, max_caption_words)).with_outputs(
        ERRORS, TALLIES, main="items")
    return _Read(items=classified.items, errors=classified[ERRORS], tallies=classified[TALLIES])


class ReadDataset(beam.PTransform):
    """`Dataset`s -> `WorkItem`s to featurize, error rows, and tallies for the metadata. ``dedupe``: images of
    the same content (across datasets, or within one) become one item."""

    def __init__(self, datasets: typing.Sequence[Dataset], dedupe: bool = False,
                 max_caption_words: int = captions.DEFAULT_MAX_CAPTION_WORDS):
        super().__init__()
        self._datasets = tuple(datasets)
        self._dedupe = dedupe
        self._max_caption_words = max_caption_words

    def expand(self, pbegin):
        reads = [pbegin | f"Read[{data.name}]" >> ReadOneDataset(data, self._max_caption_words)
                 for data in self._datasets]
        items = [read.items for read in reads] | "AllItems" >> beam.Flatten()
        errors = [read.errors for read in reads]
        tallies = [read.tallies for read in reads]
        if self._dedupe:
            hashed = items | "HashImages" >> beam.ParDo(HashImage()).with_outputs(ERRORS, main="hashed")
            merged = (hashed.hashed
                      | "ByContent" >> beam.GroupByKey()
                      | "MergeDuplicates" >> beam.ParDo(MergeDuplicates(tuple(d.name for d in self._datasets)))
                      .with_outputs(TALLIES, main="items"))
            items = merged.items
            errors.append(hashed[ERRORS])
            tallies.append(merged[TALLIES])
        return _Read(items=items, errors=errors | "AllErrors" >> beam.Flatten(),
                     tallies=tallies | "AllTallies" >> beam.Flatten())


class PrepareImages(beam.DoFn):
    """The extract job's step: an item with a ``uri`` -> (item, uint8 pixels); failures -> ``errors`` rows."""

    def __init__(self, image_size: int, max_pixels: int, max_bytes: int | None = None):
        self._image_size = image_size
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes

    def process(self, item):
        result = read_and_prepare(item.uri, item.uri, self._image_size, self._max_pixels, self._max_bytes)
        if isinstance(result, ErrorRow):
            copies = getattr(item, "copies", ())  # files of the same content merged into this item: rows too
            counter("images_failed").inc(1 + len(copies))
            counter(f"images_failed_{result.error}").inc(1 + len(copies))
            yield beam.pvalue.TaggedOutput(ERRORS, result)
            for copy in copies:
                yield beam.pvalue.TaggedOutput(ERRORS, result._replace(
                    image_uri=copy, message=f"{result.message} (the same file as {item.uri})"))
            return
        counter("images_decoded").inc()
        yield item, result.pixels


class _Featured(typing.NamedTuple):
    features: beam.PCollection  # (item, float32 features)
    errors: beam.PCollection  # ErrorRow


@beam.ptransform_fn
def FeaturesOfItems(items, handler: ModelHandler, image_size: int, max_pixels: int):  # pylint: disable=invalid-name
    """Items with a ``uri`` (the extract job's `WorkItem`s) -> (item, features) and error rows; a reshuffle spreads
    the items over workers first (they come out of one join)."""
    prepared = (items
                | "Reshuffle" >> beam.Reshuffle()
                | "PrepareImages" >> beam.ParDo(PrepareImages(image_size, max_pixels)).with_outputs(
                    ERRORS, main="pixels"))
    return _Featured(features=prepared.pixels | "Features" >> ExtractFeatures(handler), errors=prepared[ERRORS])
