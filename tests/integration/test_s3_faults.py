"""S3 down (frozen with SIGSTOP) -> Unavailable within a bounded time; back (SIGCONT) -> works.

A frozen store is the hard case: the kernel still accepts connections on its
behalf, so only the adapter's timeouts stand between a caller and a hang. The
server is this module's own, so freezing it disturbs no other test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.errors import Unavailable
from infra.factory import open_blob_store
from infra.s3_blobs import S3BlobStore
from infra.sqlite_log import SqliteEventLog
from ingest.service import IngestService
from schemas.events import Source
from tests.seaweed import SeaweedFS, private_seaweed  # noqa: F401  (a fixture)
from tests.support import make_ct, write_part10

MiB = 1024 * 1024
# Short enough for a quick test; production defaults are checked beside the URL options.
DIMSE = Source("DIMSE", calling_ae="MODALITY", called_ae="CHRONICLE")
FAST = {"connect_timeout": "0.5", "read_timeout": "0.5", "max_attempts": "2"}


@pytest.fixture
def store(private_seaweed: SeaweedFS) -> Iterator[S3BlobStore]:  # noqa: F811
    opened = open_blob_store(private_seaweed.url(**FAST, multipart_threshold="1MiB"))
    assert isinstance(opened, S3BlobStore)
    yield opened
    private_seaweed.resume()  # a failed test must not leave the store frozen
    opened.close()


def timed_failure(call: Callable[[], Any]) -> float:
    began = time.monotonic()
    with pytest.raises(Unavailable):
        call()
    return time.monotonic() - began


def test_a_frozen_store_is_unavailable_in_bounded_time_and_serves_again_when_thawed(
    store: S3BlobStore,
    private_seaweed: SeaweedFS,  # noqa: F811
) -> None:
    bound = store.options.unavailable_within
    assert bound == pytest.approx(5.0)  # 2 x (0.5 + 1 + 0.5) + 1
    assert store.put_if_absent("before", b"kept before the freeze") is True
    private_seaweed.pause()
    for call in (
        lambda: store.put_if_absent("during", b"sent while frozen"),
        lambda: store.get_range("before", 0, 4),
        lambda: store.exists("before"),
    ):
        elapsed = timed_failure(call)
        # It waited for the store (read timeout), then gave up within the bound.
        assert store.options.read_timeout <= elapsed <= bound
    private_seaweed.resume()
    assert store.get_range("before", 0, 4) == b"kept"
    # The frozen PUT may have landed after the thaw (never acknowledged: an
    # orphan at worst); either way the blob can be put again and read.
    assert store.put_if_absent("during", b"sent while frozen") in (True, False)
    assert store.get_range("during", 5, 6) == b"while "
    assert store.put_if_absent("after", b"new") is True


def test_a_store_frozen_mid_multipart_upload_fails_bounded_and_a_retry_completes(
    store: S3BlobStore,
    private_seaweed: SeaweedFS,  # noqa: F811
) -> None:
    frozen: list[bool] = []

    def freeze_after_first_part(**_: Any) -> None:
        if not frozen:
            frozen.append(True)
            private_seaweed.pause()

    store.client.meta.events.register("after-call.s3.UploadPart", freeze_after_first_part)
    data = bytes(range(256)) * (11 * MiB // 256)  # three 5 MiB parts
    elapsed = timed_failure(lambda: store.put_if_absent("wsi", data))
    assert elapsed <= store.options.unavailable_within
    assert frozen == [True]
    private_seaweed.resume()
    assert store.put_if_absent("wsi", data) is True
    assert store.size("wsi") == len(data)
    assert store.get_range("wsi", 5 * MiB - 2, 4) == data[5 * MiB - 2 : 5 * MiB + 2]


def test_with_s3_frozen_ingest_fails_in_bounded_time_and_appends_no_event(
    store: S3BlobStore,
    private_seaweed: SeaweedFS,  # noqa: F811
    tmp_path: Path,
) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    ingest = IngestService(log, store)
    path = write_part10(make_ct(rows=64, cols=64), tmp_path / "ct.dcm")
    private_seaweed.pause()
    elapsed = timed_failure(lambda: ingest.store_part10_file(path, source=DIMSE))
    # The store's bound, plus what ingest does before it writes (parse) on a busy machine.
    assert elapsed <= store.options.unavailable_within + 2.0
    assert log.end() in ({}, {0: 0})  # nothing acknowledged, no event without its blob
    private_seaweed.resume()
    outcome = ingest.store_part10_file(path, source=DIMSE)
    assert log.end() == {0: outcome.position[1] + 1}
    assert store.size(outcome.event.blob.key) == outcome.event.blob.size
    log.close()
