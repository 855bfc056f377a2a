"""Geometry of a rendered image: source region (crop, flip) and viewport (fit, aspect kept)."""

from __future__ import annotations

import math

from PIL import Image

#: A rendered image larger than this is refused (a 64 x 64 image fitted to a
#: 32767 x 32767 viewport would take 1 GiB).
MAX_OUTPUT_PIXELS = 64 * 1024 * 1024


def crop_region(image: Image.Image, region: tuple[float, float, float, float]) -> Image.Image:
    """The normalized region of `image`, at least one pixel; reversed bounds flip it."""
    x1, y1, x2, y2 = region
    width, height = image.size
    left, right = _pixel_span(min(x1, x2), max(x1, x2), width)
    top, bottom = _pixel_span(min(y1, y2), max(y1, y2), height)
    cropped = image.crop((left, top, right, bottom))
    if x2 < x1:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if y2 < y1:
        cropped = cropped.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return cropped


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    start = min(int(round(low * size)), size - 1)
    return start, max(start + 1, min(int(round(high * size)), size))


def fitted_size(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of `size` (width, height) fitted to (rows, columns)."""
    width, height = size
    rows, columns = viewport
    scale = min(columns / width if columns else math.inf, rows / height if rows else math.inf)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_viewport(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """`image` scaled to fit `viewport` (rows, columns), aspect ratio kept."""
    size = fitted_size(image.size, viewport)
    if size[0] * size[1] > MAX_OUTPUT_PIXELS:
        raise ValueError(f"a {size[0]}x{size[1]} rendering is larger than this server renders")
    if size == image.size:
        return image
    # Lanczos keeps thin structures when shrinking; bicubic is enough to enlarge.
    shrinking = size[0] < image.size[0]
    resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
    return image.resize(size, resample)
