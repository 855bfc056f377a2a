"""The BlobStore contract: every adapter (see conftest.BLOB_STORE_ADAPTERS) must pass it."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.errors import Invalid, NotFound
from infra.factory import open_blob_store
from infra.ports import BlobStore


def key_for(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"sha256/{digest[:2]}/{digest}"


class TestBlobStoreContract:
    def test_put_then_get_size_exists(self, blob_store: BlobStore) -> None:
        data = b"DICM" + os.urandom(3000)
        key = key_for(data)
        assert not blob_store.exists(key)
        assert blob_store.put_if_absent(key, data) is True
        assert blob_store.exists(key)
        assert blob_store.size(key) == len(data)
        with blob_store.get(key) as stream:
            assert stream.read() == data

    def test_second_put_is_a_no_op_that_keeps_the_first_bytes(self, blob_store: BlobStore) -> None:
        blob_store.put_if_absent("k/first", b"original")
        assert blob_store.put_if_absent("k/first", b"something else") is False
        assert blob_store.put_if_absent("k/first", io.BytesIO(b"a stream")) is False
        with blob_store.get("k/first") as stream:
            assert stream.read() == b"original"

    def test_a_stream_larger_than_a_chunk_is_stored_exactly(self, blob_store: BlobStore) -> None:
        data = os.urandom(2 * 1024 * 1024 + 12345)
        assert blob_store.put_if_absent("big/blob", io.BytesIO(data)) is True
        assert blob_store.size("big/blob") == len(data)
        with blob_store.get("big/blob") as stream:
            assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(data).digest()

    def test_a_finished_file_is_kept_and_survives_its_callers_name(
        self, blob_store: BlobStore, tmp_path: Path
    ) -> None:
        data = os.urandom(300 * 1024)
        received = tmp_path / "received.dcm"
        received.write_bytes(data)
        assert blob_store.put_file_if_absent("files/one", received) is True
        received.unlink()  # the caller's name goes; the blob stays
        assert blob_store.size("files/one") == len(data)
        with blob_store.get("files/one") as stream:
            assert stream.read() == data

    def test_a_file_for_a_kept_key_is_a_no_op(self, blob_store: BlobStore, tmp_path: Path) -> None:
        blob_store.put_if_absent("files/kept", b"original")
        other = tmp_path / "other"
        other.write_bytes(b"something else")
        assert blob_store.put_file_if_absent("files/kept", other) is False
        with blob_store.get("files/kept") as stream:
            assert stream.read() == b"original"
        assert other.read_bytes() == b"something else"

    def test_a_missing_file_is_invalid_and_keeps_nothing(
        self, blob_store: BlobStore, tmp_path: Path
    ) -> None:
        with pytest.raises(Invalid):
            blob_store.put_file_if_absent("files/none", tmp_path / "absent")
        assert not blob_store.exists("files/none")

    def test_an_empty_blob_is_a_blob(self, blob_store: BlobStore) -> None:
        assert blob_store.put_if_absent("empty", b"") is True
        assert blob_store.size("empty") == 0
        assert blob_store.get_range("empty", 0, 0) == b""

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(offset=st.integers(0, 5000), length=st.integers(0, 5000))
    def test_range_reads_return_exactly_the_range(
        self, blob_store: BlobStore, offset: int, length: int
    ) -> None:
        data = bytes(range(256)) * 20  # 5120 bytes, every offset distinguishable
        blob_store.put_if_absent("ranges", data)
        if offset + length <= len(data):
            assert blob_store.get_range("ranges", offset, length) == data[offset : offset + length]
        else:
            with pytest.raises(Invalid):
                blob_store.get_range("ranges", offset, length)

    def test_negative_ranges_are_invalid(self, blob_store: BlobStore) -> None:
        blob_store.put_if_absent("r", b"0123456789")
        with pytest.raises(Invalid):
            blob_store.get_range("r", -1, 2)
        with pytest.raises(Invalid):
            blob_store.get_range("r", 0, -2)

    def test_missing_blobs_are_not_found(self, blob_store: BlobStore) -> None:
        assert not blob_store.exists("no/such/blob")
        with pytest.raises(NotFound):
            blob_store.get("no/such/blob")
        with pytest.raises(NotFound):
            blob_store.size("no/such/blob")
        with pytest.raises(NotFound):
            blob_store.get_range("no/such/blob", 0, 1)

    def test_keys_lists_every_blob_under_a_prefix(self, blob_store: BlobStore) -> None:
        for key in ["sha256/ab/ab01", "sha256/ab/ab02", "sha256/cd/cd01", "sidecar/x"]:
            blob_store.put_if_absent(key, key.encode())
        assert sorted(blob_store.keys()) == [
            "sha256/ab/ab01",
            "sha256/ab/ab02",
            "sha256/cd/cd01",
            "sidecar/x",
        ]
        assert sorted(blob_store.keys("sha256/ab")) == ["sha256/ab/ab01", "sha256/ab/ab02"]
        assert sorted(blob_store.keys("sha256/c")) == ["sha256/cd/cd01"]
        assert list(blob_store.keys("nothing/")) == []

    @pytest.mark.parametrize(
        "key",
        [
            "",
            "/abs/key",
            "../escape",
            "a/../../b",
            "a//b",
            "a/",
            "sp ace",
            "semi;colon",
            "é",
            "a\\b",
        ],
    )
    def test_bad_keys_are_invalid(self, blob_store: BlobStore, key: str) -> None:
        with pytest.raises(Invalid):
            blob_store.put_if_absent(key, b"x")
        with pytest.raises(Invalid):
            blob_store.get(key)

    def test_concurrent_puts_of_one_key_store_it_once(self, blob_store: BlobStore) -> None:
        results: list[bool] = []
        lock = threading.Lock()
        data = os.urandom(256 * 1024)

        def put() -> None:
            stored = blob_store.put_if_absent("race/key", data)
            with lock:
                results.append(stored)

        workers = [threading.Thread(target=put) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(results) == [False] * 7 + [True]
        with blob_store.get("race/key") as stream:
            assert stream.read() == data
        assert list(blob_store.keys("race/")) == ["race/key"]

    def test_stored_blobs_survive_reopening(self, blob_store_url: str) -> None:
        first = open_blob_store(blob_store_url)
        first.put_if_absent("kept/blob", b"durable bytes")
        first.close()
        again = open_blob_store(blob_store_url)
        try:
            assert again.get_range("kept/blob", 8, 5) == b"bytes"
            assert again.put_if_absent("kept/blob", b"other") is False
        finally:
            again.close()

    def test_a_whole_blob_stream_is_seekable(self, blob_store: BlobStore) -> None:
        data = bytes(range(256)) * 64
        blob_store.put_if_absent("seekable", data)
        with blob_store.get("seekable") as stream:
            assert stream.seekable()
            stream.seek(1000)
            assert stream.tell() == 1000
            assert stream.read(16) == data[1000:1016]
            stream.seek(10)
            assert stream.read() == data[10:]
