"""Reading a captioned dataset in a pipeline: captions, split lists and image files joined per image name.

    dataset = pipeline | ReadDataset(layout)   # -> .items (WorkItem), .errors (ErrorRow), .tallies (Tally)

The files are found and validated on the launching machine by `beam_jobs.dataset`; here they are read in
parallel with the same parsing (`dataset.parse_caption_line`). Each image name ends as a `WorkItem` (it has a file,
a split and at least one usable caption), an error row (listed in a split but no file, or no usable caption), or a
`Tally` of what is reported without being an input's failure (captions without an image, images in no split).
"""
import posixpath
import typing

import apache_beam as beam
from apache_beam.io import fileio

from beam_jobs import dataset
from beam_jobs.elements import ERRORS, Tally
from beam_jobs.runtime import counter
from schemas import captions, images, tables
from schemas.records import MetadataKeys

TALLIES = "tallies"


class WorkItem(typing.NamedTuple):
    """One image to featurize: its id (file name), split, location and cleaned captions."""
    image_id: str
    split: str
    uri: str
    captions: tuple


def _parse_caption(line: str, caption_format: str):
    parsed = dataset.parse_caption_line(line, caption_format)
    if parsed is not None:
        yield parsed.image, (parsed.index, parsed.caption)


@beam.ptransform_fn
def ReadCaptions(pbegin, layout: dataset.DatasetLayout):  # pylint: disable=invalid-name
    """-> (image name, (index or None, raw caption))"""
    skip = 1 if layout.caption_format == dataset.CSV_FORMAT else 0
    return (pbegin
            | "ReadLines" >> beam.io.ReadFromText(layout.captions_file, skip_header_lines=skip,
                                                  strip_trailing_newlines=True)
            | "Parse" >> beam.FlatMap(_parse_caption, layout.caption_format))


@beam.ptransform_fn
def ReadSplits(pbegin, split_files: dict):  # pylint: disable=invalid-name
    """-> (image name, split)"""
    per_split = []
    for split, path in split_files.items():
        per_split.append(
            pbegin
            | f"Read[{split}]" >> beam.io.ReadFromText(path)
            | f"Names[{split}]" >> beam.Map(str.strip)
            | f"NonBlank[{split}]" >> beam.Filter(bool)
            | f"Tag[{split}]" >> beam.Map(lambda name, split=split: (name, split)))
    return per_split | "Flatten" >> beam.Flatten()


@beam.ptransform_fn
def ListImages(pbegin, images_dir: str):  # pylint: disable=invalid-name
    """-> (image name, uri) for every file in the images directory."""
    return (pbegin
            | "Match" >> fileio.MatchFiles(posixpath.join(images_dir, "*"))
            | "ByName" >> beam.Map(lambda metadata: (posixpath.basename(metadata.path), metadata.path)))


@beam.typehints.with_output_types(WorkItem)
class ClassifyImages(beam.DoFn):
    """Joins captions, splits and files per image name and decides what becomes of each name.

    Main output: `WorkItem`s. ``errors``: images listed in a split that cannot be used (no file, no caption).
    ``tallies``: what is reported but is not an error of an input image.
    """
    def __init__(self, images_dir: str):
        self._images_dir = images_dir

    def _tally(self, name: str, value: int):
        counter(name).inc(value)
        return beam.pvalue.TaggedOutput(TALLIES, Tally(Tally.STAT, name, value))

    def process(self, element):
        name, joined = element
        raw_captions = sorted(joined["captions"], key=lambda c: (-1 if c[0] is None else c[0], c[1]))
        splits, files = sorted(joined["splits"]), sorted(joined["files"])
        if not files:
            if raw_captions:
                yield self._tally(MetadataKeys.CAPTIONS_WITHOUT_IMAGE, len(raw_captions))
            for split in splits:
                counter("images_missing").inc()
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    posixpath.join(self._images_dir, name), images.MISSING_FILE,
                    f"{name} is listed in the {split} split but there is no such file in {self._images_dir}"))
            return
        if not splits:
            yield self._tally(MetadataKeys.IMAGES_WITHOUT_SPLIT, 1)
            return
        cleaned = [captions.normalize_caption(caption) for _, caption in raw_captions]
        kept = tuple(caption for caption in cleaned if caption)
        if len(kept) < len(cleaned):
            yield self._tally(MetadataKeys.CAPTIONS_EMPTY, len(cleaned) - len(kept))
        if not kept:
            counter("images_without_captions").inc()
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                files[0], images.NO_CAPTIONS,
                f"{name} is in the {splits[0]} split but has no usable caption in the captions file"))
            return
        yield WorkItem(image_id=name, split=splits[0], uri=files[0], captions=kept)


class _Dataset(typing.NamedTuple):
    items: beam.PCollection  # WorkItem
    errors: beam.PCollection  # ErrorRow
    tallies: beam.PCollection  # Tally


class ReadDataset(beam.PTransform):
    """A dataset layout -> `WorkItem`s to featurize, error rows, and tallies for the metadata."""

    def __init__(self, layout: dataset.DatasetLayout):
        super().__init__()
        self._layout = layout

    def expand(self, pbegin):
        layout = self._layout
        joined = ({"captions": pbegin | "ReadCaptions" >> ReadCaptions(layout),
                   "splits": pbegin | "ReadSplits" >> ReadSplits(layout.split_files),
                   "files": pbegin | "ListImages" >> ListImages(layout.images_dir)}
                  | "JoinByImage" >> beam.CoGroupByKey())
        classified = joined | "ClassifyImages" >> beam.ParDo(ClassifyImages(layout.images_dir)).with_outputs(
            ERRORS, TALLIES, main="items")
        return _Dataset(items=classified.items, errors=classified[ERRORS], tallies=classified[TALLIES])
