"""The named elements that cross the jobs' steps (rows are `schemas.tables.CaptionRow`/`ErrorRow`).

    InputRef ──ExpandInputs──▶ WorkUnit ──(redistributed)──▶ ReadUnits ──▶ PreparedImage ──(ImageKey, pixels)──▶
        ExtractFeatures ──(ImageKey, features)──▶ GenerateCaptions ──▶ CaptionRow

Only `InputRef`s and `WorkUnit`s (URIs and member offsets, never image bytes) go through a shuffle; pixels and
features stay inside one fused stage.
"""
import typing

import apache_beam as beam
import numpy as np

ERRORS = "errors"  # the output tag of the error rows of every step that can fail on an input


class InputRef(typing.NamedTuple):
    """A file chosen to be read: an image, or an archive whose members are read as a stream.

    ``uri`` is the text of output rows; ``location`` the path to open when it differs from ``uri`` (a local path that is
    not UTF-8, as bytes), else empty. For an archive, ``done`` holds the member parts of URIs already in the outputs
    (`beam_jobs.naming.ITSELF`: the archive's own URI) and ``claimed`` the member parts that loose inputs already name;
    both are passed over while streaming. ``listed``: member parts that lists name (each gets a row, if only to say the
    archive has no such member). ``only``: when not empty, the archive is no input itself and only these members (named
    by a list) are read.
    """
    uri: str
    kind: str  # naming.IMAGE or naming.ARCHIVE
    location: bytes = b""
    done: typing.Sequence[str] = ()
    claimed: typing.Sequence[str] = ()
    listed: typing.Sequence[str] = ()
    only: typing.Sequence[str] = ()

    def path(self) -> str:
        return self.location.decode("utf-8", "surrogateescape") if self.location else self.uri


class WorkUnit(typing.NamedTuple):
    """What one worker reads: a loose image file (``kind`` image, no spans), or up to a few dozen members of an archive
    as references (`beam_jobs.caption.archives.MemberSpan`: where each member's bytes are), so that one archive's
    members spread over every worker. ``archive_size``: the archive's size when it was indexed (a changed archive is not
    read); ``number``: the unit's place among its archive's units."""
    uri: str
    kind: str  # naming.IMAGE or naming.ARCHIVE
    location: bytes = b""  # as InputRef.location
    spans: tuple = ()
    archive_size: int = 0
    number: int = 0

    def path(self) -> str:
        return self.location.decode("utf-8", "surrogateescape") if self.location else self.uri


class MemberReference(typing.NamedTuple):
    """A list line naming one member of an archive (``ARCHIVE!MEMBER``, as in the outputs)."""
    archive: str  # the archive's URI
    member: str  # the member part, canonical (`sources.canonical_member`)
    location: bytes  # the archive's local path when it is not its URI (`InputRef.location`)


class ImageKey(typing.NamedTuple):
    """What travels with an image's pixels and features: its URI and upright size, and for a member of a WebDataset
    sample that sample's fields ((column, value) pairs of `schemas.tables.SAMPLE_COLUMNS`)."""
    uri: str
    width: int
    height: int
    sample: tuple = ()


class PreparedImage(typing.NamedTuple):
    """An image decoded and resized for the backbone (`schemas.images.prepare_image`)."""
    key: ImageKey
    pixels: np.ndarray  # uint8 [image_size, image_size, 3]


class Tally(typing.NamedTuple):
    """A count the extract job reports in metadata.json: images and captions of a split, error rows of a class,
    and statistics of the dataset that are no input's failure."""
    kind: str
    name: str  # the split, the error class or the statistic
    value: int
    SPLIT_IMAGES = "split_images"
    DATASET_IMAGES = "dataset_images"
    DATASET_CAPTIONS = "dataset_captions"
    DATASET_DUPLICATES = "dataset_duplicates"
    DATASET_LEFT_OUT = "dataset_left_out_of_train"
    SPLIT_CAPTIONS = "split_captions"
    ERROR = "error"
    STAT = "stat"


# Pixels have no Beam schema type; they never leave a fused stage, so a plain pickling coder is enough.
beam.coders.registry.register_coder(PreparedImage, beam.coders.PickleCoder)
