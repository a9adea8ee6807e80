"""Which inputs the caption job reads: globs and list files resolved to files, then chosen on URIs alone.

    refs, early_errors = patterns | ResolveInputs()                  # InputRef per image file / archive; ErrorRow
    selected, skipped_errors = ... | SelectNewInputs(done_uris)      # each URI once, none already done

`ResolveInputs` matches the ``--input`` globs, classifies every file by name (`beam_jobs.naming`), streams list
files (one URI per line, normalized) and routes what they name. Errors found here (a file that is no image, a
list that is not text, a list inside a list, a link to a directory inside a folder) are rows at once; no file is
read but lists. A listed ``ARCHIVE!MEMBER`` that is not itself a file is a member reference: the archive is read
for those members only.

`SelectNewInputs` is the job's only join, and it is on URIs: candidates, the URIs already in the outputs
(``--skip_existing``) and the member URIs that loose files already name meet in one CoGroupByKey keyed by the file
URI (an archive member's done URI is keyed by its archive). Each URI comes out once; an archive comes out with
the member names to pass over while it is streamed. Image bytes are read after this, by `beam_jobs.caption.reading`.
"""
import codecs
import os
import re
import typing

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_jobs import naming, runtime
from beam_jobs.elements import ERRORS, InputRef, MemberReference
from beam_jobs.runtime import counter
from schemas import fileio, images, tables

LISTS, NESTED_LISTS, MEMBERS = "lists", "nested_lists", "members"
MAX_LIST_LINE_BYTES = 64 * 1024
LIST_CHUNK_BYTES = 1 << 20  # list files are read in chunks of this size
LIST_PROBE_LINES = 10_000  # a .txt whose first lines name no image or archive is not a list of inputs


def _encode(path: str) -> bytes:
    """Paths travel as bytes: a local path that is not UTF-8 is a str no coder can write."""
    return path.encode("utf-8", "surrogateescape")


def _decode(path: bytes | str) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


def _location(path: str) -> bytes:
    """The bytes to open a path by, when its text URI differs from it (a path that is not UTF-8)."""
    return b"" if naming.text_path(path) == path else _encode(path)


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # no filesystem for its scheme, or one that cannot say: reading it will tell, with a row
        return False


def _canonical_path(path: str) -> str:
    """Local paths made absolute and normalized, so that one file has one URI whatever the working directory."""
    if "://" in path:
        return naming.normalize_uri(path)
    return os.path.normpath(os.path.abspath(path))


def _local(pattern: str) -> str | None:
    """A local path or glob without its ``file://``; None for another filesystem's."""
    if pattern.startswith("file://"):
        return pattern[len("file://"):]
    return None if "://" in pattern else pattern


def effective_pattern(pattern: str) -> str:
    """The glob an --input means: a directory (a local one, or a prefix on an object store, given without glob
    characters) means every file under it, recursively (``DIR/**``)."""
    if naming.has_glob_characters(pattern):
        return pattern
    local = _local(pattern)
    if local is not None:
        return pattern.rstrip("/") + "/**" if os.path.isdir(local) else pattern
    return pattern if fileio.glob(pattern) else pattern.rstrip("/") + "/**"


def literal_paths(given: str) -> list[str] | None:
    """A local --input with glob characters that names an existing file or directory (``photos/a[1].jpg``, as the
    shell passes the files an unquoted glob expanded to): the file itself, or the files under the directory (as
    Beam lists them, no link to a directory followed). None when it is a glob to match."""
    local = _local(given)
    if local is None or not naming.has_glob_characters(local) or not os.path.lexists(local):
        return None
    if not os.path.isdir(local):
        return [local]
    return sorted(os.path.join(directory, name) for directory, _, names in os.walk(local) for name in names)


def matches_anything(given: str) -> bool:
    """Whether an --input names or matches at least one file (the launcher's check; a local glob is walked only
    until its first match)."""
    if literal_paths(given):
        return True
    pattern = effective_pattern(given)
    local = _local(pattern)
    if local is not None and _listing_root(local + "*" if local.endswith("/") else local) is not None:
        return any(kind == INPUT for kind, _ in _walk_local(pattern))
    return bool(fileio.glob(pattern))


DIRECTORY_LINK = ("a symbolic link to a directory: not followed (links inside a folder may loop); give its target "
                  "as an --input to caption it")


