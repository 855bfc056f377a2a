"""Transcoding on retrieve: an instance (or one frame) in the transfer syntax asked for.

WADO-RS, WADO-URI, C-MOVE and C-GET call `transcode`; WADO-RS frames call
`frame_bytes` (through `api.frame_access`). What can be produced is decided
by `refusal`, from the syntaxes and, when known, the Image Pixel attributes,
so a multi-instance response can be refused with 406 before anything streams.

Targets: Explicit and Implicit VR Little Endian, Deflated Explicit VR Little
Endian, and every encapsulated syntax in `api.codecs.CODECS`. The pixels are
decoded (`api.pixels`), then encoded frame by frame; non-pixel instances
(SR, KOS, PDF...) are re-encoded as Explicit VR Little Endian, which is what
every encapsulated syntax uses for their datasets.

Lossy output only with `allow_lossy`; it carries Lossy Image Compression
"01", Lossy Image Compression Ratio and Method (PS3.3 C.7.6.1.1.5), appended
to the values of an earlier lossy compression. The SOP Instance UID is kept:
the result is a representation of the stored instance delivered on request
(PS3.18 8.7.3), not a new instance the archive stores; the lossy attributes
tell the recipient what happened. Pixels decoded from a lossy source may be
re-encoded losslessly (nothing further is lost; Lossy Image Compression
stays "01").
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.valuerep import VR

from api import codecs, pixels
from api.catalog import InstanceRow
from api.codecs import Codec
from api.dimse.ae import register_newer_transfer_syntaxes
from api.frame_access import StoredFrames
from api.pixel_spec import JPEG_XL_SYNTAXES, PixelSpec, decode_frame
from api.pixels import TranscodeUnsupported
from infra.ports import BlobStore

EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT = pixels.IMPLICIT_VR_LITTLE_ENDIAN
DEFLATED = pixels.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
#: Targets that re-encode the dataset without encapsulating pixels.
NATIVE_TARGETS = frozenset({EXPLICIT, IMPLICIT, DEFLATED})


def producible(ts: str) -> bool:
    """True when `ts` is a target Chronicle can encode into."""
    return ts in NATIVE_TARGETS or ts in codecs.CODECS


def is_lossy(ts: str) -> bool:
    codec = codecs.CODECS.get(ts)
    return codec is not None and codec.lossy


def decodable(ts: str) -> bool:
    """True when instances stored in `ts` can be decoded to pixels."""
    return (
        ts in pixels.NATIVE_TRANSFER_SYNTAXES
        or ts in JPEG_XL_SYNTAXES
        or bool(pixels.decoder_plugins(ts))
    )


def refusal(
    stored_ts: str,
    target_ts: str,
    spec: PixelSpec | None = None,
    *,
    allow_lossy: bool = False,
    pixel_data: bool = True,
) -> str:
    """Why an instance stored in `stored_ts` cannot be delivered in `target_ts`; '' when it can.

    `spec` (the Image Pixel attributes) refines the answer when known;
    `pixel_data=False` says the instance has none (any target then works).
    """
    if target_ts == stored_ts:
        return ""
    codec = codecs.CODECS.get(target_ts)
    if not producible(target_ts):
        return f"conversion to transfer syntax {target_ts} is not supported"
    if not pixel_data:
        return ""
    if stored_ts in pixels.VIDEO_TRANSFER_SYNTAXES:
        return f"video transfer syntax {stored_ts} is only served as stored (transfer-syntax=*)"
    if not decodable(stored_ts):
        return f"no decoder for stored transfer syntax {stored_ts}"
    if codec is None:
        return ""
    if codec.lossy and not allow_lossy:
        return f"{codec.name} ({target_ts}) is lossy: produced only when asked for by name"
    return codec.refusal(decoded_spec(stored_ts, spec)) if spec is not None else ""


def decoded_spec(stored_ts: str, spec: PixelSpec) -> PixelSpec:
    """The Image Pixel attributes once decoded: lossy JPEG and JPEG 2000 colour
    transforms are undone (RGB), subsampled YBR is expanded (YBR_FULL)."""
    photometric = spec.photometric
    if photometric in ("YBR_ICT", "YBR_RCT") or (
        stored_ts in pixels.LOSSY_JPEG and photometric.startswith("YBR")
    ):
        photometric = "RGB"
    elif photometric.startswith("YBR_FULL_422"):
        photometric = "YBR_FULL"
    return dataclasses.replace(spec, photometric=photometric, planar=0)


def transcode(
    part10: bytes, target_ts: str, *, allow_lossy: bool = False, quality: int | None = None
) -> bytes:
    """Part-10 bytes re-encoded in `target_ts` (File Meta Transfer Syntax updated).

    Raises TranscodeUnsupported(reason) when the conversion is impossible:
    lossy target without `allow_lossy`, video, no decoder or encoder, pixels
    the target cannot hold.
    """
    ds = _read(part10)
    stored_ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if target_ts == stored_ts:
        return part10
    spec = spec_of(ds)
    reason = refusal(
        stored_ts, target_ts, spec, allow_lossy=allow_lossy, pixel_data=_has_pixels(ds)
    )
    if reason:
        raise TranscodeUnsupported(reason)
    explicit = _explicit(part10, ds, stored_ts)
    if target_ts == EXPLICIT:
        return explicit
    if target_ts == IMPLICIT:
        return pixels.to_implicit_le(explicit)
    native = _read(explicit)
    codec = codecs.CODECS.get(target_ts)
    if codec is not None and spec is not None:
        _encapsulate(native, codec, quality or codecs.DEFAULT_QUALITY)
    return _write(native, target_ts)


def frame_bytes(
    blobs: BlobStore,
    row: InstanceRow,
    frame_number: int,
    target_ts: str | None,
    *,
    allow_lossy: bool = True,
    quality: int | None = None,
) -> tuple[str, bytes]:
    """(transfer syntax delivered, bytes) of frame `frame_number` (1-based).

    `target_ts` None means as stored (transfer-syntax=*): a native frame is
    then little endian in Explicit VR Little Endian. Raises
    TranscodeUnsupported, or IndexError for a frame the instance lacks.
    """
    frames = StoredFrames(blobs, row)
    if not 1 <= frame_number <= frames.count:
        raise IndexError(f"frame {frame_number} of {frames.count}")
    target = frames.stored_syntax if target_ts is None else target_ts
    reason = refusal(frames.stored_syntax, target, frames.spec, allow_lossy=allow_lossy)
    if frames.video:
        reason = "video frames share one stream: retrieve the instance or its pixel data"
    if reason:
        raise TranscodeUnsupported(reason)
    return target, frames.in_syntax(frame_number - 1, target, quality)


# -- helpers -----------------------------------------------------------------------


def spec_of(ds: Dataset) -> PixelSpec | None:
    """The Image Pixel attributes of a dataset; None without (integer or float) pixel data."""
    if not _has_pixels(ds):
        return None
    bits = int(ds.get("BitsAllocated", 8) or 8)
    return PixelSpec(
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        samples=int(ds.get("SamplesPerPixel", 1) or 1),
        bits_allocated=bits,
        bits_stored=int(ds.get("BitsStored", bits) or bits),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        planar=int(ds.get("PlanarConfiguration", 0) or 0),
        frames=max(int(ds.get("NumberOfFrames", 1) or 1), 1),
        float_pixels="PixelData" not in ds,
    )


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _read(data: bytes) -> FileDataset:
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:
        raise TranscodeUnsupported(f"not a readable Part-10 file: {exc}") from exc


def _explicit(part10: bytes, ds: FileDataset, stored_ts: str) -> bytes:
    """The instance in Explicit VR Little Endian, pixels decoded."""
    if not _has_pixels(ds):
        return part10 if stored_ts == EXPLICIT else _write(ds, EXPLICIT)
    if stored_ts not in JPEG_XL_SYNTAXES:
        return pixels.to_explicit_le(part10)
    # pydicom 3.0 does not know JPEG XL: its frames are decoded here.
    spec = spec_of(ds)
    if spec is not None and "PixelData" in ds:
        decoded = [
            decode_frame(frame, stored_ts, spec)
            for frame in generate_frames(ds.PixelData, number_of_frames=spec.frames)
        ]
        ds.PixelData = b"".join(frame.native_bytes() for frame in decoded)
        ds["PixelData"].VR = VR.OB if spec.bits_allocated <= 8 else VR.OW
        ds["PixelData"].is_undefined_length = False
        for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            ds.pop(tag, None)
    return _write(ds, EXPLICIT)


def _encapsulate(ds: Dataset, codec: Codec, quality: int) -> None:
    """Replace native Pixel Data with `codec`'s encapsulated frames (attributes to match)."""
    spec = spec_of(ds)
    assert spec is not None
    raw, size = ds.PixelData, spec.frame_length()
    decoded = [
        decode_frame(raw[i * size : (i + 1) * size], EXPLICIT, spec) for i in range(spec.frames)
    ]
    frame_spec = decoded[0].spec if decoded else spec
    encoded = codecs.encode_frames(codec, [frame.array for frame in decoded], frame_spec, quality)
    ds.PixelData = encoded.encapsulated()
    ds["PixelData"].VR = VR.OB
    ds["PixelData"].is_undefined_length = True
    ds.PhotometricInterpretation = encoded.photometric
    if spec.samples > 1:
        ds.PlanarConfiguration = 0
    if codec.lossy:
        mark_lossy(ds, codec.method, (size * spec.frames) / max(encoded.size, 1))


def mark_lossy(ds: Dataset, method: str, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: "01", and this compression's ratio and method after any earlier."""
    ratios: list[Any] = []
    methods: list[Any] = []
    if str(ds.get("LossyImageCompression", "")).strip() == "01":
        ratios = _values(ds.get("LossyImageCompressionRatio"))
        methods = _values(ds.get("LossyImageCompressionMethod"))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, method]


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _write(ds: FileDataset, target_ts: str) -> bytes:
    register_newer_transfer_syntaxes()  # JPEG XL is newer than pydicom 3.0's dictionary
    ds.file_meta.TransferSyntaxUID = dicom_uid.UID(target_ts)
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise TranscodeUnsupported(f"cannot encode in {target_ts}: {exc}") from exc
    return out.getvalue()
