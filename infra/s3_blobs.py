"""The scale-out BlobStore: objects in an S3 bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW).

Put-if-absent is one conditional write: PutObject (or, above the multipart
threshold, CompleteMultipartUpload) with `If-None-Match: *`. The store answers
412 PreconditionFailed when the key exists, which is our False; it decides
races between writers itself, so exactly one of them gets True. Stores without
conditional writes take `conditional_put=false`: HEAD, then an unconditional
PUT. Two writers racing there may both write and both get True, which costs a
second upload of the same bytes and nothing else: keys are content addressed.

Objects above `multipart_threshold` (8 MiB) are streamed up in `part_size`
parts, one part in memory at a time, and made visible by the conditional
CompleteMultipartUpload; a failed upload is aborted. Every upload carries its
SHA-256 (`x-amz-checksum-sha256`, per part for multipart uploads), so the store
refuses bytes damaged on the way (BadDigest) and nothing is acknowledged on the
strength of them; whole-blob reads are checked against the store's SHA-256 when
it has one for the whole object (single-part uploads). A 200 from S3 is the
durability point of DESIGN.md. Uploads go with botocore's `Expect:
100-continue`, so a store may answer 412 before a duplicate's body is sent
(SeaweedFS 4.48 asks for the body first).

`get` returns a seekable stream (a ranged GET from wherever a seek lands), as
callers that hand it to pydicom or skip the File Meta need; frames and bulk
data are ranged GETs.

Errors leave as `infra.errors`: a missing key is NotFound, a range past the
end Invalid, everything the store or the network does wrong Unavailable,
within `S3Options.unavailable_within` seconds (bounded attempts, short
timeouts). A retried PUT whose first attempt did land answers 412 the second
time, so the caller may see False for a blob it wrote itself: the blob is
there either way, which is all False promises.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from infra.errors import ChronicleError, Invalid, NotFound, Unavailable
from infra.fs_blobs import check_key
from infra.s3_options import MAX_PARTS, S3Options, make_client, parse_s3_url
from infra.s3_streams import (
    CHUNK,
    STREAM_ERRORS,
    ObjectReader,
    SourceFailed,
    SourceReader,
    cut_parts,
    read_all,
)

_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._/-]*")
_MISSING = {"NoSuchKey", "NotFound", "404"}
_DIGEST = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
#: Real S3 answers 409 to a conditional write racing another in flight: try again.
_CONFLICT_RETRIES = 5


class S3BlobStore:
    """`infra.ports.BlobStore` over one bucket and key prefix."""

    def __init__(self, options: S3Options, client: Any = None) -> None:
        self.options = options
        #: The botocore client (thread-safe); tests register event hooks on it.
        self.client: Any = client if client is not None else make_client(options)

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        return cls(parse_s3_url(url))

    def _name(self, key: str) -> str:
        return self.options.object_key(check_key(key))

    # -- write ------------------------------------------------------------------

    def put_if_absent(self, key: str, source: BinaryIO | bytes) -> bool:
        name = self._name(key)
        if not self.options.conditional_put and self._exists(name, key):
            return False
        reader = SourceReader(source)
        threshold = self.options.multipart_threshold
        try:
            head = reader.read_up_to(threshold + 1)
            if len(head) <= threshold:
                return self._put_object(name, key, head)
            # Do not send gigabytes only to hear 412 at the end.
            if self.options.conditional_put and self._exists(name, key):
                return False
            return self._put_parts(name, key, head, reader)
        except SourceFailed as failed:
            raise failed.error from None

    def put_file_if_absent(self, key: str, path: Path) -> bool:
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below, errors translated
        except FileNotFoundError as exc:
            raise Invalid(f"no file {path} to keep as blob {key}") from exc
        with source:
            return self.put_if_absent(key, source)

    def _put_object(self, name: str, key: str, body: bytes) -> bool:
        arguments = self._write_arguments(name)
        arguments.update(Body=body, ChecksumSHA256=_sha256_b64(body), **self.options.put_extras())
        return self._write(lambda: self.client.put_object(**arguments), key)

    def _put_parts(self, name: str, key: str, head: bytes, reader: SourceReader) -> bool:
        created = self._call(
            lambda: self.client.create_multipart_upload(
                Bucket=self.options.bucket,
                Key=name,
                ChecksumAlgorithm="SHA256",
                **self.options.put_extras(),
            ),
            key,
        )
        upload_id: str = created["UploadId"]
        abort = True
        try:
            parts = self._upload_parts(name, key, upload_id, head, reader)
            arguments = self._write_arguments(name)
            arguments.update(UploadId=upload_id, MultipartUpload={"Parts": parts})
            stored = self._write(lambda: self.client.complete_multipart_upload(**arguments), key)
            abort = not stored  # 412: our parts are garbage now
            return stored
        except Unavailable as exc:
            # Abort only a store that answered; an unreachable one would make the
            # abort wait out another timeout. The bucket's lifecycle rule
            # (AbortIncompleteMultipartUpload) reaps what is left.
            abort = isinstance(exc.__cause__, ClientError)
            raise
        finally:
            if abort:
                self._abort(name, upload_id)

    def _upload_parts(
        self, name: str, key: str, upload_id: str, head: bytes, reader: SourceReader
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for number, body in enumerate(cut_parts(head, reader, self.options.part_size), start=1):
            if number > MAX_PARTS:
                raise Invalid(
                    f"blob {key} needs more than {MAX_PARTS} parts of {self.options.part_size}"
                    " bytes: raise part_size in the blob store URL",
                    status=0xA700,
                )
            checksum = _sha256_b64(body)
            upload_part = functools.partial(
                self.client.upload_part,
                Bucket=self.options.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
            uploaded = self._call(upload_part, key)
            parts.append(
                {"PartNumber": number, "ETag": uploaded["ETag"], "ChecksumSHA256": checksum}
            )
        return parts

    def _abort(self, name: str, upload_id: str) -> None:
        with contextlib.suppress(*STREAM_ERRORS):
            self.client.abort_multipart_upload(
                Bucket=self.options.bucket, Key=name, UploadId=upload_id
            )

    def _write_arguments(self, name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {"Bucket": self.options.bucket, "Key": name}
        if self.options.conditional_put:
            arguments["IfNoneMatch"] = "*"
        return arguments

    def _write(self, call: Callable[[], object], key: str) -> bool:
        """True when `call` wrote, False when the store says the key already exists."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                call()
                return True
            except ClientError as exc:
                code, status = _code(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(random.random() * 0.05 * 2**attempt)
                    continue
                raise _translate(exc, key) from exc
            except BotoCoreError as exc:
                raise _translate(exc, key) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- read -------------------------------------------------------------------

    def get(self, key: str) -> BinaryIO:
        name = self._name(key)
        response = self._call(
            lambda: self.client.get_object(
                Bucket=self.options.bucket, Key=name, ChecksumMode="ENABLED"
            ),
            key,
        )
        size = int(response["ContentLength"])

        def open_at(offset: int) -> Any:
            ranged = self._call(
                lambda: self.client.get_object(
                    Bucket=self.options.bucket, Key=name, Range=f"bytes={offset}-"
                ),
                key,
            )
            return ranged["Body"]

        return io.BufferedReader(ObjectReader(response["Body"], size, open_at, key), CHUNK)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise Invalid(f"byte range {offset}+{length} of blob {key} is negative")
        name = self._name(key)
        if length == 0:
            size = self.size(key)
            if offset > size:
                raise Invalid(f"byte range {offset}+0 is past the end of {key} ({size})")
            return b""
        last = offset + length - 1
        try:
            response = self._call(
                lambda: self.client.get_object(
                    Bucket=self.options.bucket, Key=name, Range=f"bytes={offset}-{last}"
                ),
                key,
            )
        except Invalid:
            raise Invalid(f"byte range {offset}+{length} is past the end of {key}") from None
        data = read_all(response["Body"], key)
        if "ContentRange" not in response:
            data = data[offset : offset + length]  # a store that ignored Range sent it all
        if len(data) != length:
            raise Invalid(f"byte range {offset}+{length} is past the end of {key}")
        return data

    def exists(self, key: str) -> bool:
        return self._exists(self._name(key), key)

    def _exists(self, name: str, key: str) -> bool:
        try:
            self._head(name, key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(self._name(key), key)["ContentLength"])

    def _head(self, name: str, key: str) -> Any:
        return self._call(
            lambda: self.client.head_object(Bucket=self.options.bucket, Key=name), key
        )

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with `prefix`, in S3's (byte-wise sorted) listing order."""
        if (
            not _PREFIX_CHARS.fullmatch(prefix)
            or prefix.startswith("/")
            or ".." in prefix.split("/")
        ):
            raise Invalid(f"blob key prefix {prefix!r} is not a valid key prefix")
        root = f"{self.options.prefix}/" if self.options.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.options.bucket, Prefix=root + prefix)
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"][len(root) :]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"{prefix}*") from exc

    def close(self) -> None:
        self.client.close()

    # -- errors -----------------------------------------------------------------

    def _call(self, call: Callable[[], Any], key: str) -> Any:
        try:
            return call()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc


def _code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _translate(exc: Exception, key: str) -> ChronicleError:
    if not isinstance(exc, ClientError):
        # Connection refused or reset, timeouts, no credentials, a checksum
        # that did not match on the way back: the store cannot serve us now.
        return Unavailable(f"blob store: {key}: {exc}")
    code, status = _code(exc)
    if code in _MISSING:
        return NotFound(f"blob {key} not found")
    if code == "InvalidRange" or status == 416:
        return Invalid(f"byte range of blob {key} is not satisfiable")
    if code in _DIGEST:
        return Unavailable(
            f"blob store refused {key}: its SHA-256 did not match the bytes received"
        )
    if code == "NotImplemented" or status == 501:
        return Unavailable(
            f"blob store: {key}: the store lacks a feature ({code}); a store without"
            " conditional writes needs conditional_put=false in the blob store URL"
        )
    return Unavailable(f"blob store: {key}: {code or 'error'} (HTTP {status})")


def _sha256_b64(body: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
