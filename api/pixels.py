"""All pixel work of Chronicle, decoding half: transfer syntax conversion.

WADO-RS, WADO-URI, C-MOVE/C-GET and print call this module (and its rendering
half, `api.rendering`, which decodes through it) and nothing else for pixels,
so what Chronicle can decode is decided in one place.

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
from pydicom import dcmread, dcmwrite
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
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
LOSSY_JPEG = frozenset({str(dicom_uid.JPEGBaseline8Bit), str(dicom_uid.JPEGExtended12Bit)})
_LOSSY = LOSSY_JPEG

# JPEG lossy codecs carry their YCbCr transform inside the codestream, so the
# decoded image is delivered as RGB; lossless codecs keep YBR_FULL bit-exact.
_AS_RGB = LOSSY_JPEG

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


def decoder_plugins(ts: str) -> tuple[str, ...]:
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
        plugins = decoder_plugins(str(ts))
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
    return stored_ts in NATIVE_TRANSFER_SYNTAXES or bool(decoder_plugins(stored_ts))


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


def to_implicit_le(part10: bytes) -> bytes:
    """Explicit VR Little Endian Part-10 bytes re-encoded as Implicit VR Little Endian."""
    ds = dcmread(io.BytesIO(part10))
    ds.file_meta.TransferSyntaxUID = dicom_uid.ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return out.getvalue()


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
            decoding_plugin=plugin_for(stored_ts),
        )
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot decode {stored_ts} pixel data: {exc}") from exc
    for tag in _EXTENDED_OFFSET_TABLE:
        # Offsets into encapsulated fragments mean nothing once decoded.
        if tag in ds:
            del ds[tag]
    if lossy:
        ds.LossyImageCompression = "01"


def plugin_for(ts: str) -> str:
    available = decoder_plugins(ts)
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
