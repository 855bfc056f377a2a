"""The S3 blob store's URL: every option lives in it, credentials never do.

    s3://BUCKET[/PREFIX]?endpoint_url=http://127.0.0.1:8333&region=eu-west-1
        &sse=AES256|aws:kms|aws:kms:dsse&sse_kms_key_id=ARN
        &multipart_threshold=8MiB&part_size=8MiB&addressing_style=auto|path|virtual
        &conditional_put=true|false&connect_timeout=1&read_timeout=3&max_attempts=3
        &max_pool_connections=32

Credentials come from botocore's standard chain (environment AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and the shared
~/.aws/credentials and ~/.aws/config files, web identity, ECS container and EC2
instance roles), so no secret ever sits in a settings file or a log line.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.loaders import create_loader

from infra.errors import Invalid
from infra.fs_blobs import check_key

MiB = 1024 * 1024
#: S3's own limits: every part but the last is at least 5 MiB; 10 000 parts at most.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
_SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
_ADDRESSING = ("auto", "path", "virtual")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SIZE = re.compile(r"(\d+)\s*(|B|KiB|MiB|GiB)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": MiB, "gib": 1024 * MiB}
_BOOLEAN = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
#: botocore's standard mode backs off rand(0,1) x base x 2^i, base 1 s when throttled.
_THROTTLED_BACKOFF_BASE = 1.0
#: botocore sends uploads with `Expect: 100-continue` (a store may answer 412
#: before the body is sent) and waits this long for the 100 before sending anyway.
_EXPECT_CONTINUE_WAIT = 1.0

AddressingStyle = Literal["auto", "path", "virtual"]


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    #: Prepended to every key with a '/' ("" for the bucket's root).
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    #: Objects larger than this go up in parts.
    multipart_threshold: int = 8 * MiB
    part_size: int = 8 * MiB
    addressing_style: AddressingStyle = "auto"
    #: If-None-Match: * on PUT and on CompleteMultipartUpload; false = HEAD then PUT.
    conditional_put: bool = True
    connect_timeout: float = 1.0
    read_timeout: float = 3.0
    max_attempts: int = 3
    max_pool_connections: int = 32

    @property
    def unavailable_within(self) -> float:
        """Seconds after which one request to a dead or frozen store has raised Unavailable.

        Each attempt waits at most connect_timeout, then (uploads) botocore's
        fixed 1 s for `100 Continue`, then read_timeout for the send or the
        answer; between attempts botocore sleeps at most 2^i s (its throttling
        back-off, the worst). Defaults: 3 x (1 + 1 + 3) + 1 + 2 = 18 s.
        """
        attempts = self.max_attempts
        backoff = sum(_THROTTLED_BACKOFF_BASE * (1 << i) for i in range(attempts - 1))
        per_attempt = self.connect_timeout + _EXPECT_CONTINUE_WAIT + self.read_timeout
        return attempts * per_attempt + backoff

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_extras(self) -> dict[str, str]:
        """Server-side encryption arguments for PutObject / CreateMultipartUpload."""
        extras: dict[str, str] = {}
        if self.sse:
            extras["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            extras["SSEKMSKeyId"] = self.sse_kms_key_id
        return extras


def parse_s3_url(url: str) -> S3Options:
    """S3Options from an s3:// URL; unknown options are refused (a typo must not pass)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise Invalid(f"blob store URL {url!r}: expected s3://bucket/prefix?option=value")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise Invalid(f"blob store URL {url!r}: {bucket!r} is not an S3 bucket name")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        check_key(prefix)
    if parts.fragment:
        raise Invalid(f"blob store URL {url!r} takes no fragment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    try:
        return _build(bucket, prefix, options)
    except Invalid as exc:
        raise Invalid(f"blob store URL {url!r}: {exc}") from None


def _build(bucket: str, prefix: str, options: dict[str, str]) -> S3Options:
    take = options.pop
    parsed = S3Options(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=take("endpoint_url", None) or None,
        region=take("region", None) or None,
        sse=_choice(take("sse", None), _SSE_MODES, "sse"),
        sse_kms_key_id=take("sse_kms_key_id", None) or None,
        multipart_threshold=_size(take("multipart_threshold", "8MiB"), "multipart_threshold"),
        part_size=_size(take("part_size", "8MiB"), "part_size"),
        addressing_style=cast(
            AddressingStyle, _choice(take("addressing_style", "auto"), _ADDRESSING, "addressing")
        ),
        conditional_put=_boolean(take("conditional_put", "true"), "conditional_put"),
        connect_timeout=_seconds(take("connect_timeout", "1"), "connect_timeout"),
        read_timeout=_seconds(take("read_timeout", "3"), "read_timeout"),
        max_attempts=_count(take("max_attempts", "3"), "max_attempts", 1, 10),
        max_pool_connections=_count(take("max_pool_connections", "32"), "pool", 1, 1024),
    )
    if options:
        raise Invalid(f"unknown option(s) {', '.join(sorted(options))}")
    if parsed.sse_kms_key_id and not (parsed.sse or "").startswith("aws:kms"):
        raise Invalid("sse_kms_key_id needs sse=aws:kms or sse=aws:kms:dsse")
    if not MIN_PART_SIZE <= parsed.part_size <= MAX_PART_SIZE:
        raise Invalid(f"part_size must lie between 5 MiB and 5 GiB, not {parsed.part_size}")
    if parsed.multipart_threshold > MAX_PART_SIZE:
        raise Invalid("multipart_threshold must be at most 5 GiB (the largest single PUT)")
    return parsed


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise Invalid(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _size(value: str, name: str) -> int:
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise Invalid(f"{name} {value!r} is not a size (bytes, or with KiB / MiB / GiB)")
    return int(match[1]) * _UNITS[match[2].lower()]


def _boolean(value: str, name: str) -> bool:
    try:
        return _BOOLEAN[value.strip().lower()]
    except KeyError:
        raise Invalid(f"{name} must be true or false, not {value!r}") from None


def _seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 300:
        raise Invalid(f"{name} must be a number of seconds in (0, 300], not {value!r}")
    return seconds


def _count(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise Invalid(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


_LOADER_LOCK = threading.Lock()
_loaders: list[Any] = []


def _session() -> boto3.session.Session:
    # A fresh session resolves credentials anew (the chain may have changed);
    # the shared loader keeps the parsed service model (~0.15 s per client).
    if not _loaders:
        _loaders.append(create_loader())
    core = botocore.session.get_session()
    core.register_component("data_loader", _loaders[0])
    return boto3.session.Session(botocore_session=core)


def make_client(options: S3Options) -> BaseClient:
    """A thread-safe S3 client: standard retries, short timeouts, SHA-256 checksums."""
    with _LOADER_LOCK:  # the shared loader's caches are not made for concurrent writers
        return _client(_session(), options)


def _client(session: boto3.session.Session, options: S3Options) -> BaseClient:
    # Signing needs a region even on a store that ignores it (SeaweedFS, MinIO).
    region = options.region or session.region_name or "us-east-1"
    config = Config(
        region_name=region,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"mode": "standard", "total_max_attempts": options.max_attempts},
        max_pool_connections=options.max_pool_connections,
        s3={"addressing_style": options.addressing_style},
        # We send our own SHA-256 on every upload; no CRC32 on top of it. Reads
        # are validated whenever the store returns a whole-object checksum.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_supported",
    )
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)
