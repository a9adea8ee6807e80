"""Decoding real-world files: EXIF orientation, colour modes, size limits, broken files."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from schemas import images
from schemas.images import ImageError, prepare_image
from tests.conftest import REPO_ROOT


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _left_half_red_right_half_blue(width=80, height=40):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_exif_orientation_is_applied():
    image = _left_half_red_right_half_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown after rotating 90 degrees clockwise
    data = _encode(image, "JPEG", exif=exif, quality=95)
    pixels, size = prepare_image(data, 72)
    assert size == (40, 80)  # upright width x height
    # After a clockwise rotation the red left half is on top.
    assert pixels[10, 36, 0] > 200 and pixels[10, 36, 2] < 60
    assert pixels[60, 36, 2] > 200 and pixels[60, 36, 0] < 60


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "I;16", "I", "F"])
def test_every_mode_becomes_rgb_uint8(mode):
    base = _left_half_red_right_half_blue()
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
        assert image.mode == "I;16"
    else:
        image = base.convert(mode)
    data = _encode(image, "TIFF" if mode in ("CMYK", "I", "F") else "PNG")
    pixels, size = prepare_image(data, 71)
    assert pixels.shape == (71, 71, 3) and pixels.dtype == np.uint8
    assert size == (80, 40)


def test_sixteen_bit_is_scaled_not_clipped():
    gray = np.full((30, 30), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    pixels, _ = prepare_image(_encode(Image.fromarray(gray), "PNG"), 71)
    assert abs(int(pixels[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    pixels, _ = prepare_image(_encode(rgba, "PNG"), 71)
    assert pixels.min() == 255
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 0] * 256)
    pixels, _ = prepare_image(_encode(palette, "PNG", transparency=0), 71)
    assert pixels.min() == 255


def test_resize_squashes_to_square():
    pixels, size = prepare_image(_encode(_left_half_red_right_half_blue(300, 100), "PNG"), 99)
    assert pixels.shape == (99, 99, 3) and size == (300, 100)


def test_pixel_limit_rejects_before_decoding():
    data = _encode(Image.new("RGB", (200, 200)), "PNG")
    with pytest.raises(ImageError) as caught:
        prepare_image(data, 71, max_pixels=10_000)
    assert caught.value.error_class == images.TOO_LARGE
    assert "40,000 pixels is above the limit of 10,000" in caught.value.message


@pytest.mark.parametrize("data, error_class", [
    (b"", images.EMPTY_FILE),
    (b"this is plain text, not a JPEG", images.UNSUPPORTED_FORMAT),
])
def test_unusable_bytes(data, error_class):
    with pytest.raises(ImageError) as caught:
        prepare_image(data, 71)
    assert caught.value.error_class == error_class


def test_truncated_jpeg_is_a_decode_error():
    data = _encode(Image.effect_noise((120, 120), 40).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageError) as caught:
        prepare_image(data[: len(data) // 2], 71)
    assert caught.value.error_class == images.DECODE_ERROR


def test_large_jpeg_draft_decoding_matches_full_decoding_closely():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 12, 3)), np.ones((100, 100, 1))).astype(np.uint8)
    data = _encode(Image.fromarray(smooth), "JPEG", quality=95)
    drafted, size = prepare_image(data, 150)
    full = images.resize_pixels(images.to_rgb(Image.open(io.BytesIO(data))), 150)
    assert size == (1200, 1200)
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 3.0


def test_only_supported_formats_are_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto (x) show showpage\n"
    psd_like = _encode(Image.new("RGB", (20, 20)), "TGA")  # a format Pillow reads, but not one the jobs accept
    for data in (eps, psd_like):
        with pytest.raises(ImageError) as caught:
            prepare_image(data, 71)
        assert caught.value.error_class == images.UNSUPPORTED_FORMAT
        assert "JPEG, PNG" in caught.value.message


def test_a_malformed_exif_block_leaves_the_photo_as_stored():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = bytearray(_encode(_left_half_red_right_half_blue(), "JPEG", exif=exif, quality=95))
    start = data.find(b"Exif\0\0")
    data[start + 10:start + 18] = b"\xff" * 8  # the IFD offset now points nowhere
    pixels, size = prepare_image(bytes(data), 72)
    assert size == (80, 40)  # not rotated
    assert pixels[36, 10, 0] > 200 and pixels[36, 60, 2] > 200  # red left, blue right, as stored


@pytest.mark.parametrize("values, expected", [
    (np.full((300, 20), -7, dtype=np.int32), 0),  # negative 32-bit: clipped to black
    (np.full((300, 20), 200, dtype=np.int32), 200),  # fits 8 bits: kept
    (np.full((300, 20), 70000, dtype=np.int32), 255),  # above 16 bits: scaled by its own maximum
    (np.full((300, 20), 1.5, dtype=np.float32), 2),  # float, rounded
])
def test_thirty_two_bit_images_are_scaled_block_by_block(values, expected):
    pixels, _ = prepare_image(_encode(Image.fromarray(values), "TIFF"), 71)
    assert np.all(pixels == expected)


def test_big_endian_sixteen_bit_tiff():
    stored = np.full((300, 30), 65535, dtype=">u2")
    stored[:, :15] = 32768
    image = Image.frombuffer("I;16B", (30, 300), stored.tobytes(), "raw", "I;16B", 0, 1)
    pixels, _ = prepare_image(_encode(image, "TIFF"), 72)
    assert np.all(pixels[:, :30] == 128) and np.all(pixels[:, 42:] == 255)


def test_what_a_file_that_cannot_be_opened_is_is_said():
    jpeg = bytearray(_encode(_left_half_red_right_half_blue(), "JPEG"))
    start_of_frame = jpeg.find(b"\xff\xc0")
    jpeg[start_of_frame + 5:start_of_frame + 7] = b"\x00\x00"  # a height of 0
    with pytest.raises(ImageError) as caught:
        prepare_image(bytes(jpeg), 71)
    assert caught.value.error_class == images.DECODE_ERROR and "a JPEG file" in caught.value.message
    with pytest.raises(ImageError) as caught:
        prepare_image(b"%PDF-1.4\n%%EOF\n", 71)
    assert caught.value.error_class == images.UNSUPPORTED_FORMAT and "a PDF file" in caught.value.message


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    data = bytearray(_encode(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG", progressive=True))
    start = data.find(b"\xff\xda")
    end = data.find(b"\xff\xda", start + 2)
    scan = bytes(data[start:end])  # one whole scan, header and entropy-coded data
    bomb = bytes(data[:end]) + scan * (images.MAX_JPEG_SCANS + 10) + bytes(data[end:])
    with pytest.raises(ImageError) as caught:
        prepare_image(bomb, 71)
    assert caught.value.error_class == images.DECODE_ERROR and "scans" in caught.value.message
    prepare_image(bytes(data), 71)  # an ordinary progressive JPEG still decodes


def test_an_icon_holding_a_huge_image_is_refused_before_pillow_decodes_it():
    inner = _encode(Image.new("RGB", (3000, 3000)), "PNG")
    icon = (b"\x00\x00\x01\x00\x01\x00" + bytes([16, 16, 0, 0, 1, 0, 32, 0]) + len(inner).to_bytes(4, "little")
            + (22).to_bytes(4, "little") + inner)
    with pytest.raises(ImageError) as caught:
        prepare_image(icon, 71, max_pixels=1_000_000)
    assert caught.value.error_class == images.TOO_LARGE and "3000x3000" in caught.value.message
    small = _encode(Image.new("RGB", (32, 32), (200, 10, 10)), "ICO")
    pixels, _ = prepare_image(small, 71, max_pixels=1_000_000)
    assert pixels[0, 0, 0] > 150


# ---------------------------------------------------------------------------------------------------------------
# Every colour mode is made RGB a block of rows at a time: the same pixels as converting the whole picture first.


def _converted_whole_then_resized(image, size):
    """The preprocessing rule written the plain way: the whole picture made 8-bit RGB, then squashed."""
    return np.asarray(images.to_rgb(image).resize((size, size), Image.Resampling.BILINEAR))


def _noise_rgba(width, height, seed=0):
    """Random colours and alpha (fully transparent and opaque pixels included): every compositing case."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[::7, :, 3], pixels[1::7, :, 3] = 0, 255
    return Image.fromarray(pixels, "RGBA")


