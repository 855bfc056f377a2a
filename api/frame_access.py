"""One instance's frames, read from its blob as cheaply as the stored form allows.

How a frame is found (`StoredFrames.access`):

- "ranges": the byte ranges recorded at ingest (InstanceRow.frames), one
  ranged read per fragment; a frame split over several fragments is their
  concatenation. Native and encapsulated instances whose frames added up.
- "swapped ranges": Explicit VR Big Endian native pixels (16/32-bit): the
  frame's range inside the Pixel Data BulkDataURI, byte-swapped on read.
- "whole object": computed on read from the whole blob (read once per
  request): deflated datasets (no range of the inflated dataset exists in the
  blob), 1-bit pixels (frames are not byte aligned), 8-bit Big Endian OW,
  encapsulated frames that did not add up at ingest (pydicom's frame finder:
  offset tables, then JPEG end markers).

Video frames share one stream: never served one by one.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.encaps import generate_fragments, generate_frames

from api import codecs, pixels
from api.catalog import InstanceRow, load_metadata
from api.pixel_spec import DecodedFrame, PixelSpec, decode_frame
from infra.ports import BlobStore

_BULK = re.compile(r"^bulkdata/([0-9]{1,15})-([0-9]{1,15})$")
#: Padding after a JPEG-family end-of-image marker: not part of the codestream.
_PADDED_EOI = b"\xff\xd9\x00"


class StoredFrames:
    """Frames of one instance in its stored syntax, decoded, or in another syntax."""

    def __init__(self, blobs: BlobStore, row: InstanceRow, meta: dict[str, Any] | None = None):
        self._blobs, self.row = blobs, row
        meta = load_metadata(row, blobs) if meta is None else meta
        self.spec: PixelSpec | None = PixelSpec.from_metadata(meta)
        self._bulk = _pixel_bulk(meta)
        self._native: bytes | None = None
        self._encapsulated: list[bytes] | None = None

    @property
    def count(self) -> int:
        """Number of frames (0: no pixel data)."""
        return 0 if self.spec is None else self.spec.frames

    @property
    def video(self) -> bool:
        return self.row.transfer_syntax_uid in pixels.VIDEO_TRANSFER_SYNTAXES

    @property
    def stored_syntax(self) -> str:
        """The syntax `stored()` answers in: native pixels are always little endian."""
        ts = self.row.transfer_syntax_uid
        return pixels.EXPLICIT_VR_LITTLE_ENDIAN if ts in pixels.NATIVE_TRANSFER_SYNTAXES else ts

    @property
    def access(self) -> str:
        """How frames are read: 'ranges', 'swapped ranges' or 'whole object'."""
        if self.row.frames is not None and len(self.row.frames) == self.count:
            return "ranges"
        if self._swap_width():
            return "swapped ranges"
        return "whole object"

    def stored(self, index: int) -> bytes:
        """Frame `index` (0-based) as stored: native little-endian bytes or one codestream."""
        access = self.access
        if access == "ranges":
            assert self.row.frames is not None
            data = b"".join(
                self._blobs.get_range(self.row.blob_key, offset, length)
                for offset, length in self.row.frames[index]
            )
        elif access == "swapped ranges":
            data = self._swapped(index)
        else:
            data = self._from_whole(index)
        if self.stored_syntax not in pixels.NATIVE_TRANSFER_SYNTAXES and data.endswith(_PADDED_EOI):
            data = data[:-1]
        return data

    def decoded(self, index: int) -> DecodedFrame:
        assert self.spec is not None
        return decode_frame(self.stored(index), self.stored_syntax, self.spec)

    def in_syntax(self, index: int, target: str, quality: int | None = None) -> bytes:
        """Frame `index` in `target` (checked by the caller with transcode.refusal)."""
        if target == self.stored_syntax:
            return self.stored(index)
        frame = self.decoded(index)
        if target == pixels.EXPLICIT_VR_LITTLE_ENDIAN:
            return frame.native_bytes()
        codec = codecs.CODECS[target]
        encoded = codecs.encode_frames(
            codec, [frame.array], frame.spec, quality or codecs.DEFAULT_QUALITY
        )
        return encoded.frames[0]

    def video_stream(self) -> bytes:
        """A video's bitstream: its Pixel Data fragments concatenated (PS3.5 A.4)."""
        if self._bulk is None:
            raise pixels.TranscodeUnsupported("the video's Pixel Data has no byte range")
        offset, length, _ = self._bulk
        value = self._blobs.get_range(self.row.blob_key, offset, length)
        return b"".join(list(generate_fragments(value))[1:])  # the first is the offset table

    # -- the ways in --

    def _swap_width(self) -> int:
        spec, bulk = self.spec, self._bulk
        if (
            spec is None
            or bulk is None
            or self.row.transfer_syntax_uid != pixels.EXPLICIT_VR_BIG_ENDIAN
        ):
            return 0
        if bulk[2] != "OW" or spec.bits_allocated not in (16, 32):
            return 0
        return spec.bits_allocated // 8

    def _swapped(self, index: int) -> bytes:
        assert self.spec is not None and self._bulk is not None
        size = self.spec.frame_length()
        offset = self._bulk[0] + index * size
        raw = self._blobs.get_range(self.row.blob_key, offset, size)
        return pixels.swap_bytes(raw, self._swap_width())

    def _from_whole(self, index: int) -> bytes:
        if self._native is None and self._encapsulated is None:
            self._load_whole()
        if self._encapsulated is not None:
            return self._encapsulated[index]
        assert self._native is not None and self.spec is not None
        if self.spec.bits_allocated == 1:
            return _one_bit_frame(self._native, index, self.spec)
        size = self.spec.frame_length()
        return self._native[index * size : (index + 1) * size]

    def _load_whole(self) -> None:
        stream = self._blobs.get(self.row.blob_key)
        try:
            data = stream.read()
        finally:
            stream.close()
        ts = self.row.transfer_syntax_uid
        if ts in pixels.NATIVE_TRANSFER_SYNTAXES:
            # Big Endian and Deflated become Explicit VR Little Endian first.
            data = pixels.to_explicit_le(data)
        ds = dcmread(io.BytesIO(data))
        pixel_data = bytes(ds.get("PixelData") or b"")
        if ts in pixels.NATIVE_TRANSFER_SYNTAXES:
            self._native = pixel_data
        else:
            self._encapsulated = list(generate_frames(pixel_data, number_of_frames=self.count))


def _pixel_bulk(meta: dict[str, Any]) -> tuple[int, int, str] | None:
    """(offset, length, VR) of the Pixel Data BulkDataURI, when it is one."""
    element = meta.get("7FE00010") or {}
    match = _BULK.match(str(element.get("BulkDataURI", "")))
    return (int(match[1]), int(match[2]), str(element.get("vr", ""))) if match else None


def _one_bit_frame(raw: bytes, index: int, spec: PixelSpec) -> bytes:
    """Frame `index` of bit-packed pixels, re-packed from bit 0 (PS3.5 8.1.1)."""
    per_frame = spec.rows * spec.columns * spec.samples
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    frame = bits[index * per_frame : (index + 1) * per_frame]
    return bytes(np.packbits(frame, bitorder="little").tobytes())
