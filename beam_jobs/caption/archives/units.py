"""An archive's index cut into work units, WebDataset samples, and the spill of compressed tars.

    spill = SpillWriter(spill_dir, archive_uri)              # compressed tars only
    events = group_samples(index_archive(uri, ..., spill=spill), archive_uri)
    builder = UnitBuilder(ref, max_members, max_bytes, spill)
    for event in events: unit = builder.add(span) ...        # -> WorkUnit(uri, spans), each read by `read_spans`

Work units (`beam_jobs.elements.WorkUnit`) are references, not bytes: an archive URI and the spans (offset, size)
of up to `DEFAULT_UNIT_MEMBERS` members or `DEFAULT_UNIT_BYTES` bytes, so that one archive's members spread over
every worker after a redistribution, and each worker range-reads only its own members. A unit of 32 members is
about 2 s of one vCPU's work at the int8 rate (15 images/s per vCPU, BENCHMARKS.md, feature backends): small enough
that a 1,000-photo archive makes 32 units for a handful of workers, large enough that opening the archive once per unit
(one request on an object store) is noise. The byte cap keeps a unit of big members (12 MB photos) at a few seconds
too.

A compressed tar cannot be seeked: its indexing reader decompresses it once, sequentially, and `SpillWriter` writes
its image members into segment files of the run (``OUT/beam-temp-spill-runK/``), whose spans the units then carry;
the segments are deleted when the run's outputs are committed. Memory stays one member; the cost is writing and
reading the members' bytes once more (BENCHMARKS.md, scaling out measures it against the decompression itself).

WebDataset / img2dataset shards (`group_samples`): members that share a key (``000123.jpg``, ``000123.txt``,
``000123.json``; the key is the name up to the first dot of its last component, as the webdataset library splits
it) are one sample. A sample's image spans carry its key, the ``.txt``/``.caption`` text, the ``.json`` document
and the ``url`` in it (or in a ``.url`` member); its other members are parts of the sample, not error rows. A
member that shares no key with an image is reported as before (``not_an_image``).
"""
import hashlib
import json
import posixpath
import re
import typing

from apache_beam.io.filesystems import FileSystems

from beam_jobs import naming
from beam_jobs.caption.archives.common import (
    SPILL_SPAN,
    MemberFailure,
    MemberSkipped,
    MemberSpan,
    MemberText,
    not_an_image_message,
)
from beam_jobs.elements import WorkUnit
from schemas import images, tables

DEFAULT_UNIT_MEMBERS = 32
DEFAULT_UNIT_BYTES = 64 * 1024 * 1024
MAX_SAMPLE_GROUP = 1024  # members of one key held at a time; a longer run of one key is no sample
SPILL_SUFFIX = ".bin"
SAMPLE_KEY, SAMPLE_URL, SAMPLE_TEXT, SAMPLE_JSON = tables.SAMPLE_COLUMNS
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext: key, extension


def sample_key(member: str) -> str | None:
    """The WebDataset key of a member name (``dir/000123.seg.jpg`` -> ``dir/000123``); None without an extension."""
    match = _KEY.match(member)
    return match.group(1) if match else None


class SamplePart(typing.NamedTuple):
    """A member that is part of an image's sample (its text, JSON, or anything else): no row of its own."""
    uri: str


def _member_part(uri: str, prefix: str) -> str | None:
    if not uri.startswith(prefix):
        return None
    member = uri[len(prefix):]
    return None if member.startswith(naming.POSITION_MARK) else member


def _fields(texts: list[MemberText], prefix: str, key: str) -> tuple:
    """The sample's columns from its text members (the first of each kind)."""
    fields = {SAMPLE_KEY: key}
    for text in texts:
        extension = posixpath.splitext(text.uri[len(prefix):])[1].lower()
        value = tables.valid_text(text.data.decode("utf-8", "replace"))
        if extension in (".txt", ".text", ".caption"):
            fields.setdefault(SAMPLE_TEXT, value.strip())
        elif extension == ".url":
            fields.setdefault(SAMPLE_URL, value.strip())
        elif extension == ".json":
            try:
                document = json.loads(value)
            except (ValueError, RecursionError):
                continue  # not JSON: not kept as the sample's JSON
            fields.setdefault(SAMPLE_JSON, value)
            if isinstance(document, dict) and isinstance(document.get("url"), str):
                fields.setdefault(SAMPLE_URL, tables.valid_text(document["url"]))  # JSON can escape lone surrogates
    return tuple(sorted(fields.items()))


