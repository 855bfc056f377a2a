"""All pixel work of Chronicle, encoding half: one frame in, one codestream out.

`api.transcode` (whole instances) and `api.frame_access` (single frames)
encode through this module and nothing else, so what Chronicle can produce is
decided here. Encoders, per target transfer syntax:

- JPEG baseline (…4.50, 8-bit), extended (…4.51, 8/12-bit) and lossless
  (…4.57, …4.70, 2-16 bits, predictor 1): imagecodecs' libjpeg-turbo 3;
- JPEG-LS lossless / near-lossless (…4.80, …4.81): pydicom over pyjpegls
  (imagecodecs' CharLS for tiny unsigned images pyjpegls cannot size);
- JPEG 2000 lossless / lossy (…4.90, …4.91): imagecodecs' OpenJPEG;
- HTJ2K lossless, lossless RPCL, lossy (…4.201-203): imagecodecs' OpenJPH;
- JPEG XL lossless (…4.110, unsigned only): imagecodecs' libjxl;
- RLE lossless (…5): pydicom over pylibjpeg-rle.

Colour: lossless codecs keep the components as they are (RGB, YBR_FULL),
except JPEG 2000 and HTJ2K, whose reversible colour transform makes RGB
YBR_RCT; lossy JPEG delivers YBR_FULL_422, lossy JPEG 2000 / HTJ2K YBR_ICT.
Lossy codecs refuse signed and palette colour pixels (PS3.5 8.2). Never
encoded: 1-bit and float pixels, JPEG 2000 Part 2, JPEG XL lossy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.processing import convert_color_space

from api import pixels
from api.pixel_spec import Frame, PixelSpec

#: Default quality (1-100) of lossy output when the caller gives none.
DEFAULT_QUALITY = 90


#: (frame, spec, quality) -> (codestream, Photometric Interpretation of the codestream)
Encoder = Callable[[Frame, PixelSpec, int], tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class Codec:
    """What one encapsulated target transfer syntax can take, and its encoder."""

    uid: str
    name: str
    encode: Encoder
    bits: tuple[int, int] = (2, 16)  # Bits Stored, inclusive
    lossy: bool = False
    #: Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1); '' when lossless.
    method: str = ""
    signed: bool = True
    allocated: frozenset[int] = frozenset({8, 16})
    #: False: colour only as RGB (libjpeg-turbo labels lossless components R, G, B).
    ybr: bool = True
    #: Largest Bits Allocated of YBR_FULL pixels (PS3.5 Tables 8.2.2-1, 8.2.3-1).
    ybr_bits: int = 16

    def refusal(self, spec: PixelSpec) -> str:
        """Why frames of `spec` cannot be encoded here; '' when they can."""
        if spec.float_pixels or spec.bits_allocated not in self.allocated:
            return f"{self.name} cannot hold {_depth(spec)} pixels"
        if not self.bits[0] <= spec.bits_stored <= self.bits[1]:
            low, high = self.bits
            return f"{self.name} takes {low} to {high} bits stored, not {spec.bits_stored}"
        if spec.signed and not self.signed:
            return f"{self.name} is not used for signed pixels here"
        if spec.samples not in (1, 3):
            return f"{self.name} takes 1 or 3 samples per pixel, not {spec.samples}"
        if not self.ybr and spec.photometric.startswith("YBR"):
            return f"{self.name} is produced here from RGB or monochrome pixels only"
        if spec.photometric.startswith("YBR") and spec.bits_allocated > self.ybr_bits:
            return f"{self.name} takes YBR_FULL pixels of {self.ybr_bits} bits allocated only"
        if self.lossy and spec.photometric == "PALETTE COLOR":
            return "palette colour images are never lossy compressed (PS3.5 8.2)"
        return ""


def _depth(spec: PixelSpec) -> str:
    return "float" if spec.float_pixels else f"{spec.bits_allocated}-bit"


# -- encoders ----------------------------------------------------------------------


def _quality(quality: int) -> int:
    return min(max(int(quality), 1), 100)


def _rgb(frame: Frame, spec: PixelSpec) -> Frame:
    """A colour frame as RGB for a lossy codec with its own colour transform."""
    if spec.photometric == "RGB":
        return frame
    converted: Frame = convert_color_space(frame, "YBR_FULL", "RGB")
    return converted


def _bit_pattern(frame: Frame, spec: PixelSpec) -> Frame:
    """Signed values as their unsigned Bits Stored pattern (JPEG lossless, PS3.5 8.2.1)."""
    if not spec.signed:
        return frame
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    masked: Frame = unsigned & ((1 << spec.bits_stored) - 1)
    return masked


def _jpeg_lossy(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
    if spec.colour:
        data = imagecodecs.jpeg8_encode(
            _rgb(frame, spec),
            level=_quality(quality),
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling="422",
        )
        return bytes(data), "YBR_FULL_422"
    bits = 8 if spec.bits_stored <= 8 else 12
    data = imagecodecs.jpeg8_encode(frame, level=_quality(quality), bitspersample=bits)
    return bytes(data), spec.photometric


def _jpeg_lossless(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
    # No colour transform: the components go in (and come out) as they are.
    space = "RGB" if spec.colour else None
    data = imagecodecs.jpeg8_encode(
        _bit_pattern(frame, spec),
        lossless=True,
        predictor=1,
        bitspersample=spec.bits_stored,
        colorspace=space,
        outcolorspace=space,
    )
    return bytes(data), spec.photometric


def _pydicom_encode(uid: str, frame: Frame, spec: PixelSpec, pi: str, **extra: Any) -> bytes:
    options = {**spec.decode_options(), "photometric_interpretation": pi, "planar_configuration": 0}
    return bytes(get_encoder(uid).encode(frame, **options, **extra))


def _jpeg_ls(near: bool) -> Encoder:
    uid = "1.2.840.10008.1.2.4.81" if near else "1.2.840.10008.1.2.4.80"

    def encode(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
        error = max(1, (100 - _quality(quality)) // 5) if near else 0
        try:
            data = _pydicom_encode(uid, frame, spec, spec.photometric, jls_error=error)
        except Exception:
            # pyjpegls under-sizes its buffer for tiny images; CharLS itself copes.
            data = bytes(imagecodecs.jpegls_encode(_bit_pattern(frame, spec), level=error))
        return data, spec.photometric

    return encode


def _jpeg_2000(lossy: bool) -> Encoder:
    def encode(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
        mct = spec.photometric == "RGB"
        pi = ("YBR_ICT" if lossy else "YBR_RCT") if mct else spec.photometric
        # Lossy: a target PSNR (dB, against the Bits Stored peak), 47.5 at quality 90.
        psnr = round(25 + _quality(quality) / 4) if lossy else None
        data = imagecodecs.jpeg2k_encode(
            frame,
            psnr,
            codecformat="J2K",  # a bare codestream, no JP2 boxes (PS3.5 A.4.4)
            reversible=not lossy,
            mct=mct,
            bitspersample=spec.bits_stored,
            resolutions=min(6, int(math.log2(max(min(spec.rows, spec.columns), 1))) + 1),
            numthreads=1,
        )
        return bytes(data), pi

    return encode


def _htj2k(*, lossy: bool, rpcl: bool = False) -> Encoder:
    def encode(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
        mct = spec.photometric == "RGB"
        pi = ("YBR_ICT" if lossy else "YBR_RCT") if mct else spec.photometric
        # OpenJPH's quantisation step (of the full range): 0.002 at quality 90,
        # doubling for every 10 less.
        step = 0.001 * 2 ** ((100 - _quality(quality)) / 10) if lossy else None
        options: dict[str, Any] = {"reversible": not lossy, "rgb": mct}
        if rpcl:
            # PS3.5 A.4.4: RPCL order (OpenJPH's), a TLM marker, tile-parts per resolution.
            options |= {"tlm": True, "tilepart": imagecodecs.HTJ2K.TILEPART.RESOLUTIONS}
        return bytes(imagecodecs.htj2k_encode(frame, step, **options)), pi

    return encode


def _jpeg_xl(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
    data = imagecodecs.jpegxl_encode(frame, lossless=True, effort=3, bitspersample=spec.bits_stored)
    return bytes(data), spec.photometric


def _rle(frame: Frame, spec: PixelSpec, quality: int) -> tuple[bytes, str]:
    return _pydicom_encode("1.2.840.10008.1.2.5", frame, spec, spec.photometric), spec.photometric


CODECS: dict[str, Codec] = {
    codec.uid: codec
    for codec in (
        Codec(
            "1.2.840.10008.1.2.4.50",
            "JPEG baseline",
            _jpeg_lossy,
            (8, 8),
            lossy=True,
            method="ISO_10918_1",
            signed=False,
        ),
        Codec(
            "1.2.840.10008.1.2.4.51",
            "JPEG extended",
            _jpeg_lossy,
            (8, 12),
            lossy=True,
            method="ISO_10918_1",
            signed=False,
        ),
        Codec("1.2.840.10008.1.2.4.57", "JPEG lossless", _jpeg_lossless, ybr=False),
        Codec("1.2.840.10008.1.2.4.70", "JPEG lossless SV1", _jpeg_lossless, ybr=False),
        Codec("1.2.840.10008.1.2.4.80", "JPEG-LS lossless", _jpeg_ls(near=False), ybr_bits=8),
        Codec(
            "1.2.840.10008.1.2.4.81",
            "JPEG-LS near-lossless",
            _jpeg_ls(near=True),
            lossy=True,
            method="ISO_14495_1",
            ybr_bits=8,
        ),
        Codec("1.2.840.10008.1.2.4.90", "JPEG 2000 lossless", _jpeg_2000(lossy=False)),
        Codec(
            "1.2.840.10008.1.2.4.91",
            "JPEG 2000",
            _jpeg_2000(lossy=True),
            lossy=True,
            method="ISO_15444_1",
        ),
        Codec("1.2.840.10008.1.2.4.201", "HTJ2K lossless", _htj2k(lossy=False)),
        Codec("1.2.840.10008.1.2.4.202", "HTJ2K lossless RPCL", _htj2k(lossy=False, rpcl=True)),
        Codec(
            "1.2.840.10008.1.2.4.203",
            "HTJ2K",
            _htj2k(lossy=True),
            lossy=True,
            method="ISO_15444_15",
        ),
        Codec("1.2.840.10008.1.2.4.110", "JPEG XL lossless", _jpeg_xl, signed=False),
        Codec("1.2.840.10008.1.2.5", "RLE lossless", _rle, (1, 16), ybr_bits=8),
    )
}

#: Lossless targets DIMSE may transcode to, best first (compact, widely decoded).
LOSSLESS_TARGETS = (
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.110",
)


def encode_frames(
    codec: Codec, frames: list[Frame], spec: PixelSpec, quality: int
) -> EncodedFrames:
    """Every frame in `codec`; raises TranscodeUnsupported when the codec fails."""
    encoded: list[bytes] = []
    photometric = spec.photometric
    for frame in frames:
        try:
            # Decoders may hand back views (RLE planes); the encoders want C order.
            data, photometric = codec.encode(np.ascontiguousarray(frame), spec, quality)
        except Exception as exc:
            raise pixels.TranscodeUnsupported(f"{codec.name} encoder failed: {exc}") from exc
        encoded.append(data)
    return EncodedFrames(encoded, photometric)


@dataclass(frozen=True, slots=True)
class EncodedFrames:
    frames: list[bytes]
    photometric: str

    def encapsulated(self) -> bytes:
        return encapsulate(self.frames, has_bot=True)

    @property
    def size(self) -> int:
        return sum(len(frame) for frame in self.frames)
