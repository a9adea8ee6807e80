"""How the caption job reads its inputs: image files and archive members -> `PreparedImage`s (pixels).

Bytes are read and decoded inside one DoFn, so that no image byte ever travels between stages: `ExpandInputs` turns
`InputRef`s into `WorkUnit`s (an image file, or a few dozen members of an archive as offsets), which are
redistributed over the workers; `ReadUnits` reads each unit's bytes and emits `PreparedImage`s, decoding on
background threads (`--read_threads`) so that it overlaps the model's work on the previous batch. Every
failure becomes an error row (`schemas.tables.ErrorRow`) on the ``errors`` output instead of failing the job, and
an unexpected exception is an ``internal_error`` row for the input it happened on.
"""
import collections
import logging
import queue
import threading
import typing
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import naming, runtime
from beam_jobs.caption import archives
from beam_jobs.caption.archives import units
from beam_jobs.elements import ERRORS, InputRef, PreparedImage, WorkUnit
from beam_jobs.features import prepare_bytes, read_and_prepare
from beam_jobs.runtime import counter
from schemas import images, tables
from schemas.tables import ErrorRow

DEFAULT_READ_THREADS = 2
_PENDING_BYTES = 256 * 1024 * 1024  # archive member bytes waiting for a decode thread, at most
# archive members read ahead of the decoding: enough to keep the decode threads busy while the next is read, few
# enough that a worker's memory reaches its plateau within a unit (8 photos of 12 MB: 96 MB)
_READ_AHEAD_MEMBERS = 8


class _OrderedPool:
    """Runs calls on background threads and hands their results back in the order they were submitted, keeping at
    most ``depth`` calls in flight (a call on a file holds a path, not bytes: it reads them itself)."""

    def __init__(self, threads: int, depth: int):
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imcap-decode")
        self._pending = collections.deque()
        self._depth = depth

    def submit(self, function, *args):
        """Submits a call; returns the results that had to be waited for to stay within the bound."""
        self._pending.append(self._executor.submit(function, *args))
        done = []
        while len(self._pending) > self._depth:
            done.append(self._pop())
        while self._pending and self._pending[0].done():
            done.append(self._pop())
        return done

    def _pop(self):
        return self._pending.popleft().result()

    def drain(self):
        while self._pending:
            yield self._pop()

    def submit_unordered(self, function, *args):
        """A future of the call, outside the ordered queue (the caller keeps the order)."""
        return self._executor.submit(function, *args)

    def shutdown(self):
        self._executor.shutdown(wait=True, cancel_futures=True)


class _ReadAhead:
    """Iterates an archive's events on a background thread, ahead of the consumer: an image member's decoding is
    submitted to the decode threads as soon as its bytes are read, so that reading, decompressing and decoding all
    overlap the model's work. Yields (event without its bytes, future of the prepared image or None), in order;
    at most ``depth`` events and `_PENDING_BYTES` of member bytes wait for the consumer."""

    _END = object()

    def __init__(self, events, submit, depth: int, reader: ThreadPoolExecutor | None = None):
        """``reader``: a one-thread executor to read on (one long-lived thread for every unit a worker reads: a new
        thread per unit would make the allocator spread member buffers over new arenas, and memory grow with the
        number of units); without it, a thread of its own."""
        self._events, self._submit = events, submit
        self._queue = queue.Queue(maxsize=max(depth, 1))
        self._pending_bytes = 0
        self._space = threading.Condition()
        self._stopped = False
        if reader is not None:
            reader.submit(self._produce)
        else:
            threading.Thread(target=self._produce, name="imcap-archive-reader", daemon=True).start()

    def _put(self, item) -> bool:
        while not self._stopped:
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self):
        try:
            for event in self._events:
                future, size = None, 0
                if isinstance(event, archives.MemberData):
                    size = len(event.data)
                    with self._space:
                        while self._pending_bytes > _PENDING_BYTES and not self._stopped:
                            self._space.wait(0.2)
                        self._pending_bytes += size
                    future = self._submit(event.uri, event.data)
                    event = event._replace(data=b"")
                if not self._put((event, future, size)):
                    return
            self._put((self._END, None, 0))
        except BaseException as error:  # handed to the consumer, which decides what becomes of it
            self._put((error, None, 0))
        finally:
            close = getattr(self._events, "close", None)
            if close:
                close()

    def stop(self):
        self._stopped = True
        with self._space:
            self._space.notify_all()

    def __iter__(self):
        try:
            while True:
                item, future, size = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                result = future.result() if future is not None else None
                with self._space:
                    self._pending_bytes -= size
                    self._space.notify_all()
                yield item, result
        finally:
            self.stop()


