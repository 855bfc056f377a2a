"""All pixel work of Chronicle, rendering half: stored pixels to print values.

PS3.3 C.11: stored values -> Modality LUT -> VOI -> presentation values
(MONOCHROME1 inverted), as a Basic Grayscale Image Box wants them. Frames are
decoded through the decoding half, `api.pixels`, so what prints is exactly
what Chronicle can decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut

from api.pixels import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_TRANSFER_SYNTAXES,
    TranscodeUnsupported,
    decoder_plugins,
    plugin_for,
    why_not,
)

#: Bits stored of a printed image: 8 (in 8 allocated) or 12 (in 16 allocated).
PRINT_BITS = (8, 12)
# ITU-R BT.601 luma: a colour image prints as its brightness.
_LUMA = np.array([0.299, 0.587, 0.114])
_FRAME_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)

Levels = npt.NDArray[np.float64]


def render_for_print(ds: Dataset, *, bits: int = 8, frame: int = 0) -> npt.NDArray[Any]:
    """Frame `frame` of `ds` as unsigned MONOCHROME2 presentation values of `bits` bits.

    Grayscale: Modality LUT (Modality LUT Sequence, else Rescale Slope /
    Intercept), then VOI (the first Window Center / Width with its VOI LUT
    Function, else the first VOI LUT, else the frame's min-max), MONOCHROME1
    inverted; an enhanced multi-frame image takes these from the frame's
    functional groups. A colour image prints as its luminance. Returns uint8
    for 8 bits, uint16 holding 0..4095 for 12. Raises TranscodeUnsupported
    when the pixels cannot be decoded.
    """
    if bits not in PRINT_BITS:
        raise ValueError(f"print bits must be one of {PRINT_BITS}, not {bits}")
    stored = _frame_array(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        level = _grayscale_level(stored, ds, frame)
        if photometric == "MONOCHROME1":
            level = 1.0 - level
    else:
        level = _colour_level(stored, ds, photometric)
    top = (1 << bits) - 1
    return np.rint(np.clip(level, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)


def _frame_array(ds: Dataset, frame: int) -> npt.NDArray[Any]:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    ts = ts or EXPLICIT_VR_LITTLE_ENDIAN
    if ts not in NATIVE_TRANSFER_SYNTAXES and not decoder_plugins(ts):
        raise TranscodeUnsupported(why_not(ts, EXPLICIT_VR_LITTLE_ENDIAN))
    # YBR arrives as RGB; pydicom types its decode options oddly, hence the dict.
    options: dict[str, Any] = {"as_rgb": True}
    try:
        arr, _ = get_decoder(ts).as_array(
            ds, index=frame, decoding_plugin=plugin_for(ts), **options
        )
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot decode frame {frame + 1}: {exc}") from exc
    return arr


def _frame_attributes(ds: Dataset, frame: int) -> dict[str, Any]:
    """Rescale and window of one frame: the top level, then the shared and the
    frame's own functional groups (enhanced multi-frame, PS3.3 C.7.6.16)."""
    found = _present(ds)
    groups = list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    groups += per_frame[frame : frame + 1]
    for group in groups:
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            for item in list(group.get(sequence) or [])[:1]:
                found |= _present(item)
    return found


def _present(ds: Dataset) -> dict[str, Any]:
    values = {k: ds.get(k) for k in _FRAME_KEYWORDS}
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _grayscale_level(stored: npt.NDArray[Any], ds: Dataset, frame: int) -> Levels:
    """Presentation level in [0, 1] (0 black) of a grayscale frame, before inversion."""
    attrs = _frame_attributes(ds, frame)
    if ds.get("ModalityLUTSequence"):
        values = _lut(stored.astype(np.int64), ds.ModalityLUTSequence[0], ds)
    else:
        slope = _first(attrs.get("RescaleSlope", 1))
        values = stored.astype(np.float64) * slope + _first(attrs.get("RescaleIntercept", 0))
    if "WindowCenter" in attrs and "WindowWidth" in attrs:
        center, width = _first(attrs["WindowCenter"]), _first(attrs["WindowWidth"])
        function = str(attrs.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return _window(values, center, width, function)
    if ds.get("VOILUTSequence"):
        return _voi_lut(np.rint(values).astype(np.int64), ds.VOILUTSequence[0], ds)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _first(value: Any) -> float:
    """The first of a multi-valued number (Window Center may list several windows)."""
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)


def _window(values: Levels, center: float, width: float, function: str) -> Levels:
    """PS3.3 C.11.2.1.2 windowing onto [0, 1] (clipped by the caller)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-9)))
    if function == "LINEAR_EXACT" and width > 0:
        return (values - center) / width + 0.5
    if width <= 1:  # LINEAR with a width of 1 (or an invalid one): a threshold
        return (values > center - 0.5).astype(np.float64)
    return (values - (center - 0.5)) / (width - 1.0) + 0.5


def _voi_lut(values: npt.NDArray[np.int64], item: Dataset, ds: Dataset) -> Levels:
    """PS3.3 C.11.2.1.1 VOI LUT onto [0, 1]; its entries are `depth`-bit values."""
    depth = int(item.LUTDescriptor[2])
    levels: Levels = _lut(values, item, ds) / float((1 << depth) - 1)
    return levels


def _lut(values: npt.NDArray[np.int64], item: Dataset, ds: Dataset) -> Levels:
    """A Modality or VOI LUT (PS3.3 C.11.1.1.1 / C.11.2.1.1) applied to integer values.

    Inputs below the first mapped value take the first entry, above the last
    the last. Entries may be 8 to 16 bits (pydicom takes only 8 and 16).
    """
    entries, first = (int(v) for v in item.LUTDescriptor[:2])
    raw = item.LUTData
    if isinstance(raw, bytes):  # OW: 16-bit words in the dataset's byte order
        big = getattr(ds, "original_encoding", (None, True))[1] is False
        table = np.frombuffer(raw, dtype=">u2" if big else "<u2")
    else:
        table = np.asarray(raw if isinstance(raw, MultiValue | list) else [raw])
    table = table[: entries or 65536]
    index = np.clip(values - first, 0, len(table) - 1)
    mapped: Levels = table[index].astype(np.float64)
    return mapped


def _colour_level(stored: npt.NDArray[Any], ds: Dataset, photometric: str) -> Levels:
    """Luminance in [0, 1] of an RGB (YBR already converted) or palette colour frame."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind == "u" else 255.0
    elif stored.ndim == 3:
        rgb, top = stored, float((1 << int(ds.get("BitsStored", 8))) - 1)
    else:
        raise TranscodeUnsupported(f"cannot print Photometric Interpretation {photometric}")
    levels: Levels = np.asarray(rgb, dtype=np.float64) @ _LUMA / top
    return levels
