"""STOW-RS parts spooled as the blob they will become.

A blob is Chronicle's File Meta followed by the data set as received
(ingest.parse). A STOW part carries the client's File Meta instead, so ingest
used to copy every data set behind its own. `MetaRewriter` replaces the
client's File Meta while the part streams to its spool file, building
Chronicle's from the same Media Storage SOP Class / Instance and Transfer
Syntax UIDs; ingest then hard-links the spool file into the blob store
(`IngestService` with `received=True`) instead of copying it. Ingest still
parses and checks the whole file as before: a data set that contradicts its
File Meta is refused as it would have been, and a file whose Chronicle File
Meta would differ (or one this module cannot read) is simply copied.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from ingest.multipart import parse_content_type
from ingest.parse import build_file_meta
from ingest.walker import LONG_VRS

#: What a Part-10 STOW request's parts may say they are (api.stow).
PART10_TYPES = frozenset({"", "application/dicom", "application/octet-stream"})
_PREAMBLE = 128
_META_START = _PREAMBLE + 4  # after "DICM"
#: A File Meta group longer than this is not rewritten (it is copied later).
MAX_HEAD = 64 * 1024
_IDENTITY_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})
_UIDS = (0x0002, 0x0003, 0x0010)  # media storage SOP class, instance; transfer syntax


class MetaRewriter:
    """A write-only file that swaps a Part-10 stream's File Meta for Chronicle's."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._head = bytearray()
        self._passing = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._passing:
            return self._file.write(data)
        self._head += data
        end = meta_end(self._head)
        if end is None and len(self._head) <= MAX_HEAD:
            return len(data)
        ours = chronicle_meta(self._head[:end]) if end is not None and end > 0 else None
        if ours is None:
            self._file.write(self._head)  # as received: ingest copies it later
        else:
            self._file.write(ours)
            self._file.write(memoryview(self._head)[end:])
        self._head = bytearray()
        self._passing = True
        return len(data)

    def close(self) -> None:
        if not self._passing:
            self._file.write(self._head)
        self._file.close()


def writer_for(headers: dict[str, str], file: BinaryIO) -> BinaryIO:
    """The spool writer of a part: rewriting for a Part-10 file sent as is."""
    media_type, _ = parse_content_type(headers.get("content-type", ""))
    encoding = headers.get("content-transfer-encoding", "").strip().lower()
    if media_type not in PART10_TYPES or encoding not in _IDENTITY_ENCODINGS:
        return file
    return MetaRewriter(file)  # type: ignore[return-value]


def meta_end(head: bytes | bytearray) -> int | None:
    """Where the data set starts after a preamble, "DICM" and group 0002 (the
    elements walked, as ingest.parse does); None while more bytes are needed,
    -1 when `head` does not start that way."""
    if len(head) < _META_START:
        return None
    if head[_PREAMBLE:_META_START] != b"DICM":
        return -1
    pos = _META_START
    while True:
        if len(head) < pos + 8:
            return None
        group, _, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 2:
            return pos if pos > _META_START else -1
        if vr in LONG_VRS:
            if len(head) < pos + 12:
                return None
            pos += 12 + struct.unpack_from("<L", head, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
        if pos > MAX_HEAD:
            return -1


def chronicle_meta(meta: bytes | bytearray) -> bytes | None:
    """Chronicle's File Meta for the client's `meta` (preamble to data set), or
    None when it lacks one of the UIDs it is built from."""
    values: dict[int, str] = {}
    pos = _META_START
    while pos + 8 <= len(meta):
        _, elem, vr = struct.unpack_from("<HH2s", meta, pos)
        if vr in LONG_VRS:
            length, header = struct.unpack_from("<L", meta, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", meta, pos + 6)[0], 8
        if elem in _UIDS:
            values[elem] = bytes(meta[pos + header : pos + header + length]).decode("latin-1")
        pos += header + length
    uids = [values.get(elem, "").strip(" \x00") for elem in _UIDS]
    if not all(uids):
        return None
    try:
        return build_file_meta(*uids)
    except UnicodeEncodeError:
        return None
