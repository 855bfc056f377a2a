"""Rendered images (PS3.18 8.3.5, PS3.4 N.2): stored pixels to what a screen shows.

The pipeline of one frame, in the order PS3.4 N.2 gives it:

1. decode (through `api.rendering` / `api.pixels`, so anything Chronicle can
   decode renders; YBR_FULL, YBR_FULL_422 and JPEG's YCbCr arrive as RGB);
2. grayscale: Modality LUT (Modality LUT Sequence, else Rescale Slope and
   Intercept, per frame for enhanced multi-frame), then VOI: the caller's
   window when given (a PS3.18 `window` parameter or a presentation state's),
   else the dataset's first Window Center / Width with its VOI LUT Function,
   else its first VOI LUT, else the frame's range; MONOCHROME1 (or a
   Presentation LUT Shape of INVERSE) inverted;
   colour: PALETTE COLOR through its lookup tables, RGB scaled to 8 bits;
3. the source region (cropped, flipped when given right to left or bottom
   to top), then the viewport (scaled to fit, aspect kept);
4. annotations burned in last.

`RenderParams.window` always wins over the dataset's own VOI, so presentation
states (WADO-URI's presentationUID) pass theirs the same way.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from api.pixels import TranscodeUnsupported
from api.render_geometry import crop_region, fit_viewport
from api.rendering import _first, _frame_array, _frame_attributes, _lut, _voi_lut, _window

#: PS3.3 C.11.2.1.3 VOI LUT Functions, in the spelling RenderParams keeps.
WINDOW_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
#: PS3.18 8.3.5.1.1 annotation keywords.
ANNOTATIONS = frozenset({"patient", "technique"})
#: Rendered image media types -> Pillow format names.
IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}

Levels = npt.NDArray[np.float64]
Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class RenderParams:
    """How to render a frame; every field optional.

    window: (center, width, function); function is PS3.18's "linear",
      "linear-exact" or "sigmoid" (PS3.3 spellings accepted too), width > 0.
    viewport: (rows, columns) to fit the image in, aspect kept; 0 leaves that
      dimension free (WADO-URI may give only one of rows and columns).
    region: WADO-URI's normalized (x1, y1, x2, y2) of the source, 0..1; x2 < x1
      (or y2 < y1) also flips the region (PS3.18 negative sw / sh).
    quality: JPEG quality 1..100.
    annotation: a subset of {"patient", "technique"}.
    """

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    region: tuple[float, float, float, float] | None = None
    quality: int = 90
    annotation: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.window is not None:
            center, width, function = self.window
            canonical = function.strip().upper().replace("-", "_") or "LINEAR"
            if canonical not in WINDOW_FUNCTIONS:
                raise ValueError(
                    f"window function {function!r} is not linear, linear-exact or sigmoid"
                )
            if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
                raise ValueError("window center must be a number and width a number > 0")
            object.__setattr__(self, "window", (float(center), float(width), canonical))
        if self.viewport is not None and (min(self.viewport) < 0 or max(self.viewport) < 1):
            raise ValueError("viewport rows and columns must be >= 0, one of them > 0")
        if self.region is not None:
            x1, y1, x2, y2 = self.region
            if not all(0.0 <= v <= 1.0 for v in self.region) or x1 == x2 or y1 == y2:
                raise ValueError("region must be four numbers in 0..1 enclosing an area")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be 1..100")
        unknown = set(self.annotation) - ANNOTATIONS
        if unknown:
            raise ValueError(f"unsupported annotation {sorted(unknown)}: patient or technique")


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def render_frame(ds: Dataset, frame_index: int, params: RenderParams) -> Image.Image:
    """Frame `frame_index` (0-based) of `ds` as an 8-bit "L" or "RGB" image.

    Raises ValueError for a frame index out of range or an image that would
    exceed MAX_OUTPUT_PIXELS, TranscodeUnsupported when the pixels cannot be
    decoded (no Pixel Data, or a syntax without a decoder).
    """
    frames = number_of_frames(ds)
    if not 0 <= frame_index < frames:
        raise ValueError(f"frame {frame_index + 1} is out of range: the instance has {frames}")
    if "PixelData" not in ds:
        raise TranscodeUnsupported("the instance has no Pixel Data to render")
    stored = _frame_array(ds, frame_index)
    image = Image.fromarray(_presentation_pixels(stored, ds, frame_index, params.window))
    if params.region is not None:
        image = crop_region(image, params.region)
    if params.viewport is not None:
        image = fit_viewport(image, params.viewport)
    if params.annotation:
        burn_in_annotation(image, ds, frame_index, params)
    return image


def _presentation_pixels(
    stored: npt.NDArray[Any], ds: Dataset, frame: int, window: tuple[float, float, str] | None
) -> Pixels:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _palette_pixels(stored, ds)
    if stored.ndim == 3:
        return _rgb_pixels(stored, ds)
    pixels = _grayscale_pixels(stored, ds, frame, window)
    inverse = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:
        pixels = 255 - pixels
    return pixels


def _grayscale_pixels(
    stored: npt.NDArray[Any], ds: Dataset, frame: int, window: tuple[float, float, str] | None
) -> Pixels:
    """Grayscale frame to 8 bits. Integer pixels go through a table over their range:
    the pipeline is per value, and a 512 x 512 CT has a few thousand distinct values,
    so this is several times faster than computing every pixel, with equal results."""
    if stored.dtype.kind not in "iu" or stored.size < 1024:
        return _to_levels(grayscale_level(stored, ds, frame, window))
    low, high = int(stored.min()), int(stored.max())
    if high - low >= min(stored.size, _MAX_TABLE):
        return _to_levels(grayscale_level(stored, ds, frame, window))
    # take() with a native intp index is the fastest gather numpy has.
    index = np.subtract(stored, low, dtype=np.intp)
    attrs = _frame_attributes(ds, frame)
    values = _modality_values(np.arange(low, high + 1, dtype=np.int64), ds, attrs)
    levels = _voi_level(values, ds, attrs, window)
    if levels is None:
        present = values[index]
        levels = _range_level(values, float(present.min()), float(present.max()))
    pixels: Pixels = _to_levels(levels).take(index)
    return pixels


#: Largest value range mapped through a table (8 MiB of float64 while building it).
_MAX_TABLE = 1 << 20


def _to_levels(level: Levels) -> Pixels:
    pixels: Pixels = np.rint(np.clip(level, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels


def grayscale_level(
    stored: npt.NDArray[Any],
    ds: Dataset,
    frame: int,
    window: tuple[float, float, str] | None = None,
) -> Levels:
    """Modality LUT then VOI of a grayscale frame: levels in [0, 1] (unclipped), 0 black."""
    attrs = _frame_attributes(ds, frame)
    values = _modality_values(stored, ds, attrs)
    levels = _voi_level(values, ds, attrs, window)
    if levels is None:
        return _range_level(values, float(values.min()), float(values.max()))
    return levels


def _modality_values(stored: npt.NDArray[Any], ds: Dataset, attrs: dict[str, Any]) -> Levels:
    """PS3.3 C.11.1: Modality LUT Sequence, else Rescale Slope / Intercept."""
    if ds.get("ModalityLUTSequence"):
        return _lut(stored.astype(np.int64), ds.ModalityLUTSequence[0], ds)
    slope = _first(attrs.get("RescaleSlope", 1))
    values: Levels = stored.astype(np.float64) * slope + _first(attrs.get("RescaleIntercept", 0))
    return values


def _voi_level(
    values: Levels, ds: Dataset, attrs: dict[str, Any], window: tuple[float, float, str] | None
) -> Levels | None:
    """PS3.3 C.11.2: the caller's window, the dataset's, its VOI LUT; None when none applies."""
    if window is not None:
        return _windowed(values, window[0], window[1], window[2])
    if "WindowCenter" in attrs and "WindowWidth" in attrs:
        center, width = _first(attrs["WindowCenter"]), _first(attrs["WindowWidth"])
        function = str(attrs.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return _windowed(values, center, width, function)
    if ds.get("VOILUTSequence"):
        return _voi_lut(np.rint(values).astype(np.int64), ds.VOILUTSequence[0], ds)
    return None


def _windowed(values: Levels, center: float, width: float, function: str) -> Levels:
    # A steep sigmoid overflows exp() far from the center; 1 / (1 + inf) = 0 is right there.
    with np.errstate(over="ignore"):
        return _window(values, center, width, function)


def _range_level(values: Levels, low: float, high: float) -> Levels:
    """No VOI at all: the frame's lowest value black, its highest white."""
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _palette_pixels(stored: npt.NDArray[Any], ds: Dataset) -> Pixels:
    try:
        rgb = apply_color_lut(stored, ds)
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot apply the palette colour lookup tables: {exc}") from exc
    top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind == "u" else 255.0
    return _to_8_bits(rgb, top)