class MatchPatterns(beam.DoFn):
    """A glob -> the paths it matches (a pattern that matches nothing any more is an error row), and the local
    entries Beam's match passes over that look like inputs (`_walk_local`): each gets its row."""

    def process(self, encoded: bytes):
        given = _decode(encoded)
        literal = literal_paths(given)
        if literal:
            for path in literal:
                yield _encode(_canonical_path(path))
            return
        pattern = effective_pattern(given)
        local = _local(pattern)
        found, failure = False, None
        globbed = local is not None and _listing_root(local + "*" if local.endswith("/") else local) is not None
        if globbed:
            walked = _walk_local(pattern)  # streamed: a folder of millions of files is never one list
        else:
            try:
                matched = [(INPUT, metadata.path) for metadata in FileSystems.match([pattern])[0].metadata_list]
            except Exception as error:  # BeamIOError when nothing matches on some filesystems
                matched, failure = [], error
            walked = matched + [(INPUT, path) for path in _passed_over_path(pattern)]
        for kind, path in walked:
            found = True
            if kind == INPUT:
                yield _encode(_canonical_path(path))
            else:
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    naming.text_path(_canonical_path(path)), images.READ_ERROR, DIRECTORY_LINK))
        if not found:
            reason = f": {type(failure).__name__}: {failure}" if failure else ""
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                given, images.MISSING_FILE, f"--input {given} matches no file{reason}"))


def _listing_root(pattern: str) -> str | None:
    """The directory Beam's local match lists for a glob (the directory of the part before the first glob
    character); None for a path without glob characters, which Beam looks up alone."""
    prefix = re.match(r"[^[*?]*", pattern).group(0)
    return None if prefix == pattern else os.path.dirname(prefix)


def _start_of_match(pattern: str):
    """A test of whether a path is the start of some match of ``pattern`` under Beam's translation: it matches
    whole the translation of a prefix of the pattern that ends between two glob elements (a prefix whose
    translation begins the pattern's own)."""
    def body(part):
        return FileSystem.translate_pattern(part)[len("(?ms)"):-len(r"\Z")]
    whole = body(pattern)
    prefixes = {body(pattern[:end]) for end in range(len(pattern) + 1)}
    return re.compile("(?ms)(?:" + "|".join(sorted(prefix for prefix in prefixes if whole.startswith(prefix)))
                      + r")\Z").match


INPUT, DIRECTORY_LINK_FOUND = "input", "directory_link"


def _passed_over_path(pattern: str) -> list[str]:
    """A local path without glob characters that Beam's match passes over: a broken link (it gets its row)."""
    local = _local(pattern)
    return [local] if local is not None and _is_broken_link(local) else []


def _walk_local(pattern: str):
    """(`INPUT`, path) of every local entry a glob matches and (`DIRECTORY_LINK_FOUND`, path) of every link to a
    directory under which it could match, streamed as found.

    Matched as Beam matches (its own pattern translation: ``*`` stays within a directory, ``**`` does not), walked
    as Beam lists (`os.walk` from the directory before the first glob character, which follows the directory given
    but no link to a directory under it: linear in the tree, and links that loop cannot make it spin), but only
    into directories where the pattern can still match, one directory's names at a time. Besides the files Beam
    would match, the entries Beam passes over without a word although they look like inputs are inputs too, so
    that reading them gives their row: symbolic links that point nowhere (``missing_file``) or in a loop
    (``read_error``), and directories named like an image, archive or list (``read_error``). Links to directories
    are not followed, like Beam's listing and ``find`` without ``-L``, but reported (one row each), so that nothing
    under a folder is passed over in silence.
    """
    local = _local(pattern)
    if local.endswith("/"):
        local += "*"  # as Beam's match reads it
    root = _listing_root(local)
    matches = re.compile(FileSystem.translate_pattern(local)).match
    starts_a_match = _start_of_match(local[len(root):])  # of the part after the root, the only part that varies
    relative = root == ""  # a glob in its first part (``*/a.jpg``): listed from the working directory
    for directory, subdirectories, files in os.walk(root or os.curdir):
        if relative:
            directory = os.path.relpath(directory)
            directory = "" if directory == os.curdir else directory
        for path in sorted(os.path.join(directory, name) for name in files):
            if matches(path):
                yield INPUT, path
        keep = []
        for name in sorted(subdirectories):
            path = os.path.join(directory, name)
            could_match = starts_a_match(path[len(root):] + "/" if root else path + "/")
            if os.path.islink(path):
                if could_match:
                    yield DIRECTORY_LINK_FOUND, path
            else:
                if matches(path) and naming.kind_of(path) != naming.OTHER:
                    yield INPUT, path  # a directory named like an input: reading it gives its row
                if could_match:
                    keep.append(name)
        subdirectories[:] = keep  # os.walk descends only where the pattern can still match


