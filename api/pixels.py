"""All pixel work of Chronicle: transfer syntax conversion and rendering for print.

WADO-RS, WADO-URI, C-MOVE/C-GET and print call this module and nothing else
for pixels, so what Chronicle can decode is decided in one place.

Decoding uses pydicom 3's pixel decoders with the plugins installed here
(pillow, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls) plus one plugin of our
own over imagecodecs (libjpeg-turbo 3), because the only pydicom plugin for
JPEG lossless and 12-bit JPEG is pylibjpeg-libjpeg, which is GPL and not
installed. What decodes (see `decodable_transfer_syntaxes()`):

- JPEG baseline (…4.50), extended 8/12-bit (…4.51), lossless (…4.57, …4.70):
  imagecodecs (pillow as fallback for baseline and 8-bit extended)
- JPEG-LS lossless / near-lossless (…4.80, …4.81): pyjpegls
- JPEG 2000 lossless / lossy (…4.90, …4.91), HTJ2K (…4.201-203): pylibjpeg-openjpeg
- RLE lossless (…5): pylibjpeg-rle
- native: Implicit VR LE, Explicit VR BE, Deflated Explicit VR LE (re-encoded)

Never decoded: JPEG 2000 Part 2 multi-component (…4.92/93, no decoder),
JPIP, JPEG XL and Deflated Image Frame Compression (unknown to pydicom 3.0),
and the video syntaxes (MPEG2, MPEG-4 AVC, HEVC, SMPTE ST 2110), which are
served only as stored.
"""

from __future__ import annotations

import io
import threading
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom import dcmread, dcmwrite
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import decompress

EXPLICIT_VR_LITTLE_ENDIAN = str(dicom_uid.ExplicitVRLittleEndian)
IMPLICIT_VR_LITTLE_ENDIAN = str(dicom_uid.ImplicitVRLittleEndian)
EXPLICIT_VR_BIG_ENDIAN = str(dicom_uid.ExplicitVRBigEndian)
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = str(dicom_uid.DeflatedExplicitVRLittleEndian)

#: Native (unencapsulated) syntaxes: conversion re-encodes, never decodes.
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)

#: Video and real-time video: always served as stored.
VIDEO_TRANSFER_SYNTAXES = frozenset(
    {str(u) for u in dicom_uid.MPEGTransferSyntaxes}
    | {
        "1.2.840.10008.1.2.7.1",  # SMPTE ST 2110-20 progressive
        "1.2.840.10008.1.2.7.2",  # SMPTE ST 2110-20 interlaced
        "1.2.840.10008.1.2.7.3",  # SMPTE ST 2110-30 audio
    }
)

# Codecs whose output differs from the stored pixels: the decoded instance must
# say so (PS3.3 C.7.6.1.1.5), whatever the stored header claimed.
_LOSSY = frozenset({str(dicom_uid.JPEGBaseline8Bit), str(dicom_uid.JPEGExtended12Bit)})

# JPEG lossy codecs carry their YCbCr transform inside the codestream, so the
# decoded image is delivered as RGB; lossless codecs keep YBR_FULL bit-exact.
_AS_RGB = _LOSSY

_IMAGECODECS_PLUGIN = "chronicle-imagecodecs"
_IMAGECODECS_SYNTAXES = (
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
)
# pydicom tries plugins in registration order and logs every failure; pick
# the plugin that handles every variant of a syntax up front instead.
_PREFERRED_PLUGIN: dict[str, tuple[str, ...]] = {
    str(dicom_uid.JPEGBaseline8Bit): (_IMAGECODECS_PLUGIN,),
    str(dicom_uid.JPEGExtended12Bit): (_IMAGECODECS_PLUGIN,),
    str(dicom_uid.JPEGLossless): (_IMAGECODECS_PLUGIN,),
    str(dicom_uid.JPEGLosslessSV1): (_IMAGECODECS_PLUGIN,),
    str(dicom_uid.JPEG2000Lossless): ("pylibjpeg",),
    str(dicom_uid.JPEG2000): ("pylibjpeg",),
    str(dicom_uid.RLELossless): ("pylibjpeg", "pydicom"),
}

# Byte-swap width of each binary VR when leaving Big Endian (OB never swaps).
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
_EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)

_plugin_lock = threading.Lock()
_plugin_registered = False