@beam.typehints.with_input_types(InputRef)
@beam.typehints.with_output_types(WorkUnit)
class ExpandInputs(beam.DoFn):
    """`InputRef` -> `WorkUnit`s (main) and `ErrorRow`s (``errors``).

    An image file is one unit. An archive is indexed here (`beam_jobs.caption.archives.index_archive`: a zip's
    directory, a tar's headers; a compressed tar decompressed once into spill files) and cut into units of member
    references (`beam_jobs.caption.archives.units`), passing over the members its ref marks as done or claimed; every
    entry that is no image to read gets its row here. No member's bytes leave this step (those of a compressed tar go to
    files).
    """

    def __init__(self, limits: archives.Limits, spill_dir: str, unit_members: int = units.DEFAULT_UNIT_MEMBERS,
                 unit_bytes: int = units.DEFAULT_UNIT_BYTES):
        self._limits, self._spill_dir = limits, spill_dir
        self._unit_members, self._unit_bytes = unit_members, unit_bytes

    def process(self, ref: InputRef):
        if ref.kind != naming.ARCHIVE:
            yield WorkUnit(uri=ref.uri, kind=ref.kind, location=ref.location)
            return
        yield from self._archive(ref)

    @staticmethod
    def _size(path: str) -> int | None:
        """The archive's size now (its name is a name, never a glob: ``a[1].tar`` is that file)."""
        try:
            return FileSystems.get_filesystem(path).metadata(path).size_in_bytes
        except Exception:  # no such file, or a filesystem that cannot say: reading it will tell
            return None

    def _archive(self, ref: InputRef):
        """Indexes an archive: its units, and every entry's row (``only``: just the members a list names, the
        archive being no input itself). Members a list names that the archive turns out not to hold get a row."""
        done, claimed, listed = set(ref.done), set(ref.claimed), set(ref.listed) | set(ref.only)
        whole = not ref.only
        prefix = ref.uri + tables.MEMBER_SEPARATOR
        seen, stop, damage = set(), None, None
        archive_row_written = naming.ITSELF in done
        counter("archives_read").inc()
        spill = units.SpillWriter(self._spill_dir, ref.uri)
        builder = units.UnitBuilder(ref.uri, ref.location, self._size(ref.path()), self._unit_members,
                                    self._unit_bytes, spill)
        try:
            events = units.group_samples(archives.index_archive(
                ref.uri, ref.path(), skip=done | claimed, only=None if whole else set(ref.only), limits=self._limits,
                spill=spill), ref.uri)
            for event in events:
                part = naming.ITSELF if event.uri == ref.uri else event.uri[len(prefix):]
                if isinstance(event, archives.MemberFailure):
                    if part == naming.ITSELF:
                        stop = event
                    elif part.startswith(naming.POSITION_MARK):
                        damage = damage or event
                if not whole and part not in listed:
                    continue  # not an input: only the members the list names are
                first_time = part not in seen
                seen.add(part)
                if isinstance(event, archives.MemberSpan):
                    counter("archive_members_indexed").inc()
                    unit = builder.add(event)
                    if unit is not None:
                        yield unit
                elif isinstance(event, units.SamplePart):
                    counter("sample_parts").inc()
                    if part in listed and part not in done and first_time:  # a list named it: an input, so a row
                        yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                            event.uri, images.NOT_AN_IMAGE, "a part of a WebDataset sample (its text and JSON are "
                                                            "in the caption row of the sample's image), not an image"))
                elif isinstance(event, archives.MemberSkipped) and event.reason == archives.SKIPPED_DUPLICATE:
                    counter("duplicate_inputs").inc()
                elif part in claimed:
                    counter("duplicate_inputs").inc()
                elif part in done or not first_time:
                    counter("skipped_existing").inc()
                elif isinstance(event, archives.MemberFailure):
                    archive_row_written = archive_row_written or part == naming.ITSELF
                    yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(event.uri, event.error_class,
                                                                            event.message))
        except archives.SpillFailed:
            raise  # not the archive's fault: the bundle fails and the runner retries it
        except Exception as error:
            if whole and not archive_row_written:
                archive_row_written = True
                yield beam.pvalue.TaggedOutput(ERRORS, runtime.internal_error_row(ref.uri, error))
            elif whole:
                logging.error("internal error on archive %s after its own row was written", ref.uri, exc_info=error)
                counter("internal_errors_without_row").inc()
            stop = archives.MemberFailure(ref.uri, images.INTERNAL_ERROR, images.describe_error(error))
        unit = builder.finish()
        if unit is not None:
            yield unit
        counter("archive_units").inc(builder.units)
        counter("spill_files").inc(len(spill.paths))
        counter("duplicate_inputs").inc(len(set(ref.listed) & seen))  # listed, and read as part of the archive
        for part in sorted(listed - seen - done - claimed):
            yield beam.pvalue.TaggedOutput(ERRORS, self._unread_member(ref.uri, prefix + part, stop, damage))

    @staticmethod
    def _unread_member(archive_uri: str, uri: str, stop, damage) -> ErrorRow:
        """The row of a member a list names that the archive did not yield."""
        if stop is not None and stop.error_class == images.MISSING_FILE:
            return tables.error_row(uri, images.MISSING_FILE, f"no such archive: {archive_uri}")
        if stop is not None:
            return tables.error_row(uri, stop.error_class, f"a member of {archive_uri}, whose reading stopped before "
                                                           f"it: {stop.message}")
        if damage is not None:
            return tables.error_row(uri, images.CORRUPT_ARCHIVE, f"no member of this name was read from "
                                                                 f"{archive_uri}, which has damage: {damage.message}")
        return tables.error_row(uri, images.MISSING_FILE, f"no member of this name in {archive_uri}")


