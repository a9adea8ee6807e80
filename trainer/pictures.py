"""Pictures of where an attention decoder looked: one small panel per generated word, the photo lit where the word's
attention weights over the grid are high (the classic Show, Attend and Tell figure).

The backbone sees the upright photo squashed to a square (`schemas.images.resize_pixels`), so grid cell (i, j)
covers the same fraction of the photo whatever its aspect: the g x g weights are stretched over the photo as shown.
Brightness is on one absolute scale for every word: sqrt(weight x cells / `FULL_SHARE`), clipped to 1, so a cell
with `FULL_SHARE` times its uniform share of attention (or more) is fully lit, uniform attention lights the whole
photo at half brightness, and a cell the word ignored is dark. The panel's label gives the word and the share of
attention on its brightest cell. Pillow only (no plotting library).
"""
import base64
import io

import numpy as np
from PIL import Image, ImageDraw

PANEL = 128
COLUMNS = 6
LABEL_HEIGHT = 16
FLOOR = 0.15  # brightness of the cells the word did not look at
FULL_SHARE = 4.0  # a cell with this many times its uniform share of attention is fully lit


def attention_panels(image: Image.Image, words: list[str], attention: np.ndarray, grid: tuple,
                     panel: int = PANEL, columns: int = COLUMNS) -> Image.Image:
    """The photo, then one panel per word (``attention`` [>= len(words), g * g]: row i for word i; a final row for
    <end> is not drawn), ``columns`` panels per row."""
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 2 or attention.shape[1] != grid[0] * grid[1] or attention.shape[0] < len(words):
        raise ValueError(f"attention of shape {attention.shape} does not cover {len(words)} words on a "
                         f"{grid[0]}x{grid[1]} grid")
    photo = image.convert("RGB")
    scale = panel / max(photo.size)
    photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                         Image.Resampling.BILINEAR)
    pixels = np.asarray(photo, np.float32)
    panels = [(photo, "")]
    for index, word in enumerate(words):
        weights = attention[index].reshape(grid[0], grid[1])
        peak = float(weights.max())
        brightness = np.sqrt(np.clip(weights * weights.size / FULL_SHARE, 0.0, 1.0))
        heat = Image.fromarray((brightness * 255.0).astype(np.uint8), "L")
        heat = np.asarray(heat.resize(photo.size, Image.Resampling.BILINEAR), np.float32)[..., None] / 255.0
        lit = pixels * (FLOOR + (1.0 - FLOOR) * heat)
        panels.append((Image.fromarray(lit.clip(0, 255).astype(np.uint8)), f"{word} {peak:.0%}"))
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * panel, rows * (panel + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for position, (picture, label) in enumerate(panels):
        left, top = (position % columns) * panel, (position // columns) * (panel + LABEL_HEIGHT)
        sheet.paste(picture, (left + (panel - picture.width) // 2, top + (panel - picture.height) // 2))
        draw.text((left + 3, top + panel + 2), label, fill=(20, 20, 20))
    return sheet


def png_data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
