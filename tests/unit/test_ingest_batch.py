"""A STOW request's files: blobs first, then one batch append in part order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from pynetdicom.dsutils import encode

from infra.errors import Invalid, Unavailable
from infra.factory import open_blob_store, open_event_log
from ingest.parse import build_file_meta
from ingest.service import IngestService, StoreOutcome
from schemas import codec
from schemas.events import Source
from tests.support import make_ct, write_part10

STOW = Source("STOW", calling_ae="", called_ae="", peer="127.0.0.1")


def _files(tmp_path: Path, count: int) -> list[Path]:
    return [write_part10(make_ct(rows=8, cols=8), tmp_path / f"{i}.dcm") for i in range(count)]


def test_files_are_appended_in_part_order_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    log = open_event_log(f"sqlite://{tmp_path / 'log.db'}")
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    paths = _files(tmp_path, 4)
    paths[2].write_bytes(b"not DICOM at all")
    try:
        results = IngestService(log, blobs).store_part10_files(paths, source=STOW)
        assert isinstance(results[2], Invalid)
        stored = [r for r in results if isinstance(r, StoreOutcome)]
        assert len(stored) == 3
        assert [r.position for r in stored] == [(0, 0), (0, 1), (0, 2)]
        records = log.read({0: 0})
        uids = [codec.decode(r.value).payload.sop_instance_uid for r in records]
        assert uids == [r.event.sop_instance_uid for r in stored]
        assert all(blobs.exists(r.event.blob.key) for r in stored)
    finally:
        log.close()
        blobs.close()


class _DownLog:
    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        raise Unavailable("log down")

    def read(self, start: object, max_records: int = 1000) -> list[object]:
        return []

    def end(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        pass


def test_a_failed_append_fails_every_file_that_waited_for_it(tmp_path: Path) -> None:
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    paths = _files(tmp_path, 3)
    results = IngestService(_DownLog(), blobs).store_part10_files(paths, source=STOW)  # type: ignore[arg-type]
    assert all(isinstance(r, Unavailable) for r in results)
    blobs.close()


def test_the_disk_floor_refuses_the_whole_request(tmp_path: Path) -> None:
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    service = IngestService(_DownLog(), blobs, min_free_bytes=10, free_bytes=lambda: 1)  # type: ignore[arg-type]
    with pytest.raises(Unavailable):
        service.store_part10_files(_files(tmp_path, 2), source=STOW)
    blobs.close()


def test_a_bare_data_set_naming_another_instance_is_refused_before_a_blob(
    tmp_path: Path,
) -> None:
    """What a C-STORE on the storage link relies on (api.dimse.store)."""
    log = open_event_log(f"sqlite://{tmp_path / 'log.db'}")
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(encode(make_ct(rows=8, cols=8), False, True) or b"")  # Explicit VR LE
    try:
        with pytest.raises(Invalid) as refused:
            IngestService(log, blobs).store_dataset_file(
                bare,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                source=STOW,
                expected_sop_instance_uid="1.2.3.4",
            )
        assert refused.value.status == 0xA900
        assert list(blobs.keys()) == [] and log.end() in ({}, {0: 0})
    finally:
        log.close()
        blobs.close()


@pytest.mark.parametrize("matching_meta", [True, False])
def test_a_received_data_set_becomes_the_blob_whole_or_copied(
    tmp_path: Path, matching_meta: bool
) -> None:
    """A received file that already starts with the blob's File Meta is kept as
    the blob itself (same inode, no copy); one whose command named another SOP
    class is copied behind the right File Meta. The blob is the same either way."""
    log = open_event_log(f"sqlite://{tmp_path / 'log.db'}")
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    ct = make_ct(rows=8, cols=8)
    sop_class = ct.SOPClassUID if matching_meta else "1.2.840.10008.5.1.4.1.1.7"
    meta = build_file_meta(sop_class, ct.SOPInstanceUID, "1.2.840.10008.1.2.1")
    ct_meta = build_file_meta(ct.SOPClassUID, ct.SOPInstanceUID, "1.2.840.10008.1.2.1")
    dataset = encode(ct, False, True) or b""
    received = tmp_path / "cstore-received.dcm"
    received.write_bytes(meta + dataset)
    inode = received.stat().st_ino
    try:
        outcome = IngestService(log, blobs).store_dataset_file(
            received,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            source=STOW,
            offset=len(meta),
            expected_sop_instance_uid=ct.SOPInstanceUID,
            dataset_sha256=hashlib.sha256(dataset).hexdigest(),
            received=True,
        )
        kept = tmp_path / "blobs" / outcome.event.blob.key
        assert kept.read_bytes() == ct_meta + dataset
        assert (kept.stat().st_ino == inode) is matching_meta
        assert outcome.event.blob.sha256 == hashlib.sha256(dataset).hexdigest()
    finally:
        log.close()
        blobs.close()


def test_a_file_not_received_is_never_linked(tmp_path: Path) -> None:
    """An imported file that happens to be exactly a blob is copied: the user's
    file must not become the archive's."""
    log = open_event_log(f"sqlite://{tmp_path / 'log.db'}")
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    ct = make_ct(rows=8, cols=8)
    meta = build_file_meta(ct.SOPClassUID, ct.SOPInstanceUID, "1.2.840.10008.1.2.1")
    received = tmp_path / "import.dcm"
    received.write_bytes(meta + (encode(ct, False, True) or b""))
    try:
        outcome = IngestService(log, blobs).store_part10_file(received, source=STOW)
        kept = tmp_path / "blobs" / outcome.event.blob.key
        assert kept.read_bytes() == received.read_bytes()
        assert kept.stat().st_ino != received.stat().st_ino
    finally:
        log.close()
        blobs.close()
