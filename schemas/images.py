"""How image bytes become the pixels a backbone sees -- the one definition used at extract time, at caption time
and by the single-image predictor.

`prepare_image(data, image_size)` decodes any file Pillow can read, applies the EXIF orientation, converts every
colour mode to 8-bit RGB (grayscale, palette, RGBA/LA over white, CMYK, 16- and 32-bit), refuses images above a
pixel limit before decoding them (decompression bombs), and squashes the picture to ``image_size`` x
``image_size`` with Pillow's antialiased bilinear filter (the aspect ratio is not kept, as in Keras'
``load_img(target_size=...)``). It returns uint8 pixels; the backbone's own scaling (`backbones.preprocess`) runs
on whole batches.

Memory: preparing one image holds the decoded picture in Pillow's own storage (4 bytes a pixel for RGB, RGBA, LA,
PA, CMYK and 32-bit grayscale, 2 for 16-bit, 1 for L, 1-bit and P; grayscale other than L also gets an L copy), the
strip between the resize's two passes (at most ``image_size`` x height x 4 bytes: 12 MB for 10,000 rows at 299 px,
as Pillow's own resize makes) and one block of a quarter of a million pixels being made RGB (five copies of 1 MB;
more only where a single row or column is longer). No mode gets a full-size RGB or RGBA copy;
`bench/image_memory.py` measures it.

Failures raise `ImageError`, whose ``error_class`` is one of the short classes below: they are the ``error``
column of every error row the jobs write.
"""
import contextlib
import io
import warnings

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

# Error classes of images (and inputs) that cannot be used. Keep them short and stable: users filter on them.
MISSING_FILE = "missing_file"
READ_ERROR = "read_error"
EMPTY_FILE = "empty_file"
UNSUPPORTED_FORMAT = "unsupported_format"
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"
CORRUPT_ARCHIVE = "corrupt_archive"
NO_CAPTIONS = "no_captions"
NOT_AN_IMAGE = "not_an_image"  # a file or archive member whose name is not an image's (e.g. notes.txt)
UNSUPPORTED_MEMBER = "unsupported_member"  # an archive entry that is no file: link, device, FIFO, sparse, method
ENCRYPTED_MEMBER = "encrypted_member"  # a password-protected zip member
EXPANSION_LIMIT = "expansion_limit"  # an archive past --max_archive_bytes or --max_compression_ratio (bombs)
INTERNAL_ERROR = "internal_error"  # an unexpected exception while handling one input (a bug: please report it)
ERROR_CLASSES = (MISSING_FILE, READ_ERROR, EMPTY_FILE, UNSUPPORTED_FORMAT, DECODE_ERROR, TOO_LARGE,
                 CORRUPT_ARCHIVE, NO_CAPTIONS, NOT_AN_IMAGE, UNSUPPORTED_MEMBER, ENCRYPTED_MEMBER, EXPANSION_LIMIT,
                 INTERNAL_ERROR)