def _rgb_pixels(stored: npt.NDArray[Any], ds: Dataset) -> Pixels:
    if stored.dtype == np.uint8:
        return stored
    bits = int(ds.get("BitsStored") or 8 * stored.dtype.itemsize)
    return _to_8_bits(stored, float((1 << bits) - 1))


def _to_8_bits(values: npt.NDArray[Any], top: float) -> Pixels:
    scaled = np.clip(values.astype(np.float64) * (255.0 / top), 0.0, 255.0)
    pixels: Pixels = np.rint(scaled).astype(np.uint8)
    return pixels


# -- annotation ------------------------------------------------------------------


def annotation_lines(
    ds: Dataset, frame_index: int, params: RenderParams
) -> tuple[list[str], list[str]]:
    """(patient lines for the top left, technique lines for the bottom left)."""
    patient: list[str] = []
    technique: list[str] = []
    if "patient" in params.annotation:
        patient = _present_lines(
            str(ds.get("PatientName", "")).replace("^", " ").strip(),
            _joined("ID", ds.get("PatientID")),
            _joined("", ds.get("PatientBirthDate"), ds.get("PatientSex")),
            _joined("", ds.get("StudyDate"), ds.get("StudyDescription")),
        )
    if "technique" in params.annotation:
        window = params.window
        voi = f"W {window[1]:g} C {window[0]:g}" if window else _dataset_window(ds)
        frames = number_of_frames(ds)
        technique = _present_lines(
            _joined("", ds.get("Modality"), ds.get("SeriesDescription")),
            _joined("", _labelled("kVp", ds.get("KVP")), _labelled("mAs", ds.get("Exposure"))),
            _labelled("Slice", ds.get("SliceThickness"), "mm"),
            voi,
            f"Frame {frame_index + 1}/{frames}" if frames > 1 else "",
        )
    return patient, technique


