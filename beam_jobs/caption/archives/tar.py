"""Tar archives (plain, gzip, bzip2, xz) read as one stream: every entry accounted for, reading resumed after
damaged headers, hard links resolved by a second pass (or from the index), the expansion of compressed archives
capped. Read whole (`TarReader` without ``spill``) or indexed for readers that come later (with it)."""
import tarfile
from typing import Callable, Iterator

from beam_jobs import naming
from beam_jobs.caption.archives.common import (
    BLOCK,
    MAX_SAMPLE_FIELD_BYTES,
    SKIPPED_DONE,
    SKIPPED_UNWANTED,
    STREAM_ERRORS,
    TAR_SPAN,
    Event,
    Limits,
    MemberData,
    MemberFailure,
    MemberSkipped,
    MemberSpan,
    MemberText,
    SpillFailed,
    Stop,
    Truncated,
    is_image_name,
    is_sample_field_name,
    not_an_image_message,
    passed_over,
    too_large_message,
)
from beam_jobs.caption.archives.tar_format import (
    NO_INPUT_TYPES,
    REGULAR_TYPES,
    SPECIAL_TYPES,
    TarDamage,
    TarEntry,
    TarStream,
    TarWalker,
)
from schemas import images
from schemas.images import describe_error


class TarReader:
    """``spill``: index the archive instead of reading it (`archives.index_archive`): image members are
    `MemberSpan`s (where their bytes are) instead of `MemberData`, and a compressed tar's members, which no later
    reader can seek to, are handed to ``spill(uri, position, data) -> MemberSpan`` on the way (it writes them where
    a later reader can; its failure is `SpillFailed`, which ends the work, to be retried, not a row); small members
    that may describe a sample are `MemberText`. Hard links resolve, as when reading, by a second pass: to the
    target's offset, or (compressed) to the target's bytes spilled then."""

    def __init__(self, uri: str, open_stream: Callable, stream, head: bytes, skip, only, limits: Limits,
                 spill: Callable | None = None):
        self._uri, self._open, self._stream, self._head = uri, open_stream, stream, head
        self._skip, self._only, self._limits = skip, only, limits
        self._spill = spill
        self._index = spill is not None

    def events(self) -> Iterator[Event]:
        uri = self._uri
        try:
            stream = TarStream(uri, self._stream, self._head, self._limits)
        except Stop as stop:
            yield MemberFailure(uri, stop.error_class, stop.message)
            return
        walker = TarWalker(stream)
        kind = f"{stream.compression}-compressed tar" if stream.compression else "tar"
        self._compressed = stream.compression is not None
        seen: set[str] = set()
        links: list[tuple[int, bytes, bytes]] = []  # (position, link name, target name) of hard links to resolve
        current = None  # the entry whose data is being read, for messages
        current_has_row = current_done = False
        found_header = False
        try:
            for item in walker.entries():
                current, current_has_row, current_done = None, False, False
                if isinstance(item, TarDamage):
                    if not found_header and item.offset == 0 and item.end is None:
                        yield MemberFailure(uri, images.CORRUPT_ARCHIVE,
                                            f"not a {kind} archive: no valid tar header in its "
                                            f"{stream.position:,} bytes ({item.reason})")
                        return
                    found_header = True
                    yield self._damage(item, kind)
                    continue
                found_header = True
                current = item
                try:
                    event = self._entry_event(item, seen, links, walker)
                except (Stop, Truncated, SpillFailed, *STREAM_ERRORS):
                    raise  # they end the reading: handled below (a failed spill: by the caller, which retries)
                except Exception as error:  # e.g. MemoryError on one member: that member's row; the rest is read
                    event = MemberFailure(naming.member_uri(uri, item.name), images.INTERNAL_ERROR,
                                          f"member #{item.position}: {describe_error(error)}")
                if event is None:
                    current = None  # no row of its own (a directory, a hard link for later): nothing to blame on it
                    continue
                current_has_row = True
                current_done = isinstance(event, MemberSkipped) and event.reason == SKIPPED_DONE
                yield event
        except Truncated:
            if current_done:
                pass  # damage within a member an earlier run read: that run reported it (on the member or here)
            elif current is not None and not current_has_row:
                yield MemberFailure(naming.member_uri(uri, current.name), images.CORRUPT_ARCHIVE,
                                    f"member #{current.position} is truncated: the {kind} ends before its "
                                    f"{current.size:,} bytes")
            else:
                where = f" inside member #{current.position}" if current is not None else ""
                yield MemberFailure(uri, images.CORRUPT_ARCHIVE,
                                    f"the {kind} is truncated: it ends{where} at byte {stream.position:,}")
            yield from self._unresolved(links, "the archive is truncated before its end")
            return
        except Stop as stop:
            if current is not None and not current_has_row:
                yield MemberFailure(naming.member_uri(uri, current.name), stop.error_class,
                                    f"member #{current.position}: {stop.message}")
            yield MemberFailure(uri, stop.error_class,
                                f"reading stopped at byte {stream.position:,} after {walker.entries_seen:,} entries: "
                                f"{stop.message}; the rest of the archive is not read")
            yield from self._unresolved(links, "the archive was not read to its end")
            return
        except STREAM_ERRORS as error:
            message = (f"the {kind} is damaged at byte {stream.position:,} of its content "
                       f"({describe_error(error)})")
            if current_done:
                pass  # damage within a member an earlier run read: that run reported it (on the member or here)
            elif current is not None and not current_has_row:
                yield MemberFailure(naming.member_uri(uri, current.name), images.CORRUPT_ARCHIVE,
                                    f"member #{current.position}: {message}")
            else:
                yield MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{message}; the rest of the archive is lost")
            yield from self._unresolved(links, "the archive is damaged before its end")
            return
        if not walker.entries_seen and not found_header:
            yield MemberFailure(uri, images.EMPTY_FILE, f"the {kind} archive holds no entries")
            return
        if links:
            yield from self._resolve_links(links, kind)

    def _damage(self, damage: TarDamage, kind: str) -> MemberFailure:
        if damage.end is None:
            extent = "to the end of the archive; whatever was stored there is lost"
        else:
            extent = (f"{damage.end - damage.offset:,} bytes skipped to the next valid header at byte "
                      f"{damage.end:,}; the entry stored there is lost")
        return MemberFailure(naming.position_uri(self._uri, damage.position), images.CORRUPT_ARCHIVE,
                             f"bad header of entry #{damage.position} at byte {damage.offset:,} of the {kind} "
                             f"({damage.reason}); {extent}")

    def _entry_event(self, entry: TarEntry, seen: set, links: list, walker: TarWalker):
        """The event of one entry (None: no row); reads the data of image members."""
        if entry.type in NO_INPUT_TYPES:
            return None
        member = naming.escape_member_name(entry.name)
        uri = f"{self._uri}!{member}"
        where = f"member #{entry.position}"
        skipped = passed_over(uri, member, self._skip, self._only, seen)
        if skipped:
            if (self._index and skipped.reason == SKIPPED_UNWANTED and entry.type in REGULAR_TYPES
                    and is_sample_field_name(entry.name) and entry.size <= MAX_SAMPLE_FIELD_BYTES):
                # not an input, but maybe a field of a listed image's sample (the caller keeps it as that or nothing)
                return MemberText(uri, entry.position, walker.read_data(entry.size))
            return skipped
        if entry.problem:
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} has {entry.problem}; skipped")
        if not is_image_name(entry.name):
            if (self._index and entry.type in REGULAR_TYPES and is_sample_field_name(entry.name)
                    and entry.size <= MAX_SAMPLE_FIELD_BYTES):
                return MemberText(uri, entry.position, walker.read_data(entry.size))
            return MemberFailure(uri, images.NOT_AN_IMAGE, not_an_image_message(entry.name))
        if entry.type == tarfile.LNKTYPE:
            links.append((entry.position, entry.name, entry.link))
            return None
        if entry.type in SPECIAL_TYPES:
            target = f" to {naming.escape_member_name(entry.link)}" if entry.type == tarfile.SYMTYPE else ""
            return MemberFailure(uri, images.UNSUPPORTED_MEMBER,
                                 f"{where} is {SPECIAL_TYPES[entry.type]}{target}, not a file; not followed")
        if entry.type not in REGULAR_TYPES and not entry.type.isalpha() and entry.type not in b"0123456789":
            return MemberFailure(uri, images.CORRUPT_ARCHIVE, f"{where} has an invalid type {entry.type!r}")
        # Regular files, and unknown types, which POSIX says to read as regular files.
        if entry.size > self._limits.max_member_bytes:
            return MemberFailure(uri, images.TOO_LARGE, too_large_message(entry.size, self._limits.max_member_bytes))
        if not self._index:
            return MemberData(uri, entry.position, walker.read_data(entry.size))
        if self._compressed:
            return self._spill_member(uri, entry.position, walker.read_data(entry.size))
        offset, size = walker.data_position, walker.stream_size
        if size is not None and offset + entry.size > size:
            raise Truncated()
        return MemberSpan(uri, entry.position, TAR_SPAN, offset, entry.size)

    def _spill_member(self, uri: str, position: int, data: bytes) -> MemberSpan:
        try:
            return self._spill(uri, position, data)
        except Exception as error:
            raise SpillFailed(f"cannot write the spill file of {self._uri}: {describe_error(error)}") from error

    def _unresolved(self, links: list, why: str) -> Iterator[MemberFailure]:
        for position, name, target in links:
            yield MemberFailure(naming.member_uri(self._uri, name), images.UNSUPPORTED_MEMBER,
                                f"member #{position} is a hard link to {naming.escape_member_name(target)}, "
                                f"which was not read: {why}")

    def _resolve_links(self, links: list, kind: str) -> Iterator[Event]:
        """A second pass over the archive reads the targets of hard links (the earlier member of that name)."""
        link_targets = {name: target for _, name, target in links}

        def final_target(target: bytes) -> bytes:  # a link to a link is a link to what that one points at
            visited = set()
            while target in link_targets and target not in visited:
                visited.add(target)
                target = link_targets[target]
            return target

        wanted: dict[bytes, list[tuple[int, bytes]]] = {}
        for position, name, target in links:
            wanted.setdefault(final_target(target), []).append((position, name))

        def outcome_for(target: bytes, target_position: int, data, why: str) -> Iterator[Event]:
            """``data``: the target's bytes, or (index mode) a callable giving a link's span from its URI and
            position; None when the target cannot be read (``why``)."""
            for position, name in wanted.pop(target):
                uri = naming.member_uri(self._uri, name)
                if data is not None and target_position < position:
                    yield data(uri, position) if callable(data) else MemberData(uri, position, data)
                else:
                    yield MemberFailure(uri, images.UNSUPPORTED_MEMBER,
                                        f"member #{position} is a hard link to {naming.escape_member_name(target)}, "
                                        f"{why if data is None else 'which is not an earlier member'}")

        def indexed(walker: TarWalker, item: TarEntry):
            """Index mode: the spans of the links to ``item`` (its data's offset, or its bytes spilled once)."""
            if walker.stream_size is not None:  # uncompressed: every link reads the target's own bytes
                return lambda uri, position: MemberSpan(uri, position, TAR_SPAN, walker.data_position, item.size)
            first = {}

            def spilled(uri, position):
                if "span" not in first:
                    first["span"] = self._spill_member(uri, position, walker.read_data(item.size))
                return first["span"]._replace(uri=uri, position=position)
            return spilled

        reason = "which is not an earlier member of the archive"
        try:  # each target's bytes are read, handed out and dropped before the next one is read
            with self._open() as raw:
                head = raw.read(BLOCK)
                walker = TarWalker(TarStream(self._uri, raw, head, self._limits))
                last_link = max(position for position, _, _ in links)
                for item in walker.entries():
                    if isinstance(item, TarDamage) or item.name not in wanted:
                        continue
                    if item.position >= last_link:
                        break
                    if item.type in REGULAR_TYPES and item.size <= self._limits.max_member_bytes:
                        data = indexed(walker, item) if self._index else walker.read_data(item.size)
                        yield from outcome_for(item.name, item.position, data, "")
                    elif item.type in REGULAR_TYPES:
                        yield from outcome_for(item.name, item.position, None,
                                               too_large_message(item.size, self._limits.max_member_bytes))
                    else:
                        yield from outcome_for(item.name, item.position, None, "which is not a regular file")
        except (Stop, Truncated, *STREAM_ERRORS) as error:
            detail = error.message if isinstance(error, Stop) else describe_error(error)
            reason = f"which could not be read again ({detail})"
        for target in list(wanted):
            yield from outcome_for(target, 0, None, reason)
