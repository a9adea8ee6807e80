"""What the caption job reads, by name: image files, text files listing URIs, and archives of images.

Inputs are classified by their name (`kind_of`):

- images: ``.jpg .jpeg .png .gif .bmp .tif .tiff .webp ...`` (`IMAGE_EXTENSIONS`);
- archives: ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``, ``.zip`` (read by `beam_jobs.caption.archives`,
  which trusts the bytes, not the name, for the compression);
- lists: ``.txt``, ``.lst``, ``.list``: one image or archive URI per line (relative entries are relative to the
  list's directory; blank lines and ``#`` comments are skipped);
- anything else is reported as ``not_an_image``.

URIs (the ``image_uri`` of every output row):

- a file is its path as the filesystem gives it; ``a/../b.jpg`` and ``./b.jpg`` in a list are normalized to
  ``b.jpg`` so that one file is one input;
- an archive member is ``ARCHIVE_URI!MEMBER`` (`member_uri`). MEMBER is the stored name with ``%``, ``#``,
  control characters and every byte that is not UTF-8 percent-encoded (RFC 3986 style), so that any name is
  valid text and the stored bytes come back with ``urllib.parse.unquote_to_bytes(MEMBER)``;
- damage inside an archive that has no trustworthy member name (a bad tar header) is ``ARCHIVE_URI!#N``, N the
  1-based position of the entry in the archive (`position_uri`); ``#`` never occurs unescaped in a member name;
- a file path that is not valid UTF-8 (possible on local disks) becomes a percent-encoded ``file://`` URI
  (`text_path`); the job keeps the real path beside it to read the file.
"""
import posixpath
import re
import urllib.parse

from schemas import tables
from schemas.fileio import path_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".ico")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
LIST_EXTENSIONS = (".txt", ".lst", ".list")

# An image file or archive member above this size is reported as too_large without being read: 256 MiB holds an
# uncompressed 16-bit TIFF of 40 megapixels, and one such file in memory cannot take a worker down.
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024

IMAGE, ARCHIVE, LIST, OTHER = "image", "archive", "list", "other"
POSITION_MARK = "#"
_GLOB_CHARACTERS = re.compile(r"[*?\[\]{}]")


def kind_of(uri: str) -> str:
    name = posixpath.basename(uri).lower()
    if name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES):
        return ARCHIVE
    if name.endswith(IMAGE_EXTENSIONS):
        return IMAGE
    if name.endswith(LIST_EXTENSIONS):
        return LIST
    return OTHER


def is_zip_name(uri: str) -> bool:
    return posixpath.basename(uri).lower().endswith(ZIP_SUFFIXES)


# ---------------------------------------------------------------------------------------------------------------
# Names -> URIs


def _percent(data: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in data)


def _is_control(character: str) -> bool:
    code = ord(character)
    return code < 0x20 or 0x7F <= code <= 0x9F


def escape_member_name(name: bytes | str) -> str:
    """A stored member name as URI text: ``%``, ``#``, control characters and non-UTF-8 bytes percent-encoded.

    Reversible for every input: ``urllib.parse.unquote_to_bytes(escape_member_name(raw)) == raw``.
    """
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for character in text:
        if "\udc80" <= character <= "\udcff":  # an undecodable byte, kept by surrogateescape
            out.append(f"%{ord(character) - 0xDC00:02X}")
        elif character in "%#" or _is_control(character):
            out.append(_percent(character.encode("utf-8")))
        else:
            out.append(character)
    return "".join(out)


def unescape_member_name(member: str) -> bytes:
    """The stored name bytes of an escaped member name (the inverse of `escape_member_name`)."""
    return urllib.parse.unquote_to_bytes(member.encode("utf-8", "surrogateescape"))


def canonical_member(member: str) -> str:
    """One spelling per member part: a position (``#N``) as it is, a name as `escape_member_name` writes it (so
    ``caf%E9.jpg``, ``caf%e9.jpg`` and a list's raw Latin-1 ``café.jpg`` are one member)."""
    if member[:1] == POSITION_MARK and member[1:].isdigit():
        return member
    return escape_member_name(unescape_member_name(member))


ITSELF = "\x00"  # in sets of member parts: the archive's own URI (no member part can hold a NUL: it is escaped)


def text_path(path: str) -> str:
    """A path as valid text. A path that is valid UTF-8 is itself. One that is not (possible on local disks; Python
    holds its bytes as surrogates) becomes a ``file://`` URI with every byte outside ``A-Za-z0-9_.-~/``
    percent-encoded: it cannot be taken for another file's path (those do not start with ``file://``), and
    ``urllib.parse.unquote_to_bytes(uri[7:])`` gives the path's bytes back."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return "file://" + urllib.parse.quote_from_bytes(raw, safe="/")


def member_uri(archive_uri: str, name: bytes | str) -> str:
    return f"{archive_uri}{tables.MEMBER_SEPARATOR}{escape_member_name(name)}"


def position_uri(archive_uri: str, position: int) -> str:
    """The URI of an archive entry that has no trustworthy name (e.g. behind a damaged tar header)."""
    return f"{archive_uri}{tables.MEMBER_SEPARATOR}{POSITION_MARK}{position}"


def member_splits(uri: str) -> list[tuple[str, str]]:
    """Every (archive URI, member part) that ``uri`` can be read as, shortest archive first: an archive's own
    name may hold ``!`` (``a.tar!b.tar`` is one file's name as well as a member of ``a.tar``)."""
    splits = []
    index = uri.find(tables.MEMBER_SEPARATOR)
    while index >= 0:
        if kind_of(uri[:index]) == ARCHIVE:
            splits.append((uri[:index], uri[index + 1:]))
        index = uri.find(tables.MEMBER_SEPARATOR, index + 1)
    return splits


def split_member_uri(uri: str) -> tuple[str, str | None]:
    """(archive URI, member part) for an archive member's URI (the shortest archive), (uri, None) otherwise."""
    splits = member_splits(uri)
    return splits[0] if splits else (uri, None)


def has_glob_characters(path: str) -> bool:
    return bool(_GLOB_CHARACTERS.search(path))


def normalize_uri(uri: str) -> str:
    """One spelling per file: ``a/./b/../c.jpg`` -> ``a/c.jpg``, doubled slashes removed; the scheme kept."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "", uri
    if scheme:
        bucket, slash, path = rest.partition("/")
        if not slash:
            return uri
        normalized = posixpath.normpath("/" + path).lstrip("/") if path else ""
        return f"{scheme}://{bucket}/{normalized}"
    if not rest:
        return rest
    normalized = posixpath.normpath(rest)
    if normalized.startswith("//"):  # POSIX keeps a leading '//' as implementation-defined; one file, one name
        normalized = "/" + normalized.lstrip("/")
    return normalized


def resolve_listed(list_uri: str, line: str) -> str | None:
    """The normalized URI a line of a list file names (None for blank lines and comments). An ``ARCHIVE!MEMBER``
    line has its archive part resolved and normalized; the member part is kept as written (``..`` in a member's
    name is part of the name)."""
    entry = line.strip()
    if not entry or entry.startswith("#"):
        return None
    archive, member = split_member_uri(entry)
    path = archive if member is not None else entry
    if path.startswith("file://"):  # the job's own spelling of a path that is not UTF-8 (`text_path`)
        path = path_of(path)
    if not ("://" in path or path.startswith("/")):
        path = posixpath.join(posixpath.dirname(list_uri), path)
    path = normalize_uri(path)
    return path if member is None else f"{path}{tables.MEMBER_SEPARATOR}{member}"
