"""Parse a received instance once, straight from its file, without loading bulk data.

The dataset is read by `ingest.walker` (absolute file offsets, bulk values
skipped) and its frames located by `ingest.frames`; this module handles the
File Meta, the transfer syntax, deflate, identity and the blob header.

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
from pydicom.dataset import Dataset

from infra.errors import Invalid
from ingest.frames import FrameRanges, frame_ranges
from ingest.walker import LONG_VRS, SHORT_VRS, UNDEFINED_LENGTH, Source, Walker, raw_elements
from schemas.dicom_json import dataset_to_json
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

_CHUNK = 1 << 20


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
    path: Path,
    transfer_syntax_uid: str,
    *,
    offset: int = 0,
    default_charset: str = "ISO_IR 100",
    dataset_sha256: str | None = None,
) -> ParsedInstance:
    """Parse a bare dataset in `transfer_syntax_uid` starting at `offset` (a C-STORE).

    `dataset_sha256`, when the receiver hashed the bytes from `offset` as they
    arrived, saves reading them all again."""
    ts = check_uid(transfer_syntax_uid, "Transfer Syntax UID")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 <= offset <= size:
            raise Invalid(f"dataset offset {offset} is outside the file ({size} bytes)")
        return _parse(f, size, ts, offset, default_charset, sniffed=False, digest=dataset_sha256)


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
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xL", 2, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def _file_meta_start(head: bytes) -> int | None:
    if head[128:132] == b"DICM":
        return 132
    if head[:4] == b"DICM":
        return 4
    if head[:2] == b"\x02\x00" and head[4:6] in SHORT_VRS | LONG_VRS:
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
        if vr in LONG_VRS:
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
        elif head[4:6] in LONG_VRS and pos + 12 <= size:
            length, header = struct.unpack(e + "L", f.read(4))[0], 12
        elif head[4:6] in SHORT_VRS:
            length, header = struct.unpack(e + "H", head[6:])[0], 8
        else:
            return False
        if length == UNDEFINED_LENGTH:
            return seen > 0
        pos += header + length
        if pos > size:
            return False
        f.seek(pos)
        last, seen = tag, seen + 1
    return seen > 0 and (seen == 16 or pos == size)


def _parse(
    f: IO[bytes],
    size: int,
    ts: str,
    offset: int,
    charset: str,
    *,
    sniffed: bool,
    digest: str | None = None,
) -> ParsedInstance:
    notes: list[str] = []
    if ts in DEFLATED_SYNTAXES:
        uids, metadata = _read_deflated(f, offset, charset, notes)
        file_meta = build_file_meta(uids[0], uids[1], ts)
        frames, note = None, "deflated: computed on read; bulk data values are not in metadata"
    else:
        implicit, little = _syntax(ts)
        walker = Walker(Source(f, size), implicit=implicit, little=little)
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
            frames, note = frame_ranges(f, ds, walker.fragments, metadata, ts, shift)
    identity = (*uids, *_patient(metadata), ts)
    digest = digest or _sha256(f, offset)
    length = size - offset
    return ParsedInstance(
        *identity, file_meta, offset, length, digest, metadata, frames, note, tuple(notes)
    )


def _read_deflated(
    f: IO[bytes], offset: int, charset: str, notes: list[str]
) -> tuple[tuple[str, str, str, str], dict[str, Any]]:
    """Identity and metadata of a deflated dataset, inflated to a spooled temp file."""
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as inflated:
        source = Source(inflated, _inflate(f, offset, inflated))
        ds, _ = Walker(source, implicit=False, little=True).dataset(0, None, 0)
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
    elements = raw_elements(ds)
    sop_class, sop_instance, series, study = (_uid(elements.get(t), what) for t, what in _IDENTITY)
    return sop_class, sop_instance, series, study


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