@beam.typehints.with_input_types(WorkUnit)
@beam.typehints.with_output_types(PreparedImage)
class ReadUnits(beam.DoFn):
    """`WorkUnit` -> `PreparedImage` per image (main output) and `ErrorRow`s (``errors``).

    An image file is read (at most ``max_image_bytes``) and decoded on a background thread. An archive's unit is
    read member by member where its spans say (`beam_jobs.caption.archives.read_spans`: the archive opened once, each
    member range-read) on a read-ahead thread, and each member's bytes go straight to a decode thread. Nothing
    leaves this DoFn but pixels and rows.
    """

    def __init__(self, image_size: int, max_pixels: int, limits: archives.Limits,
                 read_threads: int = DEFAULT_READ_THREADS, depth: int = 32):
        self._image_size, self._max_pixels, self._limits = image_size, max_pixels, limits
        self._threads, self._depth = read_threads, depth
        self._pool = self._reader = self._read_ahead = self._progress = None

    def setup(self):
        self._pool = _OrderedPool(self._threads, self._depth)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imcap-archive-reader")
        self._progress = runtime.ProgressLog("work units read (files and parts of archives)")

    def teardown(self):
        if self._read_ahead is not None:
            self._read_ahead.stop()  # a unit left unfinished (its consumer stopped) must not hold the reader thread
        if self._pool is not None:
            self._pool.shutdown()
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)

    def _outputs(self, results):
        for result in results:
            if isinstance(result, PreparedImage):
                counter("images_decoded").inc()
                yield result
            else:
                yield beam.pvalue.TaggedOutput(ERRORS, result)

    def process(self, unit: WorkUnit, total: int = 0):
        self._progress.add(total=total)
        if unit.kind != naming.ARCHIVE:
            try:
                yield from self._outputs(self._pool.submit(
                    read_and_prepare, unit.uri, unit.path(), self._image_size, self._max_pixels,
                    self._limits.max_member_bytes))
            except Exception as error:
                yield beam.pvalue.TaggedOutput(ERRORS, runtime.internal_error_row(unit.uri, error))
            return
        samples = {span.uri: span.sample for span in unit.spans if span.sample}
        written = set()
        try:
            events = archives.read_spans(unit.spans, unit.path(), self._limits, unit.archive_size or None)
            read_ahead = self._read_ahead = _ReadAhead(events, lambda uri, data: self._pool.submit_unordered(
                prepare_bytes, uri, data, self._image_size, self._max_pixels, samples.get(uri, ())),
                min(self._depth, _READ_AHEAD_MEMBERS), self._reader)
            for event, prepared in read_ahead:
                written.add(event.uri)
                if isinstance(event, archives.MemberData):
                    counter("archive_members").inc()
                    yield from self._outputs([prepared])
                else:
                    yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(event.uri, event.error_class,
                                                                            event.message))
        except Exception as error:  # each member not yet handed out gets its row; the unit's other rows stand
            for span in unit.spans:
                if span.uri not in written:
                    yield beam.pvalue.TaggedOutput(ERRORS, runtime.internal_error_row(span.uri, error))

    def finish_bundle(self):
        for output in self._outputs(self._pool.drain()):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, MIN_TIMESTAMP, [GlobalWindow()]))
            else:
                yield WindowedValue(output, MIN_TIMESTAMP, [GlobalWindow()])


