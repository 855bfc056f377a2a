"""The S3 adapter on a real S3 store (SeaweedFS): what the port contract cannot see.

Conditional writes deciding races, multipart uploads streamed part by part,
SHA-256 checksums the store verifies, server-side encryption headers, the
HEAD-then-PUT fallback, and driver errors translated at the boundary.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

import boto3
import pydicom
import pytest
import urllib3
from botocore.awsrequest import AWSResponse
from pydicom.data import get_testdata_file

from infra.errors import Invalid, Unavailable
from infra.factory import open_blob_store
from infra.s3_blobs import S3BlobStore
from infra.s3_options import parse_s3_url
from tests.seaweed import ACCESS_KEY, SeaweedFS, seaweed  # noqa: F401  (the session's store, a fixture)
from tests.support import free_port

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: the cheapest way to get several parts


@pytest.fixture
def open_s3(seaweed: SeaweedFS) -> Iterator[Callable[..., S3BlobStore]]:  # noqa: F811
    """Opens S3 stores on a fresh prefix of the session's SeaweedFS, with extra URL options."""
    opened: list[S3BlobStore] = []

    def opener(**options: str) -> S3BlobStore:
        store = open_blob_store(seaweed.url(**options))
        assert isinstance(store, S3BlobStore)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def capture_headers(store: S3BlobStore, operation: str) -> list[dict[str, str]]:
    """The HTTP headers of every `operation` request the store sends from now on."""
    seen: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        seen.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
        )

    store.client.meta.events.register(f"before-send.s3.{operation}", record)
    return seen


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# Source bytes are a function of their position: a prime-length random pattern,
# repeated, so any range of any object is known without keeping the object.
_PATTERN = random.Random(20240501).randbytes(65521)


def expected(offset: int, length: int) -> bytes:
    start = offset % len(_PATTERN)
    repeats = (start + length) // len(_PATTERN) + 1
    return (_PATTERN * repeats)[start : start + length]