def _is_broken_link(path: str) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


@beam.typehints.with_input_types(bytes)
@beam.typehints.with_output_types(InputRef)
class RouteInputs(beam.DoFn):
    """A path -> an `InputRef` (image or archive, main output), a list to read, or an error row."""

    def __init__(self, listed: bool = False):
        self._listed = listed  # paths named by a list: a list among them is not followed

    def process(self, encoded: bytes):
        path = _decode(encoded)
        uri = naming.text_path(path)
        try:
            member = self._member_reference(path) if self._listed else None
            if member is not None:
                counter("listed_members").inc()
                yield beam.pvalue.TaggedOutput(MEMBERS, member)
                return
            kind = naming.kind_of(uri)
            if kind in (naming.IMAGE, naming.ARCHIVE):
                counter("image_files" if kind == naming.IMAGE else "archives").inc()
                yield InputRef(uri=uri, kind=kind, location=_location(path))
            elif kind == naming.LIST:
                yield beam.pvalue.TaggedOutput(NESTED_LISTS if self._listed else LISTS, _encode(path))
            else:
                counter("other_files").inc()
                yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                    uri, images.NOT_AN_IMAGE, "neither an image, an archive nor a list file (by its name); skipped"))
        except Exception as error:
            yield beam.pvalue.TaggedOutput(ERRORS, runtime.internal_error_row(uri, error))

    @staticmethod
    def _member_reference(path: str):
        """The `MemberReference` when a listed path names an archive member
        (``ARCHIVE!MEMBER``, as in the outputs) and is not itself a file; else None. Where several archives could
        be meant (a name holding ``!``), the first that exists is."""
        splits = naming.member_splits(path)
        if not splits or _exists(path):
            return None
        archive, member = splits[0] if len(splits) == 1 else next(
            (split for split in splits if _exists(split[0])), splits[0])  # one way to split: no existence check
        return MemberReference(naming.text_path(archive), naming.canonical_member(member), _location(archive))


TOO_LONG = None  # what `_lines` yields for a line past the length limit


_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
              (b"\xfe\xff", "utf-16-be"))


def _chunks(stream, chunk_bytes: int = LIST_CHUNK_BYTES):
    """A list file's bytes in chunks, as UTF-8: a UTF-16 or UTF-32 file (by its byte-order mark) is decoded and
    re-encoded on the way; anything else is passed as it is."""
    head = stream.read(4)
    encoding = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if encoding is None:
        chunk = head
        while chunk:
            yield chunk
            chunk = stream.read(chunk_bytes)
        return
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    bom = next(bom for bom, name in _WIDE_BOMS if name == encoding)
    chunk = head[len(bom):]
    while True:
        text = decoder.decode(chunk, final=not chunk)
        if text:
            yield text.encode("utf-8")
        if not chunk:
            return
        chunk = stream.read(chunk_bytes)


def _lines(stream, max_bytes: int, chunk_bytes: int = LIST_CHUNK_BYTES):
    """The lines of a list file, each ended by LF, CRLF or a lone CR (a CRLF split between two chunks is one line
    end); `TOO_LONG` once for a line longer than ``max_bytes``, whose bytes are passed over, never held.

    One pass over the bytes; what is held at a time is a chunk and at most ``max_bytes`` of an unfinished line."""
    pending = bytearray()  # the start of an unfinished line, at most max_bytes
    too_long = False  # the unfinished line is past the cap: TOO_LONG was yielded, its bytes are dropped
    after_cr = False  # the last chunk ended with a CR: an LF that starts this one is part of its line end
    for chunk in _chunks(stream, chunk_bytes):
        if after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the last chunk
        after_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *ended, rest = chunk.split(b"\n")
        for piece in ended:
            if too_long:
                too_long = False  # the end of the over-long line, already reported
            elif len(pending) + len(piece) > max_bytes:
                pending.clear()
                yield TOO_LONG
            elif pending:
                pending += piece
                yield bytes(pending)
                pending.clear()
            else:
                yield piece
        if too_long:
            continue
        if len(pending) + len(rest) > max_bytes:
            pending.clear()
            too_long = True
            yield TOO_LONG
        else:
            pending += rest
    if pending:
        yield bytes(pending)