class _ReadImages(typing.NamedTuple):
    images: beam.PCollection  # PreparedImage
    errors: beam.PCollection  # ErrorRow


class ReadImages(beam.PTransform):
    """`InputRef`s -> (`PreparedImage`s, `ErrorRow`s): archives indexed and cut into work units,
    which are redistributed over the workers (references only), then files and members read and decoded.

    Why explicit units and a redistribution rather than a splittable DoFn: it is what Beam's own ReadAll file
    transforms do (`ReadAllFiles`: ranges, then Reshuffle), every runner distributes a Reshuffle's output over
    its workers (Dataflow's shuffle, Flink's keyed exchange, the local runner's worker processes), whereas splitting
    a splittable DoFn's restriction is up to the runner (Flink's portable runner splits only at the start, the local
    runner not across processes). The units are known before any member is read, so the runner sees them all.
    """

    def __init__(self, image_size: int, max_pixels: int, limits: archives.Limits, spill_dir: str,
                 read_threads: int = DEFAULT_READ_THREADS, depth: int = 32,
                 unit_members: int = units.DEFAULT_UNIT_MEMBERS, unit_bytes: int = units.DEFAULT_UNIT_BYTES):
        super().__init__()
        self._expand = ExpandInputs(limits, spill_dir, unit_members, unit_bytes)
        self._read = ReadUnits(image_size, max_pixels, limits, read_threads, depth)

    def expand(self, refs):
        expanded = refs | "ExpandInputs" >> beam.ParDo(self._expand).with_outputs(ERRORS, main="units")
        work = expanded.units | "Redistribute" >> beam.Reshuffle()
        total = work | "CountUnits" >> beam.combiners.Count.Globally()  # known before any member is read
        read = work | "ReadUnits" >> beam.ParDo(self._read, beam.pvalue.AsSingleton(total)).with_outputs(
            ERRORS, main="images")
        errors = (expanded[ERRORS], read[ERRORS]) | "ReadErrors" >> beam.Flatten()
        return _ReadImages(images=read.images, errors=errors)
