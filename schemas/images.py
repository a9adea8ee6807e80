"""How image bytes become the pixels a backbone sees -- the one definition used at extract time, at caption time
and by the single-image predictor.

`prepare_image(data, image_size)` decodes any file Pillow can read, applies the EXIF orientation, converts every
colour mode to 8-bit RGB (grayscale, palette, RGBA/LA over white, CMYK, 16- and 32-bit), refuses images above a
pixel limit before decoding them (decompression bombs), and squashes the picture to ``image_size`` x
``image_size`` with Pillow's antialiased bilinear filter (the aspect ratio is not kept, as in Keras'
``load_img(target_size=...)``). It returns uint8 pixels; the backbone's own scaling (`backbones.preprocess`) runs
on whole batches.

Failures raise `ImageError`, whose ``error_class`` is one of the short classes below: they are the ``error``
column of every error row the jobs write.
"""
import io
import warnings

import numpy as np
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
ERROR_CLASSES = (MISSING_FILE, READ_ERROR, EMPTY_FILE, UNSUPPORTED_FORMAT, DECODE_ERROR, TOO_LARGE,
                 CORRUPT_ARCHIVE, NO_CAPTIONS, NOT_AN_IMAGE)

# 100 megapixels: larger than any camera photo in common use, small enough that one decoded image (300 MB of RGB)
# cannot take a worker down.
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow refuses images above about 179 megapixels by itself (DecompressionBombError, reported as too_large like
# ours) and warns above 89 megapixels; the warning is noise here because the limit above is checked explicitly.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
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


def _describe_start(data: bytes) -> str:
    return repr(data[:12])


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Identifies the image and checks its size without decoding the pixels."""
    if not data:
        raise ImageError(EMPTY_FILE, "the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(UNSUPPORTED_FORMAT,
                         f"not an image format Pillow can read (file starts with {_describe_start(data)})") from None
    except Image.DecompressionBombError as error:
        raise ImageError(TOO_LARGE, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(DECODE_ERROR, f"cannot parse the image header: {error}") from None
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
    except (OSError, SyntaxError, ValueError, TypeError):
        orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB: alpha over white, 16/32-bit scaled to 8 bits, CMYK/palette/L mapped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        else:  # 32-bit integer or float: 8-bit range if it fits, else 16-bit, else the image's own maximum
            peak = float(pixels.max(initial=0.0))
            top = 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
        gray = np.clip(np.rint(pixels * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode_opened(image: Image.Image, draft_size: int | None) -> Image.Image:
    try:
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise ImageError(TOO_LARGE, str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        raise ImageError(DECODE_ERROR, f"cannot decode the image: {error}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decodes image bytes to an upright 8-bit RGB picture, or raises `ImageError`.

    ``draft_size`` lets JPEG decoding scale down by 1/2, 1/4 or 1/8 in the DCT domain while staying at least that
    large, which is several times faster for photos much bigger than the backbone's input.
    """
    return _decode_opened(open_image(data, max_pixels), draft_size)


def resize_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """Squashes an RGB picture to image_size x image_size (antialiased bilinear) and returns uint8 HxWx3 pixels."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def prepare_image(data: bytes, image_size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes -> (uint8 pixels of shape [image_size, image_size, 3], upright (width, height) as stored).

    This is the preprocessing of every stage; the backbone's scaling (`backbones.preprocess`) follows per batch.
    """
    image = open_image(data, max_pixels)
    size = upright_size(image)
    return resize_pixels(_decode_opened(image, draft_size=image_size), image_size), size