# 100 megapixels: larger than any camera photo in common use, small enough that one decoded image (300 MB of RGB)
# cannot take a worker down.
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow refuses images above about 179 megapixels by itself (DecompressionBombError, reported as too_large like
# ours) and warns above 89 megapixels; the warning is noise here because the limit above is checked explicitly.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's plugins warn about malformed metadata of the file at hand ("Corrupt EXIF data", ...): per-input noise in
# a batch job's log; what matters about an input is in its output or error row.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
_WHITE = (255, 255, 255)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees


class ImageError(ValueError):
    """An image that cannot be used; ``error_class`` is one of ``ERROR_CLASSES``."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown image error class {error_class!r}")
        self.error_class = error_class
        self.message = message


# The formats the jobs decode (`beam_jobs.naming.IMAGE_EXTENSIONS`); Pillow's other plugins (EPS, which runs
# Ghostscript, PSD, FITS, ...) are never tried on untrusted bytes. JPEG includes the MPO variant some cameras write.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
_GRAY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ROWS_PER_CHUNK = 256
# A colour picture is made RGB and resized a block of rows (or columns) at a time (`_squash_by_blocks`): a quarter
# of a million pixels a block keeps each of its five RGB/RGBA copies at 1 MB whatever the width, and the Python work
# per block (400 blocks for 10,000 x 10,000 pixels) is small beside the pixels' own.
_PIXELS_PER_BLOCK = 1 << 18
# 16-bit -> 8-bit, rounded to nearest: (v * 255 + 32767) // 65535 equals rint(v * 255 / 65535) for every v.
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# First bytes of common files, to say what a file that cannot be opened is.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
               (b"\x00\x00\x01\x00", "ICO"), (b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"<?xml", "XML/SVG"),
               (b"<svg", "SVG"), (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"8BPS", "Photoshop"),
               (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"))


def _kind_by_signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIC/HEIF" if brand[:3] in (b"hei", b"hev", b"mif") \
            else "MP4/QuickTime"
    if data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "PPM"
    return next((kind for signature, kind in _SIGNATURES if data.startswith(signature)), None)


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 (ASCII included) without control characters other than line ends and tabs."""
    head = head.removeprefix(b"\xef\xbb\xbf")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:
            return False
        text = head[:error.start].decode("utf-8")  # the sample cut a multi-byte character short
    return all(character.isprintable() or character in "\t\n\r\f" for character in text)


def _describe_content(data: bytes) -> str:
    """What a file that is no known image looks like, never quoting its bytes: error rows end up in Parquet tables
    and an HTML gallery, and an input may be a link to a private file (/etc/passwd, a key)."""
    head = data[:512]
    if not head.strip(b"\0"):
        return "its first bytes are all zero"
    if _looks_like_text(head):
        return "it looks like text, not an image"
    return "its first bytes match no known image format"


# Pillow's plugins may quote the file at hand in their messages (PPM: "Token too long in file header: <the bytes>",
# given as bytes). Error rows end up in Parquet tables and an HTML gallery, so the text of a library's exception is
# kept readable and short: control characters escaped, a bytes message cut before the bytes it quotes, and the
# length capped where the caller asks (image decoding: `LIBRARY_TEXT_CHARS`).
LIBRARY_TEXT_CHARS = 160


def _printable(text: str) -> str:
    return "".join(character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
                   for character in text)


def describe_error(error: BaseException, max_chars: int | None = None) -> str:
    """An exception as ``Type: message`` (the type alone when it says nothing), for error rows.

    Control characters are escaped; a message given as bytes (how Pillow's plugins quote file bytes) keeps only its
    words before the quote; with ``max_chars`` the message is cut to that many characters.
    """
    if len(error.args) == 1 and isinstance(error.args[0], (bytes, bytearray)):
        words, quoting, _ = bytes(error.args[0]).partition(b": ")
        text = (f"{words.decode('ascii', 'replace')} (the bytes it quotes are left out)" if quoting
                else "a message quoting the file's bytes (left out)")
    else:
        text = str(error).strip()
    text = _printable(text)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "... (cut)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# A progressive JPEG's decoding time grows with its number of scans, and nothing else bounds it: a small file with
# thousands of scans takes minutes. Real photos have at most a few dozen; libjpeg-turbo's TurboJPEG API caps at 500.
MAX_JPEG_SCANS = 500


def _check_before_opening(data: bytes, max_pixels: int) -> None:
    """What Pillow would only find out by decoding: JPEG scan bombs, and ICO files (Pillow decodes the embedded
    image while opening them) whose images are above the pixel limit."""
    if data.startswith(b"\xff\xd8\xff"):
        scans = data.count(b"\xff\xda")  # start-of-scan markers: entropy-coded data never holds FF DA
        if scans > MAX_JPEG_SCANS:
            raise ImageError(DECODE_ERROR, f"a JPEG with {scans:,} scans (more than {MAX_JPEG_SCANS}): decoding it "
                                           "would take minutes; real photos have a few dozen at most")
    elif data.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")) and len(data) >= 6:
        for width, height in _ico_sizes(data):
            if width * height > max_pixels:
                raise ImageError(TOO_LARGE, f"an icon holding a {width}x{height} image: {width * height:,} pixels "
                                            f"is above the limit of {max_pixels:,} (raise --max_image_pixels)")


def _ico_sizes(data: bytes):
    """(width, height) of every image in an ICO/CUR file, read from the embedded PNG or BMP headers."""
    count = int.from_bytes(data[4:6], "little")
    for index in range(min(count, 1024)):
        entry = data[6 + 16 * index:6 + 16 * (index + 1)]
        if len(entry) < 16:
            return
        width, height = entry[0] or 256, entry[1] or 256
        offset = int.from_bytes(entry[12:16], "little")
        embedded = data[offset:offset + 26]
        if embedded.startswith(b"\x89PNG\r\n\x1a\n") and len(embedded) >= 24:
            width, height = int.from_bytes(embedded[16:20], "big"), int.from_bytes(embedded[20:24], "big")
        elif len(embedded) >= 12 and int.from_bytes(embedded[0:4], "little") in (12, 40, 56, 108, 124):
            width = abs(int.from_bytes(embedded[4:8], "little", signed=True))
            height = abs(int.from_bytes(embedded[8:12], "little", signed=True)) // 2  # the mask doubles it
        yield width, height


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Identifies the image (among `SUPPORTED_FORMATS`) and checks its size without decoding the pixels."""
    if not data:
        raise ImageError(EMPTY_FILE, "the file is empty (0 bytes)")
    _check_before_opening(data, max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        kind = _kind_by_signature(data)
        if kind in SUPPORTED_FORMATS:
            raise ImageError(DECODE_ERROR, f"a {kind} file whose header cannot be parsed (damaged or "
                                           "truncated)") from None
        formats = ", ".join(SUPPORTED_FORMATS)
        if kind:
            raise ImageError(UNSUPPORTED_FORMAT, f"a {kind} file, not an image in a supported format ({formats})") \
                from None
        raise ImageError(UNSUPPORTED_FORMAT, f"not an image in a supported format ({formats}): "
                                             f"{_describe_content(data)}") from None
    except Image.DecompressionBombError as error:
        raise ImageError(TOO_LARGE, str(error)) from None
    except Exception as error:  # hostile headers make plugins raise anything (struct.error, IndexError, ...)
        raise ImageError(DECODE_ERROR, "cannot parse the image header: "
                                       f"{describe_error(error, LIBRARY_TEXT_CHARS)}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(DECODE_ERROR, f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(TOO_LARGE, f"{width}x{height} = {width * height:,} pixels is above the limit of "
                                    f"{max_pixels:,} (raise --max_image_pixels to accept it)")
    return image


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as it is shown, i.e. after its EXIF orientation is applied."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: the image is shown as stored
        orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied; a malformed EXIF block leaves the image as stored (as viewers do)."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # no copy when the photo is already upright
    except Exception:
        pass
    return image


def _to_gray8(image: Image.Image) -> Image.Image:
    """1/L/16-bit/32-bit grayscale -> 8-bit L, a block of rows at a time (no full-size copy besides the result).

    16-bit is scaled from 0..65535; 32-bit integer or float from 0..255 if it fits, else 0..65535, else 0..max.
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode == "1":
        return image.convert("L")
    width, height = image.size
    if not mode.startswith("I;16"):
        peak = max(float(image.getextrema()[1]), 0.0)
        top = 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
    gray = np.empty((height, width), dtype=np.uint8)
    for start in range(0, height, _ROWS_PER_CHUNK):
        block = np.asarray(image.crop((0, start, width, min(start + _ROWS_PER_CHUNK, height))))
        if mode.startswith("I;16"):
            gray[start:start + len(block)] = _SIXTEEN_TO_EIGHT[block]
        else:
            gray[start:start + len(block)] = np.clip(np.rint(block.astype(np.float64) * (255.0 / top)), 0, 255)
    return Image.fromarray(gray)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB: alpha over white, 16/32-bit scaled to 8 bits, CMYK/palette/L mapped.

    This makes full-size copies of a picture that is not RGB; `resize_pixels` avoids them.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _GRAY_MODES:
        return _to_gray8(image).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image if mode == "RGBA" else image.convert("RGBA")  # alpha_composite leaves its inputs as they are
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _as_image_errors(doing: str):
    """What Pillow raises while decoding or converting pixels is the input's fault: an `ImageError`."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise ImageError(TOO_LARGE, str(error)) from None
    except MemoryError:
        raise ImageError(TOO_LARGE, f"not enough memory to {doing} this image") from None
    except ImageError:
        raise
    except Exception as error:  # truncated data, broken chunks, plugin failures on hostile files
        raise ImageError(DECODE_ERROR, f"cannot {doing} the image: "
                                       f"{describe_error(error, LIBRARY_TEXT_CHARS)}") from None


def _decode_opened(image: Image.Image, draft_size: int | None) -> Image.Image:
    """Decoded and upright, in its own mode, except grayscale: 8-bit L (resized before it becomes RGB)."""
    with _as_image_errors("decode"):
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        image = _upright(image)
        return _to_gray8(image) if image.mode in _GRAY_MODES else image


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decodes image bytes to an upright 8-bit RGB picture, or raises `ImageError`.

    ``draft_size`` lets JPEG decoding scale down by 1/2, 1/4 or 1/8 in the DCT domain while staying at least that
    large, which is several times faster for photos much bigger than the backbone's input. The full-size RGB
    picture (and, for other modes, `to_rgb`'s copies) is what the gallery and the predictor draw on; the jobs'
    per-image path is `prepare_image`, which makes no such copy.
    """
    decoded = _decode_opened(open_image(data, max_pixels), draft_size)
    with _as_image_errors("decode"):
        return to_rgb(decoded)


_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def down_first(width: int, height: int, size: int) -> bool:
    """Whether Pillow's bilinear resize of a width x height picture to size x size runs its vertical pass first.

    Pillow 12 (in `Image.resize`): for a picture more than 100 times as tall as it is wide. Pillow 13 (in C): when
    the height shrinks by more than twice as many pixels as the width does -- measured, not documented: it held
    on 396 random sizes, and tests/schemas/test_images.py checks the pixels on each side of the boundary."""
    if _PILLOW_MAJOR >= 13:
        return height > size and height - size > 2 * (width - size)
    return height > width * 100 and size < height


def _squash_by_blocks(image: Image.Image, image_size: int) -> Image.Image:
    """A picture of a colour mode other than RGB (RGBA, LA, P, PA, CMYK, ...) squashed to an RGB image_size x
    image_size picture: the very pixels of ``to_rgb(image).resize(...)``, without its full-size RGB/RGBA copies.

    Pillow's bilinear resize is two passes, each rounded to 8 bits: across, which resizes every row on its own,
    then down, which resizes every column on its own -- or down first, in the cases `down_first` says. So blocks of
    rows (of columns, down first) are made RGB (`to_rgb` works pixel by pixel) and given the first pass alone, into
    a strip that then gets the second pass.
    tests/schemas/test_images.py checks that the pixels are the same for every mode and shape.
    """
    width, height = image.size
    bilinear = Image.Resampling.BILINEAR
    if down_first(width, height, image_size):  # Pillow's order for such a picture: down, then across
        strip = Image.new("RGB", (width, image_size))
        columns = max(1, _PIXELS_PER_BLOCK // height)
        for left in range(0, width, columns):
            block = to_rgb(image.crop((left, 0, min(left + columns, width), height)))
            strip.paste(block.resize((block.width, image_size), bilinear), (left, 0))
            del block  # a column can be megabytes: dropped before the next one's copies are made
    else:
        strip = Image.new("RGB", (image_size, height))  # the strip Pillow's own resize makes for the first pass
        rows = max(1, _PIXELS_PER_BLOCK // width)
        for top in range(0, height, rows):
            block = to_rgb(image.crop((0, top, width, min(top + rows, height))))
            strip.paste(block.resize((image_size, block.height), bilinear), (0, top))
    return strip.resize((image_size, image_size), bilinear)


def resize_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """Squashes a picture of any mode to image_size x image_size (antialiased bilinear) and returns uint8 HxWx3 RGB
    pixels, with no full-size copy of the picture in another mode.

    RGB is resized as it is. Grayscale is made 8-bit L and resized before it becomes RGB: the same pixels as
    resizing its RGB copy, at a third of the memory. Every other mode is made RGB a block of rows (or columns) at a
    time (`_squash_by_blocks`).
    """
    if image.mode in _GRAY_MODES:
        image = _to_gray8(image)
    elif image.mode != "RGB":
        return np.asarray(_squash_by_blocks(image, image_size), dtype=np.uint8)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(to_rgb(image), dtype=np.uint8)


def prepare_image(data: bytes, image_size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes -> (uint8 pixels of shape [image_size, image_size, 3], upright (width, height) as stored).

    This is the preprocessing of every stage; the backbone's scaling (`backbones.preprocess`) follows per batch.
    JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that stays at least ``image_size`` on both sides.
    """
    image = open_image(data, max_pixels)
    size = upright_size(image)
    decoded = _decode_opened(image, draft_size=image_size)
    with _as_image_errors("resize"):
        return resize_pixels(decoded, image_size), size
