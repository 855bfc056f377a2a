"""A stored Grayscale Softcopy Presentation State applied to one frame (PS3.4 N.2).

What is applied, in the pipeline's order:

- Modality LUT: the presentation state's (Modality LUT Sequence, else Rescale
  Slope / Intercept) replaces the image's; absent, the identity (the state
  includes the module whenever a Modality LUT is to be applied, A.33.1).
- Softcopy VOI LUT: the item referencing the image and frame (or naming no
  images); a window (Window Center / Width, VOI LUT Function) or a VOI LUT.
  No such item: the window spanning every value the Modality LUT can output.
- Presentation LUT Shape IDENTITY or INVERSE. The image's own MONOCHROME1
  no longer inverts: under a presentation state the shape decides.
- Displayed Area Selection: the area between Top Left and Bottom Right Hand
  Corner (pixel coordinates before the spatial transformation), padded with
  black where it reaches outside the image. MAGNIFY's ratio is reported for
  the caller to scale by; SCALE TO FIT needs nothing more.
- Spatial Transformation: Image Rotation (clockwise) and then Image
  Horizontal Flip (C.10.6: the flip comes after the rotation).

Not applied, and reported as such: Presentation LUT Sequence (a table instead
of a shape), graphic annotations and layers, display shutters, overlay
activation, mask subtraction, TRUE SIZE and a non-square presentation pixel
aspect ratio. The result is a native single-frame grayscale dataset plus a
window for `api.render.render_frame`, so every VOI and inversion is done by
the one rendering module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from api.rendering import _frame_array

GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_SHAPES = ("IDENTITY", "INVERSE")
# Attributes the presented image must not inherit from the source image.
_NOT_INHERITED = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "NumberOfFrames",
        "PerFrameFunctionalGroupsSequence",
        "SharedFunctionalGroupsSequence",
        "IconImageSequence",
        "ModalityLUTSequence",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
        "PresentationLUTShape",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
    }
)
# Content of the state this module does not apply -> how it is reported.
_NOT_APPLIED = {
    "PresentationLUTSequence": "Presentation LUT Sequence (rendered as IDENTITY)",
    "GraphicAnnotationSequence": "graphic annotations",
    "ShutterShape": "display shutters",
    "BitmapDisplayShutterSequence": "display shutters",
    "MaskSubtractionSequence": "mask subtraction",
}

#: A displayed area larger than this is refused (it is allocated in memory).
_MAX_AREA_PIXELS = 64 * 1024 * 1024

Stored = npt.NDArray[Any]


class PresentationStateRefused(Exception):
    """The presentation state cannot be applied to this image (reason in the message)."""


@dataclass(frozen=True)
class Presentation:
    """A frame as the presentation state presents it, ready for render_frame(image, 0, ...)."""

    #: Native single-frame grayscale image: displayed area, rotation and flip
    #: done; the state's Modality LUT, VOI LUT (table) and Presentation LUT
    #: Shape in its attributes.
    image: Dataset
    #: The state's window (center, width, function) to pass as RenderParams.window.
    window: tuple[float, float, str] | None
    #: MAGNIFY's Presentation Pixel Magnification Ratio, else None.
    magnification: float | None
    applied: tuple[str, ...]
    not_applied: tuple[str, ...]


def apply_presentation_state(image: Dataset, gsps: Dataset, frame_index: int) -> Presentation:
    """The presentation of frame `frame_index` (0-based) of `image` by `gsps`.

    Raises PresentationStateRefused when `gsps` is not a Grayscale Softcopy
    Presentation State, does not reference this image and frame, or the image
    is not grayscale; TranscodeUnsupported when the frame cannot be decoded.
    """
    check_references(gsps, image, frame_index + 1)
    photometric = str(image.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GRAYSCALE:
        raise PresentationStateRefused(
            f"a Grayscale Softcopy Presentation State does not apply to a {photometric} image"
        )
    sop, frame_number = str(image.SOPInstanceUID), frame_index + 1
    applied: list[str] = []
    presented = _header(image)
    _set_modality_lut(presented, gsps, applied)
    window = _set_voi(presented, gsps, sop, frame_number, applied)
    shape = str(gsps.get("PresentationLUTShape", "IDENTITY")).strip().upper() or "IDENTITY"
    presented.PresentationLUTShape = shape if shape in _SHAPES else "IDENTITY"
    presented.PhotometricInterpretation = "MONOCHROME2"
    applied.append(f"Presentation LUT Shape {presented.PresentationLUTShape}")
    stored = _frame_array(image, frame_index)
    area = _applicable(gsps.get("DisplayedAreaSelectionSequence"), sop, frame_number)
    if area is not None:
        stored = _displayed_area(stored, area, _black_value(image, presented), applied)
    stored = _spatial_transformation(stored, gsps, applied)
    _set_pixels(presented, stored, image)
    return Presentation(
        image=presented,
        window=window,
        magnification=_magnification(area, applied),
        applied=tuple(applied),
        not_applied=_not_applied(gsps, area),
    )


def check_references(gsps: Dataset, image: Dataset, frame_number: int) -> None:
    """Refuse unless `gsps` is a GSPS whose Referenced Series Sequence lists this frame."""
    sop_class = str(gsps.get("SOPClassUID", ""))
    if sop_class != GSPS_SOP_CLASS:
        raise PresentationStateRefused(
            f"{gsps.get('SOPInstanceUID', '?')} is SOP class {sop_class or 'unknown'}, "
            f"not a Grayscale Softcopy Presentation State ({GSPS_SOP_CLASS})"
        )
    sop, series = str(image.get("SOPInstanceUID", "")), str(image.get("SeriesInstanceUID", ""))
    for series_item in gsps.get("ReferencedSeriesSequence") or []:
        if str(series_item.get("SeriesInstanceUID", "")) != series:
            continue
        if _references(series_item.get("ReferencedImageSequence"), sop, frame_number):
            return
    raise PresentationStateRefused(
        f"presentation state {gsps.get('SOPInstanceUID', '?')} does not reference "
        f"frame {frame_number} of image {sop}"
    )


def _references(items: Any, sop: str, frame_number: int) -> bool:
    for item in items or []:
        if str(item.get("ReferencedSOPInstanceUID", "")) != sop:
            continue
        frames = _numbers(item.get("ReferencedFrameNumber"))
        if not frames or frame_number in frames:
            return True
    return False


def _applicable(items: Any, sop: str, frame_number: int) -> Dataset | None:
    """The first item that names no images or references this frame (VOI, displayed area)."""
    for item in items or []:
        referenced = item.get("ReferencedImageSequence")
        if not referenced or _references(referenced, sop, frame_number):
            found: Dataset = item
            return found
    return None


def _numbers(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [float(v) for v in values]


def _first(value: Any) -> float:
    return _numbers(value)[0]


# -- the presented image's attributes ---------------------------------------------


def _header(image: Dataset) -> Dataset:
    """A copy of the image's attributes (for annotations) without pixels or grayscale pipeline."""
    header = Dataset()
    for element in image:
        group = element.tag.group
        if element.keyword in _NOT_INHERITED or 0x6000 <= group <= 0x60FF:
            continue
        header.add(element)
    presented = copy.deepcopy(header)
    presented.file_meta = FileMetaDataset()
    presented.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return presented