def _in_mode(mode, rgba):
    """``rgba`` as a picture of one of the modes decoders give, palettes with and without transparency included."""
    palette = rgba.convert("RGB").quantize(200)
    if mode == "P+alpha per index":
        palette.info["transparency"] = bytes(range(0, 250, 5)) * 4
        return palette
    if mode == "P+transparent index":
        palette.info["transparency"] = 3
        return palette
    if mode == "P":
        return palette
    if mode == "PA":
        with_alpha = palette.convert("PA")
        with_alpha.putalpha(rgba.getchannel("A"))
        return with_alpha
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(rgba.convert("L"), dtype=np.float64)
        values = {"I;16": gray * 257, "I": gray * 100 - 50, "F": gray / 3}[mode]
        return Image.fromarray(values.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    return rgba.convert(mode)


COLOUR_MODES = ["RGBA", "LA", "P+alpha per index", "P+transparent index", "PA", "P", "CMYK", "RGBX", "YCbCr", "LAB",
                "RGB", "L", "1", "I;16", "I", "F"]


@pytest.mark.parametrize("mode", COLOUR_MODES)
@pytest.mark.parametrize("width, height, size", [
    (97, 61, 45),  # smaller both ways
    (45, 200, 45),  # as wide as the target: no horizontal pass
    (30, 1300, 71),  # wider and much shorter: several blocks of rows
    (1300, 5, 71),  # a block of one row; taller after resizing
    (10, 1000, 71),  # 100 times as tall as wide: still across, then down
    (10, 1001, 71),  # more than 100 times: Pillow resizes down first, so the blocks are of columns
    (100, 129, 71),  # Pillow 13: across first (the height shrinks by 58, not more than twice the width's 29)
    (100, 130, 71),  # Pillow 13: down first (59 > 58)
    (250, 429, 71),  # the same boundary for a wider picture: across first ...
    (250, 430, 71),  # ... and down first
])
def test_every_mode_gives_the_pixels_of_converting_the_whole_picture(mode, width, height, size, monkeypatch):
    monkeypatch.setattr(images, "_PIXELS_PER_BLOCK", 1000)  # many blocks of rows even in a small picture
    image = _in_mode(mode, _noise_rgba(width, height))
    assert np.array_equal(images.resize_pixels(image, size), _converted_whole_then_resized(image, size))


@pytest.mark.parametrize("mode, fmt, options", [
    ("RGBA", "PNG", {}), ("LA", "PNG", {}), ("P", "PNG", {"transparency": bytes(range(0, 250, 5)) * 4}),
    ("P", "PNG", {"transparency": 3}), ("CMYK", "TIFF", {}), ("CMYK", "JPEG", {"quality": 95}),
    ("I;16", "PNG", {}), ("I", "TIFF", {}), ("F", "TIFF", {}), ("RGBA", "WEBP", {"lossless": True}),
    ("RGBA", "TIFF", {}),
])
def test_prepared_files_of_every_mode_match_converting_the_whole_picture(mode, fmt, options):
    data = _encode(_in_mode(mode, _noise_rgba(300, 140, seed=1)), fmt, **options)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    pixels, _ = prepare_image(data, 71)
    assert np.array_equal(pixels, _converted_whole_then_resized(decoded, 71))


MEMORY_PROBE = r"""
import sys
from schemas import images

def kib(field):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))

data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from what is resident now
before = kib("VmRSS")
images.prepare_image(data, 299)
print(kib("VmHWM") - before)
"""


@pytest.mark.integration
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
@pytest.mark.parametrize("mode, options", [("RGBA", {}), ("P", {"transparency": 5})])
def test_a_transparent_picture_is_prepared_without_a_full_size_rgba_copy(mode, options, tmp_path):
    """A 5.8 MP picture with alpha, in a fresh process: the peak memory added stays near what the decoded picture
    takes (22 MiB RGBA, 5.5 MiB P; about 10 MiB more were measured). Converting the whole picture first added 100 MiB
    or more."""
    y, x = np.mgrid[0:2400, 0:2400]
    rgba = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256, (7 * x + y) % 256], -1).astype(np.uint8))
    path = tmp_path / "big.png"
    path.write_bytes(_encode(_in_mode(mode, rgba), "PNG", compress_level=1, **options))
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True)
    decoded_mib = 2400 * 2400 * (4 if mode == "RGBA" else 1) / 2**20
    assert int(done.stdout.split()[-1]) / 1024 < decoded_mib + 30


