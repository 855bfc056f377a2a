"""Compressed pixel data sent as bulk data parts (PS3.18 8.7.3.3.2, 10.5.1.4).

A bulk part's media type (image/jpeg, image/jls, image/jp2, ..., video/mp4)
and its transfer-syntax parameter name the Transfer Syntax the assembled
instance is stored in; without the parameter, a JPEG, JPEG-LS or JPEG 2000
codestream header says which process made it (a plain image/jpeg is more often
baseline than the PS3.18 default, lossless SV1), else the PS3.18 default
applies. A parameter the codestream contradicts is refused, so an instance is
never stored under a transfer syntax its pixel data does not follow.

PS3.18 lets the sender omit the Image Pixel Description Macro for compressed
media types: absent attributes are taken from the codestream header.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from infra.errors import Invalid

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_TS = "1.2.840.10008.1.2.4."
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_BASELINE, JPEG_EXTENDED = _TS + "50", _TS + "51"
JPEG_LOSSLESS, JPEG_LOSSLESS_SV1 = _TS + "57", _TS + "70"
JPEG_LS_LOSSLESS, JPEG_LS_NEAR = _TS + "80", _TS + "81"
J2K_LOSSLESS, J2K = _TS + "90", _TS + "91"
HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K = _TS + "201", _TS + "202", _TS + "203"

_JPEG = (JPEG_LOSSLESS_SV1, JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS)
_JLS = (JPEG_LS_LOSSLESS, JPEG_LS_NEAR)
_MPEG2 = (_TS + "100", _TS + "101")
_MP4 = tuple(_TS + str(n) for n in range(102, 109))
#: media type -> the transfer syntaxes it may carry, the PS3.18 default first (Table 8.7.3-5)
MEDIA_SYNTAXES: dict[str, tuple[str, ...]] = {
    "image/jpeg": _JPEG,
    "image/dicom-rle": (RLE_LOSSLESS,),
    "image/x-dicom-rle": (RLE_LOSSLESS,),
    "image/jls": _JLS,
    "image/x-jls": _JLS,
    "image/jp2": (J2K_LOSSLESS, J2K),
    "image/jpx": (_TS + "92", _TS + "93"),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K),
    "image/jxl": (_TS + "110", _TS + "111", _TS + "112"),
    "video/mpeg2": _MPEG2,
    "video/mpeg": _MPEG2,
    "video/mp4": _MP4,
    "video/h265": (_TS + "107", _TS + "108"),
}
#: stated transfer syntax -> the codestreams that conform to it
_CONFORMING = {
    JPEG_BASELINE: {JPEG_BASELINE},
    JPEG_EXTENDED: {JPEG_BASELINE, JPEG_EXTENDED},
    JPEG_LOSSLESS: {JPEG_LOSSLESS, JPEG_LOSSLESS_SV1},
    JPEG_LOSSLESS_SV1: {JPEG_LOSSLESS_SV1},
    JPEG_LS_LOSSLESS: {JPEG_LS_LOSSLESS},
    JPEG_LS_NEAR: {JPEG_LS_LOSSLESS, JPEG_LS_NEAR},
    J2K_LOSSLESS: {J2K_LOSSLESS},
    J2K: {J2K_LOSSLESS, J2K},
    HTJ2K_LOSSLESS: {HTJ2K_LOSSLESS},
    HTJ2K_RPCL: {HTJ2K_LOSSLESS},
    HTJ2K: {HTJ2K_LOSSLESS, HTJ2K},
}
#: how much of a part is read to find its codestream header (APPn segments come first)
HEADER_BYTES = 256 * 1024
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_LS_SOF = 0xF7


@dataclass(frozen=True, slots=True)
class Codestream:
    """What a JPEG, JPEG-LS or JPEG 2000 codestream header says about its image."""

    transfer_syntax: str | None  # None: a process no DICOM transfer syntax names
    rows: int
    columns: int
    samples: int
    precision: int
    signed: bool = False
    subsampled: bool = False
    colour_transform: bool = False  # J2K multiple component transform (YBR_RCT / YBR_ICT)


def is_video(media_type: str) -> bool:
    return media_type.startswith("video/")


def pixel_transfer_syntax(media_type: str, stated: str, codestream: Codestream | None) -> str:
    """The transfer syntax for pixel data sent as `media_type`; raises Invalid."""
    allowed = MEDIA_SYNTAXES.get(media_type)
    if allowed is None:
        raise Invalid(f"pixel data sent as {media_type} is not a DICOM bulk data media type")
    sniffed = codestream.transfer_syntax if codestream else None
    if not stated:
        return sniffed if sniffed in allowed else allowed[0]
    if stated not in allowed:
        raise Invalid(f"{media_type} cannot carry transfer syntax {stated}", status=0xC122)
    if sniffed is not None and sniffed not in _CONFORMING.get(stated, {sniffed}):
        raise Invalid(
            f"the {media_type} codestream is {sniffed}, which transfer-syntax={stated} "
            "does not allow",
            status=0xA900,
        )
    return stated


def read_codestream(head: bytes | bytearray) -> Codestream | None:
    """The header of a JPEG, JPEG-LS or JPEG 2000 codestream; None for anything else."""
    head = bytes(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg(head)
    if head[:4] == b"\xff\x4f\xff\x51":
        return _j2k(head)
    return None


def _jpeg(head: bytes) -> Codestream | None:
    pos, sof = 2, None
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        segment = head[pos + 4 : pos + 2 + length]
        if marker in _JPEG_SOF or marker == _JPEG_LS_SOF:
            sof = (marker, segment)
        elif marker == 0xDA:
            return _jpeg_frame(*sof, segment) if sof and len(sof[1]) >= 6 else None
        pos += 2 + length
    return None


def _jpeg_frame(marker: int, sof: bytes, sos: bytes) -> Codestream:
    components = sof[5]
    factors = {sof[7 + 3 * i] for i in range(components) if 8 + 3 * i <= len(sof)}
    selection = sos[1 + 2 * sos[0]] if len(sos) > 1 + 2 * sos[0] else -1
    return Codestream(
        transfer_syntax=_jpeg_syntax(marker, selection),
        rows=int.from_bytes(sof[1:3], "big"),
        columns=int.from_bytes(sof[3:5], "big"),
        samples=components,
        precision=sof[0],
        subsampled=len(factors) > 1,
    )


def _jpeg_syntax(marker: int, selection: int) -> str | None:
    # SOS's Ss byte is the predictor in lossless JPEG and NEAR in JPEG-LS
    if marker == 0xC0:
        return JPEG_BASELINE
    if marker == 0xC1:
        return JPEG_EXTENDED
    if marker == 0xC3:
        return JPEG_LOSSLESS_SV1 if selection == 1 else JPEG_LOSSLESS
    if marker == _JPEG_LS_SOF:
        return JPEG_LS_LOSSLESS if selection == 0 else JPEG_LS_NEAR
    return None


def _j2k(head: bytes) -> Codestream | None:
    siz = head[6:]
    if len(siz) < 38:
        return None
    rsiz = int.from_bytes(siz[0:2], "big")
    columns = int.from_bytes(siz[2:6], "big") - int.from_bytes(siz[10:14], "big")
    rows = int.from_bytes(siz[6:10], "big") - int.from_bytes(siz[14:18], "big")
    components = int.from_bytes(siz[34:36], "big")
    ssiz = siz[36]
    reversible, mct = _j2k_coding(head)
    if rsiz & 0x4000:  # Part 15 (HTJ2K) capabilities
        syntax = HTJ2K_LOSSLESS if reversible else HTJ2K
    else:
        syntax = J2K_LOSSLESS if reversible else J2K
    return Codestream(
        transfer_syntax=syntax,
        rows=rows,
        columns=columns,
        samples=components,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        colour_transform=mct,
    )


def _j2k_coding(head: bytes) -> tuple[bool, bool]:
    """(reversible 5-3 wavelet, multiple component transform) from the COD segment."""
    pos = 4 + int.from_bytes(head[4:6], "big")  # just past SIZ
    while pos + 4 <= len(head) and head[pos] == 0xFF and head[pos + 1] != 0x90:
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if head[pos + 1] == 0x52 and length >= 12:
            cod = head[pos + 4 : pos + 2 + length]
            return cod[9] == 1, cod[4] == 1
        pos += 2 + length
    return False, False


def describe_pixels(ds: Dataset, codestream: Codestream | None, frames: int, ts: str) -> None:
    """Fill the Image Pixel Description attributes the sender left out (PS3.18 10.5.1.4)."""
    if frames > 1 and "NumberOfFrames" not in ds:
        ds.NumberOfFrames = frames
    if codestream is None:
        return
    bits = 8 if codestream.precision <= 8 else 16
    defaults: dict[str, object] = {
        "SamplesPerPixel": codestream.samples,
        "PhotometricInterpretation": _photometric(codestream, ts),
        "Rows": codestream.rows,
        "Columns": codestream.columns,
        "BitsAllocated": bits,
        "BitsStored": codestream.precision,
        "HighBit": codestream.precision - 1,
        "PixelRepresentation": int(codestream.signed),
    }
    if codestream.samples > 1:
        defaults["PlanarConfiguration"] = 0
    if ts in (JPEG_BASELINE, JPEG_EXTENDED):
        defaults["LossyImageCompression"] = "01"
    for keyword, value in defaults.items():
        if keyword not in ds:
            setattr(ds, keyword, value)


def _photometric(codestream: Codestream, ts: str) -> str:
    if codestream.samples == 1:
        return "MONOCHROME2"
    if ts in (JPEG_BASELINE, JPEG_EXTENDED):
        return "YBR_FULL_422" if codestream.subsampled else "YBR_FULL"
    if codestream.colour_transform:
        return "YBR_RCT" if ts in (J2K_LOSSLESS, HTJ2K_LOSSLESS, HTJ2K_RPCL) else "YBR_ICT"
    return "RGB"