def group_samples(events, archive_uri: str):
    """Index events with WebDataset samples resolved: spans carry their sample's fields; a text member or a
    ``not_an_image`` member beside an image of the same key is a `SamplePart`; one beside none is a row, as before.
    Members of one key must be consecutive (as in every WebDataset shard)."""
    prefix = archive_uri + tables.MEMBER_SEPARATOR
    group, group_key = [], None

    def is_image(event) -> bool:
        """A span, or an image member passed over (done by an earlier run) or failed (too large, ...)."""
        return isinstance(event, MemberSpan) or (
            not isinstance(event, MemberText) and naming.kind_of(event.uri[len(prefix):]) == naming.IMAGE)

    def flush():
        has_image = any(is_image(event) for event in group)
        texts = [event for event in group if isinstance(event, MemberText)]
        fields = _fields(texts, prefix, group_key) if has_image else ()
        for event in group:
            if isinstance(event, MemberSpan):
                yield event._replace(sample=fields)
            elif is_image(event):
                yield event  # its row (or its skip) as before
            elif has_image:
                yield SamplePart(event.uri)
            elif isinstance(event, MemberText):
                name = naming.unescape_member_name(event.uri[len(prefix):])
                yield MemberFailure(event.uri, images.NOT_AN_IMAGE, not_an_image_message(name))
            else:
                yield event
        group.clear()

    try:
        for event in events:
            member = _member_part(event.uri, prefix)
            key = sample_key(member) if member is not None else None
            groupable = key is not None and (isinstance(event, (MemberSpan, MemberText, MemberSkipped)) or (
                isinstance(event, MemberFailure) and naming.kind_of(member) != naming.ARCHIVE))
            if not groupable:
                yield event
                continue
            if key != group_key or len(group) >= MAX_SAMPLE_GROUP:
                yield from flush()
                group_key = key
            group.append(event)
    except Exception:
        yield from flush()  # what was indexed before a failure is kept; then the failure goes on to the caller
        raise
    yield from flush()


class SpillWriter:
    """Writes a compressed tar's image members into segment files (``<archive digest>-NNNNNN.bin``) under the run's
    spill folder and gives their spans; `close_segment` before a unit that refers to them leaves the step.
    Segment names are fixed by the archive and their order, so a retried bundle rewrites the same files."""

    def __init__(self, directory: str, archive_uri: str):
        self._directory = directory
        self._stem = hashlib.sha256(archive_uri.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        self._segment, self._handle, self._path, self._offset = 0, None, "", 0
        self.paths: list[str] = []

    def __call__(self, uri: str, position: int, data: bytes) -> MemberSpan:
        if self._handle is None:
            self._path = FileSystems.join(self._directory, f"{self._stem}-{self._segment:06d}{SPILL_SUFFIX}")
            self._handle = FileSystems.create(self._path)
            self._offset = 0
            self.paths.append(self._path)
        self._handle.write(data)
        span = MemberSpan(uri, position, SPILL_SPAN, self._offset, len(data), source=self._path)
        self._offset += len(data)
        return span

    def close_segment(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._segment += 1


def is_spill_name(name: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{20}-\d{6}" + re.escape(SPILL_SUFFIX), name))


class UnitBuilder:
    """Spans -> `WorkUnit`s of at most ``max_members`` members and ``max_bytes`` bytes (a member larger than the
    byte cap is a unit of its own)."""

    def __init__(self, uri: str, location: bytes, archive_size: int | None, max_members: int = DEFAULT_UNIT_MEMBERS,
                 max_bytes: int = DEFAULT_UNIT_BYTES, spill: SpillWriter | None = None):
        self._uri, self._location, self._archive_size = uri, location, archive_size
        self._max_members, self._max_bytes, self._spill = max_members, max_bytes, spill
        self._spans: list[MemberSpan] = []
        self._bytes = 0
        self.units = 0

    def add(self, span: MemberSpan) -> WorkUnit | None:
        """Adds a span; returns the unit it completes, if any."""
        self._spans.append(span)
        self._bytes += span.size
        if len(self._spans) >= self._max_members or self._bytes >= self._max_bytes:
            return self._emit()
        return None

    def finish(self) -> WorkUnit | None:
        unit = self._emit() if self._spans else None
        if self._spill is not None:
            self._spill.close_segment()
        return unit

    def _emit(self) -> WorkUnit:
        if self._spill is not None:
            self._spill.close_segment()  # a unit refers only to complete files
        unit = WorkUnit(uri=self._uri, kind=naming.ARCHIVE, location=self._location, spans=tuple(self._spans),
                        archive_size=self._archive_size or 0, number=self.units)
        self._spans, self._bytes = [], 0
        self.units += 1
        return unit
