"""The DICOM element walker: reads a dataset straight from its file, by absolute offset.

It replaces pydicom's reader because pydicom 3.0.2 (a) reports value_tell of
elements inside defined-length sequence items relative to the sequence value,
not to the file, (b) reads nested items without defer_size, so bulk data
inside sequences lands in memory, and (c) silently seeks past end-of-file for
deferred values. The walker yields pydicom Datasets of RawDataElements whose
value_tell is always an absolute file position; bulk values (binary VRs >
1024 bytes, and Pixel Data) are skipped with a seek and left as None.
Encapsulated values are walked by their 8-byte item headers only.
"""

from __future__ import annotations

import struct
from typing import IO, Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from infra.errors import Invalid
from schemas.dicom_json import BINARY_VRS, BULK_THRESHOLD, PIXEL_DATA_TAGS, resolve_vr

MAX_DEPTH = 64  # sequence nesting

UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Explicit VRs with a reserved 2 bytes and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VR_NAMES = {
    vr: vr.decode()
    for vr in (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO")
    + (b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
}
#: Explicit VRs with a 2-byte length
SHORT_VRS = frozenset(_SHORT_VR_NAMES)


def raw_elements(ds: Dataset) -> dict[int, Any]:
    """The dataset's raw element mapping, keyed by plain tag numbers."""
    return ds._dict  # type: ignore[return-value]


class Source:
    """Reads a file through one window, so walking headers costs no syscall each."""

    def __init__(self, f: IO[bytes], end: int) -> None:
        self.f, self.end = f, end
        self.buf, self.start = b"", 0

    def window(self, pos: int, need: int, chunk: int = 1 << 16) -> tuple[bytes, int]:
        """A buffer holding bytes [pos, pos + need) (fewer at end of data) and pos in it."""
        rel = pos - self.start
        if rel < 0 or rel + need > len(self.buf):
            self.f.seek(pos)
            self.buf, self.start, rel = self.f.read(max(need, chunk)), pos, 0
        return self.buf, rel

    def read(self, pos: int, length: int) -> bytes:
        buf, rel = self.window(pos, length)
        return buf[rel : rel + length]


class Walker:
    """Reads one dataset's elements, skipping over bulk values by position."""

    def __init__(self, src: Source, *, implicit: bool, little: bool, depth: int = 0) -> None:
        e = "<" if little else ">"
        self.src, self.implicit, self.little, self.depth = src, implicit, little, depth
        self.tag_length = struct.Struct(e + "HHL").unpack_from
        self.explicit = struct.Struct(e + "HH2sH").unpack_from
        self.ulong = struct.Struct(e + "L").unpack_from
        #: (value position, length) of every item of the top-level encapsulated Pixel Data
        self.fragments: list[tuple[int, int]] | None = None

    def dataset(self, pos: int, end: int | None, pixel_rep: int) -> tuple[Dataset, int]:
        """Elements from `pos` up to `end`, or to the Item Delimitation Item (end None,
        nested), or to the end of data (end None, top level); and where it stopped."""
        src, top, explicit, little = self.src, self.depth == 0, self.explicit, self.little
        limit = src.end if end is None else end
        elements: dict[BaseTag, Any] = {}
        buf, base = src.buf, src.start
        while pos < limit:
            rel = pos - base
            if not self.implicit and rel >= 0 and rel + 12 <= len(buf):
                # fast path: explicit VR, short-length VR, defined length, value in window
                group, elem, vr_bytes, length = explicit(buf, rel)
                vr = _SHORT_VR_NAMES.get(vr_bytes)
                value_end = pos + 8 + length
                if vr is not None and group != 0xFFFE and value_end <= limit:
                    tag = BaseTag(group << 16 | elem)
                    if value_end - base <= len(buf):
                        value = buf[rel + 8 : rel + 8 + length]
                    else:
                        value = src.read(pos + 8, length)
                        buf, base = src.buf, src.start
                    elements[tag] = RawDataElement(tag, vr, length, value, pos + 8, False, little)
                    pos = value_end
                    continue
            pos, done = self._slow_element(pos, end, limit, elements, pixel_rep)
            buf, base = src.buf, src.start
            if done:
                return Dataset(elements), pos
        if pos > limit or not top and end is None:
            raise Invalid(f"truncated: data runs past the end at offset {pos}")
        return Dataset(elements), pos

    def _slow_element(
        self, pos: int, end: int | None, limit: int, elements: dict[BaseTag, Any], rep: int
    ) -> tuple[int, bool]:
        """Read one element the general way; True when it was the item's delimiter."""
        tag, vr, length, value_tell = self._header(pos, limit)
        if tag == _ITEM_END and end is None and self.depth:
            return value_tell, True
        if tag >> 16 == 0xFFFE:
            raise Invalid(f"unexpected item tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) at {pos}")
        walker = self
        if vr is None or vr == "UN":
            pixel_representation = elements.get(BaseTag(0x00280103))
            rep = rep if pixel_representation is None else _pixel_rep(pixel_representation, rep)
            resolved = self._resolve(tag, vr, length, elements, rep)
            if vr == "UN" and resolved == "SQ":
                walker = self._implicit_le()  # PS3.5 6.2.2
            vr = resolved
        element, pos = walker._element(tag, vr, length, value_tell, limit, rep)
        elements[BaseTag(tag)] = element
        return pos, False

    def _header(self, pos: int, limit: int) -> tuple[int, str | None, int, int]:
        buf, rel = self.src.window(pos, 12)
        if len(buf) - rel < 8 or pos + 8 > limit:
            raise Invalid(f"truncated: element header at offset {pos} runs past the end")
        if self.implicit:
            group, elem, length = self.tag_length(buf, rel)
            return group << 16 | elem, None, length, pos + 8
        group, elem, vr, short = self.explicit(buf, rel)
        tag = group << 16 | elem
        if group == 0xFFFE:
            return tag, None, self.ulong(buf, rel + 4)[0], pos + 8
        if vr in LONG_VRS:
            if len(buf) - rel < 12:
                raise Invalid(f"truncated: element header at offset {pos} runs past the end")
            return tag, vr.decode(), self.ulong(buf, rel + 8)[0], pos + 12
        if vr in SHORT_VRS:
            return tag, vr.decode(), short, pos + 8
        if vr.isalpha() and vr.isupper():
            return tag, "UN", short, pos + 8  # unknown VR: 2-byte length, like pydicom
        # a writer switched to implicit VR (seen inside sequences): follow it
        return tag, None, self.ulong(buf, rel + 4)[0], pos + 8

    def _resolve(
        self, tag: int, vr: str | None, length: int, elements: dict[BaseTag, Any], rep: int
    ) -> str:
        resolved = resolve_vr(tag, vr, elements, rep)
        if length == UNDEFINED_LENGTH and resolved != "SQ":
            # only Pixel Data is encapsulated; any other undefined length is a sequence
            return "OB" if tag in PIXEL_DATA_TAGS else "SQ"
        return resolved

    def _implicit_le(self) -> Walker:
        if self.implicit and self.little:
            return self
        return Walker(self.src, implicit=True, little=True, depth=self.depth)

    def _element(
        self, tag: int, vr: str, length: int, value_tell: int, limit: int, rep: int
    ) -> tuple[Any, int]:
        if length == UNDEFINED_LENGTH:
            if vr == "SQ":
                items, end = self.sequence(value_tell, None, rep)
                return DataElement(BaseTag(tag), vr, items, value_tell, True), end
            fragments, delimiter = self._items(value_tell)
            if self.depth == 0 and tag in PIXEL_DATA_TAGS:
                self.fragments = fragments
            return self._raw(tag, vr, delimiter - value_tell, None, value_tell), delimiter + 8
        end = value_tell + length
        if end > limit:
            raise Invalid(
                f"truncated: ({tag >> 16:04X},{tag & 0xFFFF:04X}) value of {length} bytes "
                f"at offset {value_tell} runs past the end"
            )
        if vr == "SQ":
            items, _ = self.sequence(value_tell, end, rep)
            return DataElement(BaseTag(tag), vr, items, value_tell, False), end
        value = None
        if length <= BULK_THRESHOLD or (vr not in BINARY_VRS and tag not in PIXEL_DATA_TAGS):
            value = self.src.read(value_tell, length)
        return self._raw(tag, vr, length, value, value_tell), end

    def _raw(self, tag: int, vr: str, length: int, value: bytes | None, tell: int) -> Any:
        return RawDataElement(BaseTag(tag), vr, length, value, tell, self.implicit, self.little)

    def sequence(self, pos: int, end: int | None, rep: int) -> tuple[list[Dataset], int]:
        if self.depth >= MAX_DEPTH:
            raise Invalid(f"sequences nested deeper than {MAX_DEPTH} levels")
        limit = self.src.end if end is None else end
        items: list[Dataset] = []
        self.depth += 1
        while end is None or pos < end:
            buf, rel = self.src.window(pos, 8)
            if len(buf) - rel < 8 or pos + 8 > limit:
                raise Invalid(f"truncated: item header at offset {pos} runs past the end")
            group, elem, length = self.tag_length(buf, rel)
            tag = group << 16 | elem
            if tag == _SEQ_END and end is None:
                pos += 8
                break
            if tag != _ITEM:
                raise Invalid(f"expected an item at offset {pos}, found ({group:04X},{elem:04X})")
            if length != UNDEFINED_LENGTH and pos + 8 + length > limit:
                raise Invalid(f"truncated: item at offset {pos} runs past the end")
            item_end = None if length == UNDEFINED_LENGTH else pos + 8 + length
            item, pos = self.dataset(pos + 8, item_end, rep)
            items.append(item)
        self.depth -= 1
        return items, pos

    def _items(self, pos: int) -> tuple[list[tuple[int, int]], int]:
        """(value position, length) of each item of an encapsulated value, and where
        its Sequence Delimitation Item starts. Reads only the 8-byte headers."""
        items: list[tuple[int, int]] = []
        while True:
            buf, rel = self.src.window(pos, 8, chunk=4096)
            if len(buf) - rel < 8:
                raise Invalid(f"truncated: encapsulated data at offset {pos} has no delimiter")
            group, elem, length = self.tag_length(buf, rel)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                return items, pos
            if tag != _ITEM or length == UNDEFINED_LENGTH:
                raise Invalid(f"encapsulated data at offset {pos}: ({group:04X},{elem:04X})")
            if pos + 8 + length > self.src.end:
                raise Invalid(f"truncated: fragment at offset {pos} runs past the end")
            items.append((pos + 8, length))
            pos += 8 + length


def _pixel_rep(element: Any, inherited: int) -> int:
    value = element.value
    if isinstance(value, bytes) and len(value) >= 2:
        return int(struct.unpack("<H" if element.is_little_endian else ">H", value[:2])[0])
    return inherited
