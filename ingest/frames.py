"""Byte ranges of each pixel frame, computed once at ingest from the walked dataset.

Native Pixel Data is cut into equal frames. Encapsulated Pixel Data is grouped
into frames by the Extended Offset Table, else the Basic Offset Table, else
one fragment per frame, else (JPEG family) by the fragment ending in an EOI
marker. Video and anything that does not add up are left to be computed on
read, with a note saying why.
"""

from __future__ import annotations

import struct
from typing import IO, Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from ingest.walker import raw_elements

FrameRanges = list[tuple[int, int]]

_VIDEO_PREFIX = "1.2.840.10008.1.2.4.10"  # MPEG-2, MPEG-4, HEVC (.100 to .108)
_EOI_TAILS = (b"\xff\xd9", b"\xff\xd9\x00")  # JPEG / JPEG-LS / J2K end marker, maybe padded


def frame_ranges(
    f: IO[bytes],
    ds: Dataset,
    fragments: list[tuple[int, int]] | None,
    metadata: dict[str, Any],
    ts: str,
    shift: int,
) -> tuple[list[FrameRanges] | None, str]:
    """Byte ranges of each frame in blob coordinates (source position + shift)."""
    elements = raw_elements(ds)
    pixel = next((elements[t] for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if t in elements), None)
    if pixel is None or not isinstance(pixel, RawDataElement) or not pixel.length:
        return None, "no pixel data"
    count = max(_int(metadata, "00280008", 1), 1)
    if fragments is not None:
        return _encapsulated_frames(f, ds, fragments, count, ts, shift)
    rows, columns, bits = (_int(metadata, key, 0) for key in ("00280010", "00280011", "00280100"))
    samples = _int(metadata, "00280002", 1)
    if bits % 8:
        return None, f"BitsAllocated {bits}: frames are not byte aligned, computed on read"
    if (_first(metadata, "00280004") or "").startswith("YBR_FULL_422"):
        samples = 2  # PS3.3 C.7.6.3.1.2: Cb and Cr are shared by each pair of pixels
    size = rows * columns * samples * bits // 8
    if not size:
        return None, "Rows, Columns or BitsAllocated missing: frames unknown"
    if count * size > pixel.length:
        return None, f"Pixel Data holds {pixel.length} bytes, fewer than {count} frames of {size}"
    start = pixel.value_tell + shift
    return [[(start + i * size, size)] for i in range(count)], ""


def _int(metadata: dict[str, Any], key: str, default: int) -> int:
    value = _first(metadata, key)
    return int(value) if isinstance(value, int | float) else default


def _first(metadata: dict[str, Any], key: str) -> Any:
    return (metadata.get(key, {}).get("Value") or [None])[0]


def _encapsulated_frames(
    f: IO[bytes], ds: Dataset, items: list[tuple[int, int]], count: int, ts: str, shift: int
) -> tuple[list[FrameRanges] | None, str]:
    fragments = items[1:]
    if not fragments:
        return None, "encapsulated Pixel Data has no fragments"
    if ts.startswith(_VIDEO_PREFIX):
        return None, "video: frames share one stream, computed on read"
    ranges = [(pos + shift, length) for pos, length in fragments]
    groups = _group_by_offsets(fragments, _offset_table(f, ds, items[0]))
    if groups is None and len(fragments) == count:
        groups = [[i] for i in range(count)]
    if groups is None and count == 1:
        groups = [list(range(len(fragments)))]
    if groups is None:
        groups = _group_by_end_marker(f, fragments)
    if len(groups or ()) != count:
        return None, f"{len(fragments)} fragments for {count} frames: computed on read"
    return [[ranges[i] for i in group] for group in groups or ()], ""


def _offset_table(f: IO[bytes], ds: Dataset, bot: tuple[int, int]) -> list[int] | None:
    """Frame offsets from the Extended Offset Table, else the Basic Offset Table."""
    eot = raw_elements(ds).get(0x7FE00001)
    if isinstance(eot, RawDataElement) and eot.length and eot.length % 8 == 0:
        data = eot.value if eot.value is not None else _read_at(f, eot.value_tell, eot.length)
        return list(struct.unpack(f"<{len(data) // 8}Q", data))
    position, length = bot
    if not length or length % 4:
        return None
    return list(struct.unpack(f"<{length // 4}L", _read_at(f, position, length)))


def _read_at(f: IO[bytes], position: int | None, length: int) -> bytes:
    f.seek(position or 0)
    return f.read(length)


def _group_by_offsets(
    fragments: list[tuple[int, int]], offsets: list[int] | None
) -> list[list[int]] | None:
    """Fragment indexes per frame; None when the table does not match the fragments."""
    if not offsets:
        return None
    first = fragments[0][0] - 8
    index = {pos - 8 - first: i for i, (pos, _) in enumerate(fragments)}
    if any(offset not in index for offset in offsets):
        return None
    bounds = [*(index[offset] for offset in offsets), len(fragments)]
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        return None
    return [list(range(bounds[i], bounds[i + 1])) for i in range(len(offsets))]


def _group_by_end_marker(f: IO[bytes], fragments: list[tuple[int, int]]) -> list[list[int]]:
    """Frames of a JPEG-family stream: a frame ends with the fragment holding FFD9."""
    groups: list[list[int]] = [[]]
    for i, (pos, length) in enumerate(fragments):
        groups[-1].append(i)
        tail = _read_at(f, pos + max(length - 3, 0), min(length, 3))
        if tail.endswith(_EOI_TAILS) and i + 1 < len(fragments):
            groups.append([])
    return groups
