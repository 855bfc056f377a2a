"""Ingest on the S3 blob store: content-addressed keys, frames by range, and a large
instance in parts through ingest's own streaming reader (S3 down: test_s3_faults.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from infra.factory import open_blob_store
from infra.s3_blobs import S3BlobStore
from infra.sqlite_log import SqliteEventLog
from ingest.service import IngestService
from schemas.events import Source
from tests.seaweed import SeaweedFS, seaweed  # noqa: F401  (the session's store, a fixture)
from tests.support import make_ct, write_part10

DIMSE = Source("DIMSE", calling_ae="MODALITY", called_ae="CHRONICLE", peer="127.0.0.1:5000")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteEventLog]:
    opened = SqliteEventLog(tmp_path / "log.db")
    yield opened
    opened.close()


def open_s3(seaweed: SeaweedFS, **options: str) -> S3BlobStore:  # noqa: F811
    store = open_blob_store(seaweed.url(**options))
    assert isinstance(store, S3BlobStore)
    return store


def test_an_instance_lands_under_its_dataset_hash_and_its_frames_read_by_range(
    seaweed: SeaweedFS,  # noqa: F811
    log: SqliteEventLog,
) -> None:
    blobs = open_s3(seaweed)
    ingest = IngestService(log, blobs)
    path = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # type: ignore[arg-type]
    outcome = ingest.store_part10_file(path, source=DIMSE)
    ref = outcome.event.blob
    assert ref.key.startswith("instances/") and ref.key.endswith(f"/{ref.sha256}.dcm")
    assert blobs.size(ref.key) == ref.size
    with blobs.get(ref.key) as stream:
        stored = stream.read()
    assert hashlib.sha256(stored[ref.dataset_offset :]).hexdigest() == ref.sha256
    original = pydicom.dcmread(path)
    expected = list(generate_frames(original.PixelData, number_of_frames=2))
    frames = outcome.event.frames
    assert frames is not None and len(frames) == 2
    for ranges, frame in zip(frames, expected, strict=True):
        assert b"".join(blobs.get_range(ref.key, o, n) for o, n in ranges) == frame
    again = ingest.store_part10_file(path, source=DIMSE)
    assert (outcome.duplicate, again.duplicate) == (False, True)
    assert list(blobs.keys("instances/")) == [ref.key]
    blobs.close()


def test_a_large_instance_goes_up_in_parts_through_ingest_streaming_reader(
    seaweed: SeaweedFS,  # noqa: F811
    log: SqliteEventLog,
    tmp_path: Path,
) -> None:
    blobs = open_s3(seaweed, multipart_threshold="1MiB", part_size="5MiB")
    parts: list[int] = []
    blobs.client.meta.events.register(
        "before-parameter-build.s3.UploadPart",
        lambda params, **_: parts.append(params["PartNumber"]),
    )
    path = write_part10(make_ct(rows=2048, cols=1536), tmp_path / "big.dcm")  # 6 MiB of pixels
    outcome = IngestService(log, blobs).store_part10_file(path, source=DIMSE)
    ref = outcome.event.blob
    assert parts == [1, 2]
    assert blobs.size(ref.key) == ref.size > 6 * 1024 * 1024
    [[(offset, length)]] = outcome.event.frames or [[]]
    pixels = pydicom.dcmread(path).PixelData
    assert blobs.get_range(ref.key, offset + length - 100, 100) == pixels[-100:]
    blobs.close()
