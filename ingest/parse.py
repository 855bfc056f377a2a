"""Parse a received instance once, straight from its file, without loading bulk data.

The element walker here replaces pydicom's reader because pydicom 3.0.2 (a)
reports value_tell of elements inside defined-length sequence items relative
to the sequence value, not to the file, (b) reads nested items without
defer_size, so bulk data inside sequences lands in memory, and (c) silently
seeks past end-of-file for deferred values. The walker yields pydicom
Datasets of RawDataElements whose value_tell is always an absolute file
position; bulk values (binary VRs > 1024 bytes, and Pixel Data) are skipped
with a seek and left as None. Encapsulated values are walked by their 8-byte
item headers only.

Blob layout: blob = file_meta + source[dataset_offset:], so the blob offset of
source byte p is len(file_meta) + p - dataset_offset. A BulkDataURI's range is
the element's value: for encapsulated Pixel Data that is every item (Basic
Offset Table item included) from the first item tag up to, not including, the
Sequence Delimitation Item. In deflated datasets no byte range of the
inflated dataset exists in the blob: bulk elements keep only {"vr": VR} in
metadata, small binary values stay InlineBinary, and frames is None. In
Explicit VR Big Endian datasets BulkDataURI ranges hold the bytes as stored
(big endian words) and frames is None: both are converted on read.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from infra.errors import Invalid
from schemas.dicom_json import (
    BINARY_VRS,
    BULK_THRESHOLD,
    PIXEL_DATA_TAGS,
    dataset_to_json,
    resolve_vr,
)
from schemas.uids import check_uid

# Fixed: generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["Chronicle PACS implementation"])
CHRONICLE_IMPLEMENTATION_CLASS_UID = (
    "1.2.826.0.1.3680043.8.498.12568313783934477028678699782887203313"
)
CHRONICLE_VERSION_NAME = "CHRONICLE_01"

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.8.1"}
)
MAX_INFLATED = 1 << 30  # a deflate bomb stops here
MAX_DEPTH = 64  # sequence nesting

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VR_NAMES = {
    vr: vr.decode()
    for vr in (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO")
    + (b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
}
_SHORT_VRS = frozenset(_SHORT_VR_NAMES)
_CHUNK = 1 << 20

FrameRanges = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """What ingest needs from one instance: identity, blob header, metadata, frames."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    transfer_syntax_uid: str
    file_meta: bytes
    dataset_offset: int
    dataset_length: int
    dataset_sha256: str
    metadata: dict[str, Any]
    frames: list[FrameRanges] | None
    frames_note: str
    #: decoding problems met on the way (bad bytes replaced, unknown charset...)
    warnings: tuple[str, ...] = ()