class ShortReads(io.RawIOBase):
    """A non-seekable source made on the fly, answering at most 64 KiB per read, like a socket."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.size = size
        self.sent = 0
        self.fail_at = fail_at
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.fail_at is not None and self.sent >= self.fail_at:
            raise ConnectionResetError("peer went away mid-dataset")
        n = min(len(buffer), self.size - self.sent, 64 * 1024)
        chunk = expected(self.sent, n)
        buffer[:n] = chunk
        self.digest.update(chunk)
        self.sent += n
        return n


def stream(source: ShortReads) -> BinaryIO:
    """A raw stream is a binary stream as far as the adapter is concerned (as in ingest)."""
    return cast(BinaryIO, source)


def race(writers: int, put: Callable[[], bool]) -> list[bool]:
    """Run `put` in `writers` threads released at the same instant; their answers."""
    results: list[bool] = []
    start = threading.Barrier(writers)

    def run() -> None:
        start.wait()
        results.append(put())

    threads = [threading.Thread(target=run) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def pending_uploads(store: S3BlobStore) -> list[str]:
    listed = store.client.list_multipart_uploads(
        Bucket=store.options.bucket, Prefix=store.options.prefix + "/"
    )
    return [upload["Key"] for upload in listed.get("Uploads", [])]


class TestConditionalPut:
    def test_two_writers_of_one_key_exactly_one_is_told_it_wrote(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3()
        for round_ in range(15):
            key, data = f"race/{round_}", os.urandom(64 * 1024)
            results = race(2, functools.partial(store.put_if_absent, key, data))
            assert sorted(results) == [False, True], f"round {round_}"
            assert store.get_range(f"race/{round_}", 0, len(data)) == data

    def test_the_write_is_conditional_and_carries_its_sha256(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3()
        headers = capture_headers(store, "PutObject")
        data = b"DICM" + os.urandom(5000)
        assert store.put_if_absent("k", data) is True
        assert store.put_if_absent("k", b"other") is False
        assert [h["if-none-match"] for h in headers] == ["*", "*"]
        assert headers[0]["x-amz-checksum-sha256"] == sha256_b64(data)
        stored = store.client.head_object(
            Bucket=store.options.bucket, Key=store.options.object_key("k"), ChecksumMode="ENABLED"
        )
        assert stored["ChecksumSHA256"] == sha256_b64(data)

    def test_head_then_put_fallback_sends_no_condition(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(conditional_put="false", multipart_threshold="1MiB", part_size="5MiB")
        headers = capture_headers(store, "PutObject")
        completes = capture_headers(store, "CompleteMultipartUpload")
        assert store.put_if_absent("small", b"abc") is True
        assert store.put_if_absent("small", b"abc") is False
        assert store.put_if_absent("big", stream(ShortReads(PART + 100))) is True
        assert store.put_if_absent("big", stream(ShortReads(PART + 100))) is False
        assert len(headers) == 1 and "if-none-match" not in headers[0]
        assert len(completes) == 1 and "if-none-match" not in completes[0]
        assert store.size("big") == PART + 100


class TestChecksums:
    def test_bytes_changed_after_hashing_are_refused_and_nothing_is_stored(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3()

        def corrupt(params: dict[str, Any], **_: Any) -> None:
            # After the adapter computed its SHA-256: the bytes on the wire differ.
            body = bytearray(params["Body"])
            body[10] ^= 0xFF
            params["Body"] = bytes(body)

        store.client.meta.events.register("before-parameter-build.s3.PutObject", corrupt)
        with pytest.raises(Unavailable, match="SHA-256"):
            store.put_if_absent("damaged", b"DICM" + os.urandom(4000))
        assert not store.exists("damaged")

    def test_a_damaged_part_is_refused_and_its_upload_aborted(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")

        def corrupt(params: dict[str, Any], **_: Any) -> None:
            if params["PartNumber"] == 2:
                params["Body"] = params["Body"][:-1] + b"?"

        store.client.meta.events.register("before-parameter-build.s3.UploadPart", corrupt)
        with pytest.raises(Unavailable, match="SHA-256"):
            store.put_if_absent("damaged/big", stream(ShortReads(2 * PART + 10)))
        assert not store.exists("damaged/big")
        assert pending_uploads(store) == []

    def test_a_whole_blob_damaged_on_the_way_back_is_refused_not_served(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3()
        data = b"DICM" + os.urandom(3000)
        store.put_if_absent("served", data)
        network = urllib3.PoolManager()

        def damage(request: Any, **_: Any) -> AWSResponse:
            # Fetch for real, then flip one bit of the body: the store's
            # x-amz-checksum-sha256 header no longer matches what arrives.
            real = network.request(
                request.method, request.url, headers=dict(request.headers), body=request.body
            )
            body = bytearray(real.data)
            body[100] ^= 1
            raw = urllib3.HTTPResponse(
                body=io.BytesIO(bytes(body)),
                headers=real.headers,
                status=real.status,
                preload_content=False,
            )
            return AWSResponse(request.url, real.status, real.headers, raw)

        store.client.meta.events.register("before-send.s3.GetObject", damage)
        with pytest.raises(Unavailable, match="checksum"), store.get("served") as blob:
            blob.read()
        network.clear()


class TestMultipart:
    def test_a_large_stream_goes_up_in_parts_and_reads_back_across_their_edges(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")
        parts = capture_headers(store, "UploadPart")
        size = 2 * PART + 12345
        source = ShortReads(size)
        assert store.put_if_absent("wsi/slide.dcm", stream(source)) is True
        assert [h["x-amz-checksum-sha256"] != "" for h in parts] == [True, True, True]
        assert store.size("wsi/slide.dcm") == size
        with store.get("wsi/slide.dcm") as blob:
            assert hashlib.sha256(blob.read()).digest() == source.digest.digest()
        for edge in (PART, 2 * PART):
            for offset, length in (
                (edge - 7, 14),
                (edge - 1, 1),
                (edge, 3),
                (edge - 70000, 80000),
            ):
                got = store.get_range("wsi/slide.dcm", offset, length)
                assert got == expected(offset, length), (offset, length)
        with pytest.raises(Invalid):
            store.get_range("wsi/slide.dcm", size - 5, 6)
        assert pending_uploads(store) == []

    def test_the_upload_holds_about_one_part_in_memory_not_the_object(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")
        tracemalloc.start()
        try:
            assert store.put_if_absent("huge", stream(ShortReads(6 * PART))) is True
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 3 * PART, f"peak {peak / MiB:.1f} MiB for a {6 * PART / MiB:.0f} MiB object"
        assert store.size("huge") == 6 * PART

    def test_concurrent_large_writers_one_completes_the_other_hears_it_existed(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")
        completes = capture_headers(store, "CompleteMultipartUpload")
        results = race(2, lambda: store.put_if_absent("tomo", stream(ShortReads(PART + 1))))
        # SeaweedFS checks If-None-Match on CompleteMultipartUpload but not atomically:
        # two completes racing on a loaded machine may both succeed (AWS S3 answers one
        # with 412). Keys are content addressed, so both wrote the same bytes.
        assert True in results
        assert store.size("tomo") == PART + 1
        assert all(h["if-none-match"] == "*" for h in completes)
        assert pending_uploads(store) == []

    def test_a_source_failing_midway_is_the_callers_error_and_leaves_nothing(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")
        with pytest.raises(ConnectionResetError):
            store.put_if_absent("cut", stream(ShortReads(3 * PART, fail_at=PART + 10)))
        assert not store.exists("cut")
        assert pending_uploads(store) == []


class TestReads:
    def test_a_whole_blob_stream_seeks_like_a_file(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(multipart_threshold="1MiB", part_size="5MiB")
        size = PART + 4321
        store.put_if_absent("seek", stream(ShortReads(size)))
        gets = capture_headers(store, "GetObject")
        with store.get("seek") as blob:
            assert blob.seekable() and blob.read(10) == expected(0, 10)
            blob.seek(PART - 5)  # across the part edge, by a ranged GET from there
            assert blob.tell() == PART - 5
            assert blob.read(10) == expected(PART - 5, 10)
            blob.seek(-3, io.SEEK_CUR)
            assert blob.read(6) == expected(PART + 2, 6)
            blob.seek(-4, io.SEEK_END)
            assert blob.read() == expected(size - 4, 4)
            assert blob.read() == b""
            blob.seek(0)
            assert (
                hashlib.sha256(blob.read()).digest() == hashlib.sha256(expected(0, size)).digest()
            )
        assert gets[0].get("range") is None
        assert [h["range"] for h in gets[1:3]] == [f"bytes={PART - 5}-", f"bytes={size - 4}-"]

    def test_pydicom_reads_a_blob_stream_directly(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3()
        path = get_testdata_file("CT_small.dcm")
        assert isinstance(path, str)
        with open(path, "rb") as source:
            store.put_if_absent("ct", source)
        with store.get("ct") as blob:
            dataset = pydicom.dcmread(blob)
        assert dataset.pixel_array.shape == pydicom.dcmread(path).pixel_array.shape
        assert dataset.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID


class TestOptions:
    def test_server_side_encryption_is_asked_for_on_every_write(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        store = open_s3(sse="AES256")
        assert store.put_if_absent("enc", b"secret pixels") is True
        head = store.client.head_object(
            Bucket=store.options.bucket, Key=store.options.object_key("enc")
        )
        assert head["ServerSideEncryption"] == "AES256"

    def test_kms_encryption_headers_are_sent_and_a_refusal_is_unavailable(
        self, open_s3: Callable[..., S3BlobStore]
    ) -> None:
        key_id = "arn:aws:kms:eu-west-1:111122223333:key/chronicle"
        store = open_s3(sse="aws:kms", sse_kms_key_id=key_id, max_attempts="1")
        headers = capture_headers(store, "PutObject")
        # SeaweedFS here has no KMS configured and refuses: that must not pass as stored.
        with pytest.raises(Unavailable):
            store.put_if_absent("kms", b"x")
        assert headers[0]["x-amz-server-side-encryption"] == "aws:kms"
        assert headers[0]["x-amz-server-side-encryption-aws-kms-key-id"] == key_id


class TestErrors:
    def test_a_store_nobody_listens_on_is_unavailable_at_once(self) -> None:
        url = f"s3://chronicle/x?endpoint_url=http://127.0.0.1:{free_port()}&max_attempts=2"
        store = open_blob_store(url)
        began = time.monotonic()
        for call in (
            lambda: store.put_if_absent("a", b"x"),
            lambda: store.get("a"),
            lambda: store.exists("a"),
            lambda: list(store.keys()),
        ):
            with pytest.raises(Unavailable):
                call()
        assert time.monotonic() - began < 3
        store.close()

    def test_wrong_credentials_are_unavailable(self, seaweed: SeaweedFS) -> None:  # noqa: F811
        options = parse_s3_url(seaweed.url(max_attempts="1"))
        impostor = boto3.client(
            "s3",
            endpoint_url=seaweed.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key="not-the-secret",
            region_name="us-east-1",
        )
        store = S3BlobStore(options, impostor)
        with pytest.raises(Unavailable, match="HTTP 403"):
            store.put_if_absent("a", b"x")
        store.close()