@beam.typehints.with_input_types(bytes)
@beam.typehints.with_output_types(bytes)
class ReadListFiles(beam.DoFn):
    """A list file -> the normalized paths it names, streamed line by line; what is wrong with it -> one error row.

    Lines are UTF-8 (an optional BOM, CRLF); bytes that are not UTF-8 are kept as they are, so a Latin-1 line names
    the Latin-1 file it means on a local disk. A line holding a NUL byte or longer than 64 KiB cannot name a file:
    such lines are counted and reported in one ``read_error`` row for the list, and the other lines are read. A
    file whose first `LIST_PROBE_LINES` lines name no image or archive (a README.txt among photos, a binary file)
    is not a list: one ``not_an_image`` row for it and nothing else.
    """

    def process(self, encoded: bytes):
        path = _decode(encoded)
        uri = naming.text_path(path)
        counter("list_files").inc()
        yield beam.pvalue.TaggedOutput(LISTS, uri)
        probe, entries, line_number, bad_lines = [], 0, 0, []
        try:
            with fileio.open_read(path) as stream:
                for line in _lines(stream, MAX_LIST_LINE_BYTES):
                    line_number += 1
                    if line is TOO_LONG or b"\0" in line:
                        bad_lines.append((line_number, "is longer than 64 KiB" if line is TOO_LONG
                                          else "holds a NUL byte"))
                        continue
                    if line_number == 1 and line.startswith(b"\xef\xbb\xbf"):
                        line = line[3:]
                    listed = naming.resolve_listed(path, line.decode("utf-8", "surrogateescape"))
                    if listed is None:
                        continue
                    if probe is not None:  # still deciding whether this is a list at all
                        probe.append(listed)
                        if naming.kind_of(listed) in (naming.IMAGE, naming.ARCHIVE):
                            entries += len(probe)
                            yield from (_encode(entry) for entry in probe)
                            probe = None
                        elif line_number >= LIST_PROBE_LINES:
                            break
                        continue
                    entries += 1
                    yield _encode(listed)
        except Exception as error:  # filesystems raise their own types (BeamIOError, PermissionError, ...)
            error_class = images.MISSING_FILE if isinstance(error, FileNotFoundError) else images.READ_ERROR
            counter("listed_uris").inc(entries)
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                uri, error_class, f"cannot read the list file after {entries:,} entries: "
                                  f"{images.describe_error(error)}"))
            return
        if probe is not None:
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                uri, images.NOT_AN_IMAGE, "a .txt/.lst/.list input that names no image or archive; skipped"))
            return
        counter("listed_uris").inc(entries)
        if bad_lines:
            shown = "; ".join(f"line {number:,} {what}" for number, what in bad_lines[:5])
            more = f" (and {len(bad_lines) - 5:,} more)" if len(bad_lines) > 5 else ""
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                uri, images.READ_ERROR, f"{len(bad_lines):,} {'line names' if len(bad_lines) == 1 else 'lines name'} "
                                        f"no file: {shown}{more}; the other "
                                        f"{entries:,} entries were read"))


class _Resolved(typing.NamedTuple):
    refs: beam.PCollection
    lists: beam.PCollection  # URIs of the list files that were read
    nested_lists: beam.PCollection  # paths of lists named by lists (not followed)
    members: beam.PCollection  # MemberReferences named by lists
    errors: beam.PCollection


class ResolveInputs(beam.PTransform):
    """Globs -> `InputRef`s of image files and archives, the list files read, and error rows."""

    def expand(self, patterns):
        paths = patterns | "Match" >> beam.ParDo(MatchPatterns()).with_outputs(ERRORS, main="paths")
        routed = paths.paths | "Route" >> beam.ParDo(RouteInputs()).with_outputs(
            LISTS, NESTED_LISTS, MEMBERS, ERRORS, main="refs")
        listed = routed[LISTS] | "ReadLists" >> beam.ParDo(ReadListFiles()).with_outputs(
            LISTS, ERRORS, main="paths")
        listed_routed = listed.paths | "RouteListed" >> beam.ParDo(RouteInputs(listed=True)).with_outputs(
            LISTS, NESTED_LISTS, MEMBERS, ERRORS, main="refs")
        refs = (routed.refs, listed_routed.refs) | "AllRefs" >> beam.Flatten()
        errors = ((paths[ERRORS], routed[ERRORS], listed[ERRORS], listed_routed[ERRORS])
                  | "AllErrors" >> beam.Flatten())
        nested = ((routed[NESTED_LISTS], listed_routed[NESTED_LISTS]) | "NestedLists" >> beam.Flatten())
        return _Resolved(refs=refs, lists=listed[LISTS], nested_lists=nested, members=listed_routed[MEMBERS],
                         errors=errors)


