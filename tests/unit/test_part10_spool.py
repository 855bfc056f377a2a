"""STOW parts spooled with Chronicle's File Meta (ingest.part10_spool)."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.parse import build_file_meta, parse_part10
from ingest.part10_spool import MetaRewriter, meta_end, writer_for
from tests.support import make_ct, part10_bytes

CT = make_ct(rows=4, cols=4)
SOURCE = part10_bytes(CT)  # pydicom's File Meta: implementation UID, version name...
OURS = build_file_meta(CT.SOPClassUID, CT.SOPInstanceUID, "1.2.840.10008.1.2.1")


class _Kept(io.BytesIO):
    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


def spool(data: bytes, cuts: list[int]) -> bytes:
    out = _Kept()
    writer = MetaRewriter(out)  # type: ignore[arg-type]
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        writer.write(memoryview(data)[start:cut])
        start = max(start, cut)
    writer.close()
    return out.kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1 << 20), max_size=12))
def test_the_clients_file_meta_becomes_chronicles_however_the_bytes_arrive(
    cuts: list[int],
) -> None:
    start = meta_end(SOURCE)
    assert start is not None and start > 0
    assert SOURCE[:start] != OURS  # pydicom writes its own implementation UID
    assert spool(SOURCE, cuts) == OURS + SOURCE[start:]


def test_the_rewritten_file_is_exactly_the_blob_ingest_would_build(tmp_path: Path) -> None:
    path = tmp_path / "part"
    path.write_bytes(spool(SOURCE, [7, 300]))
    parsed = parse_part10(path)
    assert parsed.dataset_offset == len(parsed.file_meta)
    assert path.read_bytes()[: parsed.dataset_offset] == parsed.file_meta


@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=5))
def test_anything_else_is_spooled_as_received(data: bytes, cuts: list[int]) -> None:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return
    assert spool(data, cuts) == data


def test_a_file_meta_without_its_transfer_syntax_is_spooled_as_received() -> None:
    start = meta_end(SOURCE)
    assert start is not None
    # Blank the element number of (0002,0010) so the UID cannot be found.
    at = SOURCE.index(b"\x02\x00\x10\x00UI")
    damaged = SOURCE[:at] + b"\x02\x00\x99\x00" + SOURCE[at + 4 :]
    assert spool(damaged, [50]) == damaged


def test_only_part10_parts_sent_as_they_are_are_rewritten() -> None:
    raw = io.BytesIO()
    assert isinstance(writer_for({"content-type": "application/dicom"}, raw), MetaRewriter)
    assert isinstance(writer_for({}, raw), MetaRewriter)
    assert writer_for({"content-type": "application/dicom+json"}, raw) is raw
    encoded = {"content-type": "application/dicom", "content-transfer-encoding": "base64"}
    assert writer_for(encoded, raw) is raw