class TranscodeUnsupported(Exception):
    """The instance cannot be delivered in the requested transfer syntax."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- pydicom decoder plugin over imagecodecs -----------------------------------
# pydicom's plugin interface: a module with is_available(uid),
# DECODER_DEPENDENCIES and a frame decoder function.

DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2024.1.1",) for ts in _IMAGECODECS_SYNTAXES}


def is_available(uid: str) -> bool:
    """pydicom plugin hook: True when imagecodecs' libjpeg-turbo can decode `uid`."""
    if uid not in _IMAGECODECS_SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_jpeg_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """pydicom plugin hook: one JPEG frame as little-endian pixel bytes.

    YCbCr goes to RGB inside libjpeg-turbo when pydicom asks for RGB (five
    times faster than pydicom's numpy conversion, identical output on
    pydicom's test files); otherwise the components come out untransformed.
    """
    import imagecodecs

    if runner.samples_per_pixel > 1:
        # The first frame fixes the codestream's colour space: the runner's
        # Photometric Interpretation (conformed by pydicom to the JFIF marker
        # and component ids) reads RGB once we have converted a frame.
        space = runner.get_option("chronicle_jpeg_space", "")
        if not space:
            pi = str(runner.photometric_interpretation)
            space = "YCBCR" if pi.startswith("YBR") else "RGB"
            runner.set_option("chronicle_jpeg_space", space)
        target = space
        if space == "YCBCR" and runner.get_option("as_rgb", False):
            target = "RGB"
            runner.set_option("photometric_interpretation", "RGB")
        arr = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=target)
    else:
        arr = imagecodecs.jpeg8_decode(src)
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    runner.set_option("planar_configuration", 0)
    return bytes(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def _register_plugin() -> None:
    global _plugin_registered
    with _plugin_lock:
        if _plugin_registered:
            return
        for ts in _IMAGECODECS_SYNTAXES:
            decoder = get_decoder(ts)
            if _IMAGECODECS_PLUGIN not in decoder.available_plugins:
                decoder.add_plugin(_IMAGECODECS_PLUGIN, (__name__, "decode_jpeg_frame"))
        _plugin_registered = True


# -- what can be converted -------------------------------------------------------


def _decoder_plugins(ts: str) -> tuple[str, ...]:
    """The available decoder plugins for `ts`; empty when nothing decodes it."""
    if ts in VIDEO_TRANSFER_SYNTAXES or ts in NATIVE_TRANSFER_SYNTAXES:
        return ()
    _register_plugin()
    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return ()
    return tuple(decoder.available_plugins)


def decodable_transfer_syntaxes() -> dict[str, tuple[str, ...]]:
    """Every compressed syntax pydicom knows that decodes here -> its plugins."""
    found: dict[str, tuple[str, ...]] = {}
    for ts in dicom_uid.AllTransferSyntaxes:
        plugins = _decoder_plugins(str(ts))
        if plugins:
            found[str(ts)] = plugins
    return found


def can_transcode(stored_ts: str, target_ts: str) -> bool:
    """True when an instance stored in `stored_ts` can be delivered in `target_ts`.

    Decided from the syntaxes alone (no pixel data read), so a multi-instance
    response can be refused with 406 before anything is streamed.
    """
    if stored_ts == target_ts:
        return True
    if target_ts != EXPLICIT_VR_LITTLE_ENDIAN:
        return False
    return stored_ts in NATIVE_TRANSFER_SYNTAXES or bool(_decoder_plugins(stored_ts))


def why_not(stored_ts: str, target_ts: str) -> str:
    """A human reason for can_transcode(stored_ts, target_ts) being False."""
    if target_ts != EXPLICIT_VR_LITTLE_ENDIAN:
        return f"conversion to transfer syntax {target_ts} is not supported"
    if stored_ts in VIDEO_TRANSFER_SYNTAXES:
        return f"video transfer syntax {stored_ts} is only served as stored (transfer-syntax=*)"
    return f"no decoder for stored transfer syntax {stored_ts}"


# -- conversion ------------------------------------------------------------------


def to_explicit_le(part10: bytes | BinaryIO) -> bytes:
    """The Part-10 file re-encoded in Explicit VR Little Endian.

    Encapsulated pixel data is decompressed (SOP Instance UID kept; lossy
    sources get Lossy Image Compression "01"); Implicit VR, Big Endian and
    Deflated are re-encoded. Raises TranscodeUnsupported with the reason.
    """
    data = part10 if isinstance(part10, bytes) else _read_all(part10)
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:
        raise TranscodeUnsupported(f"not a readable Part-10 file: {exc}") from exc
    stored_ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if stored_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        return data
    if not can_transcode(stored_ts, EXPLICIT_VR_LITTLE_ENDIAN):
        raise TranscodeUnsupported(why_not(stored_ts, EXPLICIT_VR_LITTLE_ENDIAN))
    try:
        if stored_ts == EXPLICIT_VR_BIG_ENDIAN:
            _swap_binary_values(ds, bits_allocated=0)
        elif stored_ts not in NATIVE_TRANSFER_SYNTAXES:
            _decompress(ds, stored_ts)
        ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
        return _encode(ds)
    except TranscodeUnsupported:
        raise
    except Exception as exc:
        # pydicom parses values lazily: a malformed element surfaces only here.
        raise TranscodeUnsupported(f"cannot convert {stored_ts}: {exc}") from exc


def _read_all(stream: BinaryIO) -> bytes:
    chunks = []
    while chunk := stream.read(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _encode(ds: FileDataset) -> bytes:
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot encode as Explicit VR Little Endian: {exc}") from exc
    return out.getvalue()


def _decompress(ds: Dataset, stored_ts: str) -> None:
    """Decode every encapsulated Pixel Data (top level and e.g. Icon Image Sequence)."""
    if "PixelData" in ds:
        _decompress_one(ds, stored_ts)
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _decompress_nested(item, stored_ts)


def _decompress_nested(item: Dataset, stored_ts: str) -> None:
    if "PixelData" in item and item["PixelData"].is_undefined_length:
        # pydicom's decoder reads the syntax from file_meta (and rewrites it).
        item.file_meta = FileMetaDataset()
        item.file_meta.TransferSyntaxUID = dicom_uid.UID(stored_ts)
        try:
            _decompress_one(item, stored_ts)
        finally:
            del item.file_meta
    for element in item:
        if element.VR == "SQ":
            for child in element.value:
                _decompress_nested(child, stored_ts)


def _decompress_one(ds: Dataset, stored_ts: str) -> None:
    lossy = stored_ts in _LOSSY
    try:
        decompress(
            ds,
            as_rgb=stored_ts in _AS_RGB,
            generate_instance_uid=False,
            decoding_plugin=_plugin_for(stored_ts),
        )
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot decode {stored_ts} pixel data: {exc}") from exc
    for tag in _EXTENDED_OFFSET_TABLE:
        # Offsets into encapsulated fragments mean nothing once decoded.
        if tag in ds:
            del ds[tag]
    if lossy:
        ds.LossyImageCompression = "01"


def _plugin_for(ts: str) -> str:
    available = _decoder_plugins(ts)
    for name in _PREFERRED_PLUGIN.get(ts, ()):
        if name in available:
            return name
    return ""


def _swap_binary_values(ds: Dataset, *, bits_allocated: int) -> None:
    """Byte-swap OW/OF/OL/OD/OV values read from Big Endian (pydicom keeps them raw).

    Numeric VRs (US, SS, FL...) were decoded to Python numbers on read and
    re-encode by themselves. Pixel Data of 32/64-bit pixels swaps per pixel.
    """
    bits = int(ds.get("BitsAllocated", bits_allocated) or 0)
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _swap_binary_values(item, bits_allocated=bits)
            continue
        width = _SWAP_WIDTH.get(str(element.VR), 0)
        if not width or not element.value:
            continue
        if element.tag == _PIXEL_DATA and bits in (32, 64):
            width = bits // 8
        element.value = _swap(element.value, width, element.keyword or str(element.tag))


def big_endian_width(stored_ts: str, vr: str) -> int:
    """Byte-swap width for a bulk value of `vr` read from a blob stored in `stored_ts`.

    0 when the blob bytes are already what a client expects (bulk data is
    little endian, PS3.18 8.7.3.3.2).
    """
    return _SWAP_WIDTH.get(vr, 0) if stored_ts == EXPLICIT_VR_BIG_ENDIAN else 0


def swap_bytes(data: bytes, width: int) -> bytes:
    """Big-endian words of `width` bytes to little endian (len(data) % width == 0)."""
    return _swap(data, width, "bulk data")


def _swap(value: Any, width: int, name: str) -> bytes:
    raw = bytes(value)
    if len(raw) % width:
        raise TranscodeUnsupported(f"{name} length {len(raw)} is not a multiple of {width}")
    return np.frombuffer(raw, dtype=f">u{width}").astype(f"<u{width}").tobytes()


# -- rendering for print -----------------------------------------------------------
# PS3.3 C.11: stored values -> Modality LUT -> VOI -> presentation values
# (MONOCHROME1 inverted), as a Basic Grayscale Image Box wants them.

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
    if ts not in NATIVE_TRANSFER_SYNTAXES and not _decoder_plugins(ts):
        raise TranscodeUnsupported(why_not(ts, EXPLICIT_VR_LITTLE_ENDIAN))
    # YBR arrives as RGB; pydicom types its decode options oddly, hence the dict.
    options: dict[str, Any] = {"as_rgb": True}
    try:
        arr, _ = get_decoder(ts).as_array(
            ds, index=frame, decoding_plugin=_plugin_for(ts), **options
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