def _set_modality_lut(presented: Dataset, gsps: Dataset, applied: list[str]) -> None:
    if gsps.get("ModalityLUTSequence"):
        presented.ModalityLUTSequence = copy.deepcopy(gsps.ModalityLUTSequence)
        applied.append("Modality LUT Sequence")
    elif "RescaleSlope" in gsps or "RescaleIntercept" in gsps:
        presented.RescaleSlope = gsps.get("RescaleSlope", 1)
        presented.RescaleIntercept = gsps.get("RescaleIntercept", 0)
        applied.append(
            f"Rescale Slope {_first(presented.RescaleSlope):g} "
            f"Intercept {_first(presented.RescaleIntercept):g}"
        )
    else:
        presented.RescaleSlope, presented.RescaleIntercept = 1, 0
        applied.append("identity Modality LUT")


def _set_voi(
    presented: Dataset, gsps: Dataset, sop: str, frame_number: int, applied: list[str]
) -> tuple[float, float, str] | None:
    """The state's window; None when its VOI LUT table went onto `presented` instead."""
    item = _applicable(gsps.get("SoftcopyVOILUTSequence"), sop, frame_number)
    if item is not None and item.get("WindowCenter") not in (None, ""):
        center, width = _first(item.WindowCenter), _first(item.get("WindowWidth"))
        function = str(item.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        if width <= 0:
            raise PresentationStateRefused(f"the presentation state's Window Width is {width:g}")
        applied.append(f"Softcopy VOI window center {center:g} width {width:g} {function}")
        return center, width, function
    if item is not None and item.get("VOILUTSequence"):
        presented.VOILUTSequence = copy.deepcopy(item.VOILUTSequence[:1])
        applied.append("Softcopy VOI LUT Sequence")
        return None
    # PS3.3 C.11.2: no VOI maps the full range of the Modality LUT's output.
    low, high = _modality_range(presented)
    applied.append(f"no Softcopy VOI: the full range {low:g}..{high:g}")
    return (low + high + 1) / 2, high - low + 1, "LINEAR"


def _stored_range(image: Dataset) -> tuple[int, int]:
    bits = int(image.get("BitsStored") or image.get("BitsAllocated") or 16)
    if int(image.get("PixelRepresentation") or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _modality_range(presented: Dataset) -> tuple[float, float]:
    """The lowest and highest value the presented image's Modality LUT can output."""
    if presented.get("ModalityLUTSequence"):
        data = presented.ModalityLUTSequence[0].LUTData
        values = (
            np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(_numbers(data))
        )
        return float(values.min()), float(values.max())
    low, high = _stored_range(presented)
    slope, intercept = _first(presented.RescaleSlope), _first(presented.RescaleIntercept)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


# -- pixels ----------------------------------------------------------------------


def _black_value(image: Dataset, presented: Dataset) -> int:
    """The stored value the presented pipeline shows as black (for padding)."""
    low, high = _stored_range(image)
    rising = presented.get("ModalityLUTSequence") or _first(presented.RescaleSlope) >= 0
    darkest_is_low = bool(rising) == (presented.PresentationLUTShape == "IDENTITY")
    return low if darkest_is_low else high


def _displayed_area(stored: Stored, area: Dataset, pad: int, applied: list[str]) -> Stored:
    """Rows and columns between the two corners (1-based, inclusive), black outside the image."""
    corners = _numbers(area.get("DisplayedAreaTopLeftHandCorner")) + _numbers(
        area.get("DisplayedAreaBottomRightHandCorner")
    )
    if len(corners) != 4:
        raise PresentationStateRefused("the displayed area has no Top Left and Bottom Right corner")
    c1, r1, c2, r2 = (int(v) for v in corners)
    top, bottom, left, right = min(r1, r2), max(r1, r2), min(c1, c2), max(c1, c2)
    height, width = bottom - top + 1, right - left + 1
    if height * width > _MAX_AREA_PIXELS:
        raise PresentationStateRefused(f"the displayed area ({width}x{height}) is too large")
    rows, columns = stored.shape
    out = np.full((height, width), pad, dtype=stored.dtype)
    src_top, src_bottom = max(top, 1), min(bottom, rows)
    src_left, src_right = max(left, 1), min(right, columns)
    if src_top <= src_bottom and src_left <= src_right:
        out[src_top - top : src_bottom - top + 1, src_left - left : src_right - left + 1] = stored[
            src_top - 1 : src_bottom, src_left - 1 : src_right
        ]
    applied.append(f"Displayed Area columns {left}..{right}, rows {top}..{bottom}")
    return out


def _spatial_transformation(stored: Stored, gsps: Dataset, applied: list[str]) -> Stored:
    rotations = _numbers(gsps.get("ImageRotation"))
    rotation = int(rotations[0]) if rotations else 0
    if rotation not in (0, 90, 180, 270):
        raise PresentationStateRefused(f"Image Rotation {rotation} is not 0, 90, 180 or 270")
    flip = str(gsps.get("ImageHorizontalFlip", "N")).strip().upper() == "Y"
    if rotation:
        stored = np.rot90(stored, k=-(rotation // 90))  # rot90 turns counter-clockwise
        applied.append(f"Image Rotation {rotation} clockwise")
    if flip:
        stored = stored[:, ::-1]
        applied.append("Image Horizontal Flip")
    return stored


def _set_pixels(presented: Dataset, stored: Stored, image: Dataset) -> None:
    pixels = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<"))
    allocated = 8 * pixels.dtype.itemsize
    presented.Rows, presented.Columns = pixels.shape
    presented.SamplesPerPixel = 1
    presented.BitsAllocated = allocated
    presented.BitsStored = min(int(image.get("BitsStored") or allocated), allocated)
    presented.HighBit = presented.BitsStored - 1
    presented.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    presented.add_new(0x7FE00010, "OW" if allocated > 8 else "OB", pixels.tobytes())


def _magnification(area: Dataset | None, applied: list[str]) -> float | None:
    if area is None or str(area.get("PresentationSizeMode", "")).strip() != "MAGNIFY":
        return None
    ratio = area.get("PresentationPixelMagnificationRatio")
    if ratio in (None, "") or float(ratio) <= 0:
        return None
    applied.append(f"MAGNIFY by {float(ratio):g}")
    return float(ratio)


def _not_applied(gsps: Dataset, area: Dataset | None) -> tuple[str, ...]:
    found = [note for keyword, note in _NOT_APPLIED.items() if gsps.get(keyword)]
    if any(0x6000 <= element.tag.group <= 0x60FF for element in gsps):
        found.append("overlay activation")
    if area is not None:
        if str(area.get("PresentationSizeMode", "")).strip() == "TRUE SIZE":
            found.append("TRUE SIZE (rendered as SCALE TO FIT)")
        aspect = _numbers(area.get("PresentationPixelAspectRatio"))
        if len(aspect) == 2 and aspect[0] != aspect[1]:
            found.append("non-square Presentation Pixel Aspect Ratio")
    return tuple(dict.fromkeys(found))