def _present_lines(*lines: str) -> list[str]:
    return [line for line in lines if line]


def _joined(label: str, *values: Any) -> str:
    text = " ".join(str(v).strip() for v in values if v not in (None, ""))
    return f"{label} {text}".strip() if text else ""


def _labelled(label: str, value: Any, unit: str = "") -> str:
    if value in (None, ""):
        return ""
    return f"{label} {value}{unit}"


def _dataset_window(ds: Dataset) -> str:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return ""
    return f"W {_first(width):g} C {_first(center):g}"


def burn_in_annotation(
    image: Image.Image, ds: Dataset, frame_index: int, params: RenderParams
) -> None:
    """Draw the annotation text into `image` (in place), outlined to read on any background."""
    patient, technique = annotation_lines(ds, frame_index, params)
    if not patient and not technique:
        return
    size = max(8, image.size[1] // 32)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    white, black = (255, 0) if image.mode == "L" else ((255, 255, 255), (0, 0, 0))
    margin, step = max(2, size // 3), size + max(1, size // 4)
    for number, line in enumerate(patient):
        draw.text(
            (margin, margin + number * step),
            line,
            fill=white,
            font=font,
            stroke_width=1,
            stroke_fill=black,
        )
    bottom = image.size[1] - margin - step * len(technique)
    for number, line in enumerate(technique):
        draw.text(
            (margin, bottom + number * step),
            line,
            fill=white,
            font=font,
            stroke_width=1,
            stroke_fill=black,
        )


# -- encoding --------------------------------------------------------------------


def display_frame_ms(ds: Dataset) -> int:
    """How long a multi-frame image shows each frame: Frame Time, else Cine Rate,
    else Recommended Display Frame Rate, else 100 ms (at least 20: browsers slow
    shorter GIF delays down to 100 ms)."""
    duration = 100.0
    try:
        if ds.get("FrameTime"):
            duration = float(ds.FrameTime)
        elif ds.get("CineRate"):
            duration = 1000.0 / float(ds.CineRate)
        elif ds.get("RecommendedDisplayFrameRate"):
            duration = 1000.0 / float(ds.RecommendedDisplayFrameRate)
    except (TypeError, ValueError, ZeroDivisionError):
        duration = 100.0
    return max(20, int(round(duration)))


def encode_images(
    images: list[Image.Image],
    media_type: str,
    *,
    quality: int = 90,
    frame_duration_ms: int = 100,
) -> bytes:
    """`images` as image/jpeg, image/png or image/gif; a GIF of several animates (looping).

    Raises ValueError for another media type, no images, or several images in
    a single-frame format. Pillow merges identical consecutive GIF frames
    (adding their durations), so an animation may hold fewer frames than given.
    """
    image_format = IMAGE_FORMATS.get(media_type.strip().lower())
    if image_format is None:
        raise ValueError(f"{media_type} is not a rendered image media type")
    if not images:
        raise ValueError("nothing to encode")
    if len(images) > 1 and image_format != "GIF":
        raise ValueError(f"{media_type} holds one frame; several frames animate as image/gif")
    out = io.BytesIO()
    first = images[0]
    if image_format == "JPEG":
        first.save(out, "JPEG", quality=quality)
    elif image_format == "PNG":
        # Level 3 is about as small as 6 for medical images and several times faster.
        first.save(out, "PNG", compress_level=3)
    elif len(images) == 1:
        first.save(out, "GIF")
    else:
        first.save(
            out,
            "GIF",
            save_all=True,
            append_images=images[1:],
            loop=0,
            duration=frame_duration_ms,
        )
    return out.getvalue()
