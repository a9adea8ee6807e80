"""What the caption job reads: image files, text files listing image URIs, and archives of images.

Inputs are classified by name:

- images: ``.jpg .jpeg .png .gif .bmp .tif .tiff .webp ...`` (`IMAGE_EXTENSIONS`);
- archives: ``.tar``, ``.tar.gz``/``.tgz`` (and ``.tar.bz2``, ``.tar.xz``), ``.zip``; their image members are
  read as a stream from any Beam filesystem -- never extracted to disk -- and named ``ARCHIVE!MEMBER``;
- lists: ``.txt``, ``.lst``, ``.list``: one image or archive URI per line (relative paths are relative to the
  list's directory; blank lines and ``#`` comments are skipped);
- anything else is reported as ``not_an_image``.

Limits: a member larger than ``max_member_bytes`` is reported as ``too_large`` without being read; an archive that
cannot be read to its end is reported as ``corrupt_archive`` (members read before the damage are kept).
"""
import posixpath
import tarfile
import zipfile
import zlib
from typing import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import images, tables

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".ico")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
LIST_EXTENSIONS = (".txt", ".lst", ".list")
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024

IMAGE, ARCHIVE, LIST, OTHER = "image", "archive", "list", "other"


def kind_of(uri: str) -> str:
    name = posixpath.basename(uri).lower()
    if name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES):
        return ARCHIVE
    if name.endswith(IMAGE_EXTENSIONS):
        return IMAGE
    if name.endswith(LIST_EXTENSIONS):
        return LIST
    return OTHER


def member_uri(archive_uri: str, member: str) -> str:
    return f"{archive_uri}{tables.MEMBER_SEPARATOR}{member}"


def split_member_uri(uri: str) -> tuple[str, str | None]:
    """(archive URI, member path) for an archive member's URI, (uri, None) for a plain file."""
    head, separator, member = uri.partition(tables.MEMBER_SEPARATOR)
    while separator:
        if kind_of(head) == ARCHIVE:
            return head, member
        more_head, separator, member = member.partition(tables.MEMBER_SEPARATOR)
        head = f"{head}{tables.MEMBER_SEPARATOR}{more_head}"
    return uri, None


def open_raw(uri: str):
    """A binary, seekable stream of the stored bytes (no decompression by file extension)."""
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(uri: str) -> bytes:
    """All bytes of a file on any Beam filesystem, as stored."""
    with open_raw(uri) as handle:
        return handle.read()


def resolve_listed(list_uri: str, line: str) -> str | None:
    """The URI a line of a list file names (None for blank lines and comments)."""
    entry = line.strip()
    if not entry or entry.startswith("#"):
        return None
    if "://" in entry or entry.startswith("/"):
        return entry
    return posixpath.join(posixpath.dirname(list_uri), entry)


# Archive members: ("image", member uri, bytes) or ("error", uri, error class, message)
Item = tuple


def _error(uri: str, error_class: str, message: str) -> Item:
    return ("error", uri, error_class, message)


def _too_large(uri: str, size: int, limit: int) -> Item:
    return _error(uri, images.TOO_LARGE, f"archive member of {size:,} bytes is above the limit of {limit:,} "
                                         "(raise --max_member_bytes to accept it)")


def _iter_tar(uri: str, stream, max_member_bytes: int) -> Iterator[Item]:
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            name = member_uri(uri, member.name)
            if kind_of(member.name) != IMAGE:
                yield _error(name, images.NOT_AN_IMAGE, "archive member is not named like an image; skipped")
            elif member.size > max_member_bytes:
                yield _too_large(name, member.size, max_member_bytes)
            else:
                yield ("image", name, archive.extractfile(member).read())


def _iter_zip(uri: str, stream, max_member_bytes: int) -> Iterator[Item]:
    with zipfile.ZipFile(stream) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = member_uri(uri, info.filename)
            if kind_of(info.filename) != IMAGE:
                yield _error(name, images.NOT_AN_IMAGE, "archive member is not named like an image; skipped")
                continue
            if info.file_size > max_member_bytes:
                yield _too_large(name, info.file_size, max_member_bytes)
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(max_member_bytes + 1)  # the header's size may lie (zip bombs)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as error:
                yield _error(name, images.CORRUPT_ARCHIVE, f"cannot read this member: {error}")
                continue
            if len(data) > max_member_bytes:
                yield _too_large(name, len(data), max_member_bytes)
            else:
                yield ("image", name, data)


def iter_archive(uri: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[Item]:
    """Streams an archive's members; a damaged or unreadable archive ends with one error item for the archive."""
    is_zip = posixpath.basename(uri).lower().endswith(ZIP_SUFFIXES)
    members = 0
    try:
        with open_raw(uri) as stream:
            reader = _iter_zip if is_zip else _iter_tar
            for item in reader(uri, stream, max_member_bytes):
                members += 1
                yield item
    except FileNotFoundError:
        yield _error(uri, images.MISSING_FILE, "no such archive")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        where = f" after {members} members" if members else ""
        yield _error(uri, images.CORRUPT_ARCHIVE,
                     f"cannot read the {'zip' if is_zip else 'tar'} archive{where}: {type(error).__name__}: {error}")


def read_member(uri: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> bytes:
    """The bytes of one file or archive member (for tools such as the gallery; the job streams archives)."""
    archive_uri, member = split_member_uri(uri)
    if member is None:
        return read_bytes(uri)
    for item in iter_archive(archive_uri, max_member_bytes):
        if item[0] == "image" and item[1] == uri:
            return item[2]
    raise FileNotFoundError(f"{uri}: no such member in {archive_uri}")