# ---------------------------------------------------------------------------------------------------------------
# Error messages say what a file is without quoting it: they end up in tables and a gallery.

PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


@pytest.mark.parametrize("data, description", [
    (PASSWD, "it looks like text, not an image"),
    ("caf\u00e9 r\u00e9sum\u00e9 root\n".encode("utf-8") * 100, "it looks like text, not an image"),
    (b"\x00" * 600 + b"root", "its first bytes are all zero"),
    (b"\x07root\x01\x02\x03" + bytes(range(256)), "its first bytes match no known image format"),
])
def test_a_file_that_is_no_image_is_described_without_quoting_its_bytes(data, description):
    with pytest.raises(ImageError) as caught:
        prepare_image(data, 71)
    assert caught.value.error_class == images.UNSUPPORTED_FORMAT
    assert description in caught.value.message and "root" not in caught.value.message
    assert "\\x" not in caught.value.message and "b'" not in caught.value.message


@pytest.mark.parametrize("signature, kind", [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
                                             (b"GIF89a", "GIF"), (b"II*\x00", "TIFF")])
def test_a_damaged_header_of_a_known_format_is_described_without_quoting_it(signature, kind):
    with pytest.raises(ImageError) as caught:
        prepare_image(signature + PASSWD, 71)
    assert caught.value.error_class == images.DECODE_ERROR
    assert caught.value.message == f"a {kind} file whose header cannot be parsed (damaged or truncated)"


@pytest.mark.parametrize("data, words", [
    (b"P6 " + PASSWD, "Token too long in file header"),  # Pillow quotes the header token it could not read
    (b"P2\n3 3\n255\n1 2 3 4 rootrootrootroot 6 7 8 9\n", "Token too long found in data"),  # ... or the pixel token
])
def test_what_pillow_quotes_from_a_file_is_left_out_of_the_message(data, words):
    with pytest.raises(ImageError) as caught:
        prepare_image(data, 71)
    assert caught.value.error_class == images.DECODE_ERROR
    assert words in caught.value.message and "root" not in caught.value.message


def test_library_messages_are_escaped_and_capped():
    text = images.describe_error(OSError("line one\nline two\x00\x1b[31m" + "x" * 500), images.LIBRARY_TEXT_CHARS)
    assert text.startswith("OSError: line one\\nline two\\x00\\x1b[31m")
    assert text.isprintable() and len(text) < images.LIBRARY_TEXT_CHARS + 30 and text.endswith("... (cut)")
    assert images.describe_error(KeyError()) == "KeyError"
    assert images.describe_error(ValueError("caf\u00e9 is fine")) == "ValueError: caf\u00e9 is fine"