def parse_part10(path: Path, *, default_charset: str = "ISO_IR 100") -> ParsedInstance:
    """Parse a Part-10 file (or a bare dataset whose transfer syntax is unambiguous)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(132)
        meta_start = _file_meta_start(head)
        meta: dict[int, bytes] = {}
        offset = 0
        if meta_start is not None:
            meta, offset = _read_file_meta(f, meta_start, size)
        ts_raw = meta.get(0x00020010)
        if ts_raw is not None:
            ts = check_uid(ts_raw.decode("latin-1"), "Transfer Syntax UID (0002,0010)")
        else:
            ts = _sniff_transfer_syntax(f, offset, size)
        parsed = _parse(f, size, ts, offset, default_charset, sniffed=ts_raw is None)
    _check_against_meta(parsed, meta)
    return parsed


def parse_dataset(
    path: Path, transfer_syntax_uid: str, *, offset: int = 0, default_charset: str = "ISO_IR 100"
) -> ParsedInstance:
    """Parse a bare dataset in `transfer_syntax_uid` starting at `offset` (a C-STORE)."""
    ts = check_uid(transfer_syntax_uid, "Transfer Syntax UID")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 <= offset <= size:
            raise Invalid(f"dataset offset {offset} is outside the file ({size} bytes)")
        return _parse(f, size, ts, offset, default_charset, sniffed=False)


def build_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Chronicle's deterministic Part-10 header: no source AE, no timestamps."""
    body = _meta_element(0x0001, b"OB", b"\x00\x01")
    for elem, uid in (
        (0x0002, sop_class_uid),
        (0x0003, sop_instance_uid),
        (0x0010, transfer_syntax_uid),
        (0x0012, CHRONICLE_IMPLEMENTATION_CLASS_UID),
    ):
        body += _meta_element(elem, b"UI", _pad(uid.encode("ascii"), b"\x00"))
    body += _meta_element(0x0013, b"SH", _pad(CHRONICLE_VERSION_NAME.encode("ascii"), b" "))
    group_length = _meta_element(0x0000, b"UL", struct.pack("<L", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xL", 2, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def _file_meta_start(head: bytes) -> int | None:
    if head[128:132] == b"DICM":
        return 132
    if head[:4] == b"DICM":
        return 4
    if head[:2] == b"\x02\x00" and head[4:6] in _SHORT_VRS | _LONG_VRS:
        return 0  # File Meta without preamble
    return None


def _read_file_meta(f: IO[bytes], start: int, size: int) -> tuple[dict[int, bytes], int]:
    """Group 0002 (always explicit VR little endian) and where the dataset starts."""
    meta: dict[int, bytes] = {}
    pos = start
    f.seek(pos)
    while pos + 8 <= size:
        head = f.read(8)
        group, elem, vr = struct.unpack("<HH2s", head[:6])
        if group != 2:
            break
        if vr in _LONG_VRS:
            extension = f.read(4)
            if len(extension) < 4:
                raise Invalid(f"truncated: File Meta element header at offset {pos}")
            length, header = struct.unpack("<L", extension)[0], 12
        else:
            length, header = struct.unpack("<H", head[6:8])[0], 8
        if length > 0xFFFF or pos + header + length > size:
            raise Invalid(f"File Meta element (0002,{elem:04X}) at offset {pos} is malformed")
        meta[elem | 0x00020000] = f.read(length)
        pos += header + length
    if not meta:
        raise Invalid("DICM prefix present but no File Meta Information follows")
    return meta, pos


def _check_against_meta(parsed: ParsedInstance, meta: dict[int, bytes]) -> None:
    for tag, name, value in (
        (0x00020002, "SOP Class UID", parsed.sop_class_uid),
        (0x00020003, "SOP Instance UID", parsed.sop_instance_uid),
    ):
        declared = meta.get(tag, b"").decode("latin-1").strip(" \x00")
        if declared and declared != value:
            raise Invalid(
                f"dataset {name} {value} contradicts its File Meta ({declared})", status=0xA900
            )


def _syntax(ts: str) -> tuple[bool, bool]:
    """(implicit VR, little endian); every other syntax is explicit VR little endian."""
    return ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE


def _sniff_transfer_syntax(f: IO[bytes], offset: int, size: int) -> str:
    """The one uncompressed syntax under which the first elements parse cleanly."""
    fits = [
        ts
        for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE)
        if _parses_as(f, offset, size, *_syntax(ts))
    ]
    if len(fits) != 1:
        why = "no" if not fits else "more than one"
        raise Invalid(f"not a DICOM file: no File Meta and {why} transfer syntax fits the bytes")
    return fits[0]


def _parses_as(f: IO[bytes], offset: int, size: int, implicit: bool, little: bool) -> bool:
    e = "<" if little else ">"
    f.seek(offset)
    pos, last, seen = offset, -1, 0
    while seen < 16 and pos + 8 <= size:
        head = f.read(8)
        group, elem = struct.unpack(e + "HH", head[:4])
        tag = group << 16 | elem
        if tag <= last or group > 0x7FE0 or group < 2:
            return False
        if not group & 1 and elem and not dictionary_has_tag(tag):
            return False
        if implicit:
            length, header = struct.unpack(e + "L", head[4:])[0], 8
        elif head[4:6] in _LONG_VRS and pos + 12 <= size:
            length, header = struct.unpack(e + "L", f.read(4))[0], 12
        elif head[4:6] in _SHORT_VRS:
            length, header = struct.unpack(e + "H", head[6:])[0], 8
        else:
            return False
        if length == _UNDEFINED:
            return seen > 0
        pos += header + length
        if pos > size:
            return False
        f.seek(pos)
        last, seen = tag, seen + 1
    return seen > 0 and (seen == 16 or pos == size)


def _parse(
    f: IO[bytes], size: int, ts: str, offset: int, charset: str, *, sniffed: bool
) -> ParsedInstance:
    notes: list[str] = []
    if ts in DEFLATED_SYNTAXES:
        uids, metadata = _read_deflated(f, offset, charset, notes)
        file_meta = build_file_meta(uids[0], uids[1], ts)
        frames, note = None, "deflated: computed on read; bulk data values are not in metadata"
    else:
        implicit, little = _syntax(ts)
        walker = _Walker(_Source(f, size), implicit=implicit, little=little)
        ds, _ = walker.dataset(offset, None, 0)
        if sniffed and walker.fragments is not None:
            raise Invalid("compressed Pixel Data without File Meta: transfer syntax unknown")
        uids = _identity(ds)
        file_meta = build_file_meta(uids[0], uids[1], ts)
        base = len(file_meta)
        metadata = dataset_to_json(
            ds, bulk_offset_base=base, dataset_start=offset, default_charset=charset, notes=notes
        )
        frames, note = None, "big endian: computed on read"
        if little:
            shift = base - offset  # source position -> blob offset
            frames, note = _frames(f, ds, walker.fragments, metadata, ts, shift)
    identity, digest = (*uids, *_patient(metadata), ts), _sha256(f, offset)
    length = size - offset
    return ParsedInstance(
        *identity, file_meta, offset, length, digest, metadata, frames, note, tuple(notes)
    )


def _read_deflated(
    f: IO[bytes], offset: int, charset: str, notes: list[str]
) -> tuple[tuple[str, str, str, str], dict[str, Any]]:
    """Identity and metadata of a deflated dataset, inflated to a spooled temp file."""
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as inflated:
        source = _Source(inflated, _inflate(f, offset, inflated))
        ds, _ = _Walker(source, implicit=False, little=True).dataset(0, None, 0)
        metadata = dataset_to_json(ds, default_charset=charset, omit_bulk=True, notes=notes)
        return _identity(ds), metadata


def _inflate(f: IO[bytes], offset: int, out: IO[bytes]) -> int:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    f.seek(offset)
    total = 0
    try:
        while chunk := f.read(_CHUNK):
            while chunk:
                data = inflater.decompress(chunk, _CHUNK)
                total += len(data)
                if total > MAX_INFLATED:
                    raise Invalid(f"deflated dataset inflates beyond {MAX_INFLATED} bytes")
                out.write(data)
                chunk = inflater.unconsumed_tail
    except zlib.error as exc:
        raise Invalid(f"deflated dataset is corrupt: {exc}") from exc
    if not inflater.eof:
        raise Invalid("deflated dataset is truncated")
    return total


def _sha256(f: IO[bytes], offset: int) -> str:
    digest = hashlib.sha256()
    f.seek(offset)
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


_IDENTITY = (
    (0x00080016, "SOP Class UID (0008,0016)"),
    (0x00080018, "SOP Instance UID (0008,0018)"),
    (0x0020000E, "Series Instance UID (0020,000E)"),
    (0x0020000D, "Study Instance UID (0020,000D)"),
)


def _identity(ds: Dataset) -> tuple[str, str, str, str]:
    elements = _elements(ds)
    sop_class, sop_instance, series, study = (_uid(elements.get(t), what) for t, what in _IDENTITY)
    return sop_class, sop_instance, series, study


def _elements(ds: Dataset) -> dict[int, Any]:
    """The dataset's raw element mapping, keyed by plain tag numbers."""
    return ds._dict  # type: ignore[return-value]


def _uid(element: Any, what: str) -> str:
    if element is None or element.value is None:
        raise Invalid(f"{what} is missing")
    value = element.value
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if "\\" in text:
        raise Invalid(f"{what} has more than one value")
    return check_uid(text, what)


def _patient(metadata: dict[str, Any]) -> tuple[str, str]:
    return _first_text(metadata, "00100020"), _first_text(metadata, "00100021")


def _first_text(metadata: dict[str, Any], key: str) -> str:
    values = metadata.get(key, {}).get("Value") or [None]
    return values[0] if isinstance(values[0], str) else ""


class _Source:
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


class _Walker:
    """Reads one dataset's elements, skipping over bulk values by position."""

    def __init__(self, src: _Source, *, implicit: bool, little: bool, depth: int = 0) -> None:
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
        if vr in _LONG_VRS:
            if len(buf) - rel < 12:
                raise Invalid(f"truncated: element header at offset {pos} runs past the end")
            return tag, vr.decode(), self.ulong(buf, rel + 8)[0], pos + 12
        if vr in _SHORT_VRS:
            return tag, vr.decode(), short, pos + 8
        if vr.isalpha() and vr.isupper():
            return tag, "UN", short, pos + 8  # unknown VR: 2-byte length, like pydicom
        # a writer switched to implicit VR (seen inside sequences): follow it
        return tag, None, self.ulong(buf, rel + 4)[0], pos + 8

    def _resolve(
        self, tag: int, vr: str | None, length: int, elements: dict[BaseTag, Any], rep: int
    ) -> str:
        resolved = resolve_vr(tag, vr, elements, rep)
        if length == _UNDEFINED and resolved != "SQ":
            # only Pixel Data is encapsulated; any other undefined length is a sequence
            return "OB" if tag in PIXEL_DATA_TAGS else "SQ"
        return resolved

    def _implicit_le(self) -> _Walker:
        if self.implicit and self.little:
            return self
        return _Walker(self.src, implicit=True, little=True, depth=self.depth)

    def _element(
        self, tag: int, vr: str, length: int, value_tell: int, limit: int, rep: int
    ) -> tuple[Any, int]:
        if length == _UNDEFINED:
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
            if length != _UNDEFINED and pos + 8 + length > limit:
                raise Invalid(f"truncated: item at offset {pos} runs past the end")
            item_end = None if length == _UNDEFINED else pos + 8 + length
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
            if tag != _ITEM or length == _UNDEFINED:
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


_VIDEO_PREFIX = "1.2.840.10008.1.2.4.10"  # MPEG-2, MPEG-4, HEVC (.100 to .108)
_EOI_TAILS = (b"\xff\xd9", b"\xff\xd9\x00")  # JPEG / JPEG-LS / J2K end marker, maybe padded


def _frames(
    f: IO[bytes],
    ds: Dataset,
    fragments: list[tuple[int, int]] | None,
    metadata: dict[str, Any],
    ts: str,
    shift: int,
) -> tuple[list[FrameRanges] | None, str]:
    """Byte ranges of each frame in blob coordinates (source position + shift)."""
    elements = _elements(ds)
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
    eot = _elements(ds).get(0x7FE00001)
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
