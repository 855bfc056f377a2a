"""A frame's Image Pixel attributes, and one stored frame decoded to pixels.

Shared by the encoding half (`api.codecs`), whole-instance transcoding
(`api.transcode`) and frame access (`api.frame_access`). Decoding goes
through pydicom with `api.pixels`' plugin choice, so a frame decodes exactly
as its instance does in `pixels.to_explicit_le`; JPEG XL, which pydicom 3.0
does not know, is decoded here with imagecodecs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy.typing as npt
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder

from api import pixels

Frame = npt.NDArray[Any]
#: JPEG XL lossless, JPEG recompression and lossy: decoded here (pydicom 3.0 does not).
JPEG_XL_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
)


@dataclass(frozen=True, slots=True)
class PixelSpec:
    """The Image Pixel attributes a frame is encoded or decoded with."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int = 0
    frames: int = 1
    float_pixels: bool = False

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> PixelSpec | None:
        """From DICOM JSON (PS3.18 F); None when the instance has no pixel data."""
        if not any(tag in meta for tag in ("7FE00010", "7FE00008", "7FE00009")):
            return None

        def first(tag: str, default: Any) -> Any:
            values = (meta.get(tag) or {}).get("Value") or [default]
            return default if values[0] is None else values[0]

        bits = int(first("00280100", 8))
        return cls(
            rows=int(first("00280010", 0)),
            columns=int(first("00280011", 0)),
            samples=int(first("00280002", 1)),
            bits_allocated=bits,
            bits_stored=int(first("00280101", bits)),
            signed=int(first("00280103", 0)) == 1,
            photometric=str(first("00280004", "MONOCHROME2")).strip(),
            planar=int(first("00280006", 0)),
            frames=max(int(float(first("00280008", 1))), 1),
            float_pixels="7FE00010" not in meta,
        )

    @property
    def colour(self) -> bool:
        return self.samples > 1

    def frame_length(self) -> int:
        """Bytes of one native frame (1-bit frames: rounded up; not byte aligned)."""
        samples = 2 if self.photometric.startswith("YBR_FULL_422") else self.samples
        return (self.rows * self.columns * samples * self.bits_allocated + 7) // 8

    def decode_options(self) -> dict[str, Any]:
        """pydicom's decoding options for a buffer holding one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": int(self.signed),
            "photometric_interpretation": self.photometric,
            "planar_configuration": self.planar,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
        }


# -- decoding one frame ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A frame as pixels, with the spec it now has (YBR may have become RGB)."""

    array: Frame
    spec: PixelSpec

    def native_bytes(self) -> bytes:
        """Little-endian, colour-by-pixel bytes (what application/octet-stream carries)."""
        width = max(self.spec.bits_allocated // 8, 1)
        kind = "i" if self.array.dtype.kind == "i" else "u"
        return self.array.astype(f"<{kind}{width}", copy=False).tobytes()


def decode_frame(encoded: bytes, ts: str, spec: PixelSpec) -> DecodedFrame:
    """One stored frame (native bytes or one frame's codestream) as pixels.

    Lossy JPEG colour comes out RGB (the codestream's transform undone), as
    from `pixels.to_explicit_le`; lossless codecs keep YBR_FULL bit-exact.
    """
    if ts in JPEG_XL_SYNTAXES:
        return _decode_jpeg_xl(encoded, spec)
    native = ts in pixels.NATIVE_TRANSFER_SYNTAXES
    if not native and not pixels.decoder_plugins(ts):
        raise pixels.TranscodeUnsupported(pixels.why_not(ts, pixels.EXPLICIT_VR_LITTLE_ENDIAN))
    source = encoded if native else encapsulate([encoded], has_bot=False)
    syntax = pixels.EXPLICIT_VR_LITTLE_ENDIAN if native else ts
    options: dict[str, Any] = {
        **spec.decode_options(),
        "as_rgb": ts in pixels.LOSSY_JPEG,
    }
    try:
        array, changed = get_decoder(syntax).as_array(
            source, index=0, decoding_plugin=pixels.plugin_for(syntax), **options
        )
    except Exception as exc:
        raise pixels.TranscodeUnsupported(f"cannot decode the frame: {exc}") from exc
    photometric = str(changed.get("photometric_interpretation", spec.photometric))
    if photometric.startswith("YBR_FULL_422"):
        photometric = "YBR_FULL"  # pydicom has undone the subsampling
    return DecodedFrame(
        _sign_extended(array, spec), _replace(spec, photometric=photometric, planar=0)
    )


def _sign_extended(array: Frame, spec: PixelSpec) -> Frame:
    """Signed pixels in fewer Bits Stored than their container, sign-extended.

    Some decoders (JPEG-LS through pydicom, for 2-bit signed data: found by the
    property test) hand back the codestream's unsigned samples; extending from
    bit Bits Stored - 1 is right whether or not the decoder already did it."""
    width = 8 * array.dtype.itemsize
    if not spec.signed or array.dtype.kind not in "iu" or spec.bits_stored >= width:
        return array
    shift = width - spec.bits_stored
    signed = array.view(array.dtype.str.replace("u", "i"))
    extended: Frame = (signed << shift) >> shift
    return extended


def _decode_jpeg_xl(encoded: bytes, spec: PixelSpec) -> DecodedFrame:
    try:
        array: Frame = imagecodecs.jpegxl_decode(encoded)
    except Exception as exc:
        raise pixels.TranscodeUnsupported(f"cannot decode the JPEG XL frame: {exc}") from exc
    if spec.signed:
        # Two's complement in Bits Stored bits, sign-extended to the full width.
        shift = 8 * array.dtype.itemsize - spec.bits_stored
        signed = array.view(array.dtype.str.replace("u", "i"))
        array = (signed << shift) >> shift
    return DecodedFrame(array, _replace(spec, planar=0))


def _replace(spec: PixelSpec, **changes: Any) -> PixelSpec:
    return dataclasses.replace(spec, **changes)