def _claims(uri: str):
    """A loose input whose URI reads as ``ARCHIVE!MEMBER`` claims that member: the archive passes over it. Every
    way to read it counts (an archive's own name may hold ``!``); a key that is no input's costs nothing."""
    yield from naming.member_splits(uri)


def _done_keys(uri: str):
    yield uri, naming.ITSELF
    yield from naming.member_splits(uri)


@beam.typehints.with_output_types(InputRef)
class SelectNewInputs(beam.DoFn):
    """After the URI join: each input once, none already done; early errors once, unless done.

    An archive comes out with the member parts to pass over (done, or named by loose files). An archive that is no
    input but whose members a list names comes out with ``only`` those members (less the done ones)."""

    def process(self, element):
        uri, joined = element
        refs, errors = list(joined["refs"]), list(joined["errors"])
        done = set(joined["done"])
        members = sorted(set(joined["members"]))
        candidates = len(refs) + len(errors) + (0 if refs or errors else
                                                 (1 if joined["nested_lists"] and not joined["lists"] else 0))
        if candidates > 1:
            counter("duplicate_inputs").inc(candidates - 1)
        if refs and refs[0].kind == naming.ARCHIVE:
            yield refs[0]._replace(done=tuple(sorted(done)), claimed=tuple(sorted(set(joined["claims"]))),
                                   listed=tuple(member for member, _ in members))
        elif members and not candidates:
            claimed = set(joined["claims"])
            wanted = [member for member, _ in members if member not in done and member not in claimed]
            counter("skipped_existing").inc(sum(1 for member, _ in members if member in done))
            counter("duplicate_inputs").inc(sum(1 for member, _ in members if member in claimed - done))
            if wanted:
                yield InputRef(uri=uri, kind=naming.ARCHIVE, location=members[0][1], only=tuple(wanted))
        elif not candidates:  # only done URIs, claims or lists that were read
            pass
        elif naming.ITSELF in done:
            counter("skipped_existing").inc()
        elif refs:
            counter("duplicate_inputs").inc(len(members))
            yield max(refs, key=lambda ref: bool(ref.location))  # the one that knows the real path, if any
        elif errors:
            yield beam.pvalue.TaggedOutput(ERRORS, sorted(errors)[0])
        else:
            yield beam.pvalue.TaggedOutput(ERRORS, tables.error_row(
                uri, images.NOT_AN_IMAGE, "a list file named inside a list file; lists are not followed from lists: "
                                          "pass it as an --input"))


class _Selected(typing.NamedTuple):
    refs: beam.PCollection
    errors: beam.PCollection


class SelectInputs(beam.PTransform):
    """(resolved inputs, done URIs) -> the `InputRef`s to read and the early error rows to write, each URI once."""

    def __init__(self, done_uris):
        super().__init__()
        self._done_uris = done_uris

    def expand(self, resolved):
        refs, errors = resolved.refs, resolved.errors
        loose_uris = (
            (refs | "RefUris" >> beam.Map(lambda ref: ref.uri),
             errors | "ErrorUris" >> beam.Map(lambda row: row.image_uri),
             resolved.nested_lists | "NestedUris" >> beam.Map(lambda path: naming.text_path(_decode(path))))
            | "LooseUris" >> beam.Flatten())
        joined = (
            {"refs": refs | "KeyRefs" >> beam.Map(lambda ref: (ref.uri, ref)),
             "errors": errors | "KeyErrors" >> beam.Map(lambda row: (row.image_uri, row)),
             "lists": resolved.lists | "KeyLists" >> beam.Map(lambda uri: (uri, uri)),
             "nested_lists": resolved.nested_lists | "KeyNested" >> beam.Map(
                 lambda path: (naming.text_path(_decode(path)), path)),
             "claims": loose_uris | "Claims" >> beam.FlatMap(_claims),
             "members": resolved.members | "KeyMembers" >> beam.Map(
                 lambda reference: (reference.archive, (reference.member, reference.location))),
             "done": self._done_uris | "DoneKeys" >> beam.FlatMap(_done_keys)}
            | "JoinOnUris" >> beam.CoGroupByKey())
        selected = joined | "SelectNew" >> beam.ParDo(SelectNewInputs()).with_outputs(ERRORS, main="refs")
        return _Selected(refs=selected.refs, errors=selected[ERRORS])
