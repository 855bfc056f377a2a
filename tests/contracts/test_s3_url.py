"""The s3:// blob store URL and the S3 adapter's error translation (no server needed)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from infra.errors import ChronicleError, Invalid, NotFound, Unavailable
from infra.factory import open_blob_store
from infra.s3_blobs import S3BlobStore, _translate
from infra.s3_options import MiB, S3Options, parse_s3_url


def test_every_option_comes_from_the_url() -> None:
    options = parse_s3_url(
        "s3://archive-eu/site-a/blobs?endpoint_url=http://127.0.0.1:8333&region=eu-west-1"
        "&sse=aws:kms&sse_kms_key_id=alias/chronicle&multipart_threshold=64MiB&part_size=16MiB"
        "&addressing_style=path&conditional_put=false&connect_timeout=1.5&read_timeout=3"
        "&max_attempts=4&max_pool_connections=64"
    )
    assert options == S3Options(
        bucket="archive-eu",
        prefix="site-a/blobs",
        endpoint_url="http://127.0.0.1:8333",
        region="eu-west-1",
        sse="aws:kms",
        sse_kms_key_id="alias/chronicle",
        multipart_threshold=64 * MiB,
        part_size=16 * MiB,
        addressing_style="path",
        conditional_put=False,
        connect_timeout=1.5,
        read_timeout=3.0,
        max_attempts=4,
        max_pool_connections=64,
    )
    assert options.object_key("instances/ab/cd/x.dcm") == "site-a/blobs/instances/ab/cd/x.dcm"
    assert options.put_extras() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/chronicle",
    }


def test_defaults_are_conditional_8_mib_parts_and_fail_well_under_a_dimse_timeout() -> None:
    options = parse_s3_url("s3://archive")
    assert (options.prefix, options.endpoint_url, options.sse) == ("", None, None)
    assert options.conditional_put is True
    assert options.multipart_threshold == options.part_size == 8 * MiB
    assert options.object_key("k") == "k"
    # 3 attempts x (1 s connect + 1 s waiting for 100 Continue + 3 s read) +
    # back-off 1 + 2 s: a frozen store is reported in 18 s at worst (DIMSE
    # timeouts are 30 s and up), a refused connection in milliseconds.
    assert (options.connect_timeout, options.read_timeout, options.max_attempts) == (1, 3, 3)
    assert options.unavailable_within == pytest.approx(18.0)
    assert parse_s3_url("s3://archive?multipart_threshold=1048576").multipart_threshold == MiB


def test_the_factory_opens_the_s3_adapter_without_touching_the_network() -> None:
    store = open_blob_store("s3://archive/p?endpoint_url=http://127.0.0.1:9&region=us-east-1")
    assert isinstance(store, S3BlobStore)
    assert store.options.prefix == "p"
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "s3:///no-bucket",
        "s3://Upper_Case/x",
        "s3://ok-bucket/../up",
        "s3://ok-bucket/p?sse=DES",
        "s3://ok-bucket/p?sse_kms_key_id=k",  # a KMS key without sse=aws:kms
        "s3://ok-bucket/p?part_size=1MiB",  # below S3's 5 MiB minimum
        "s3://ok-bucket/p?part_size=6GiB",
        "s3://ok-bucket/p?multipart_threshold=lots",
        "s3://ok-bucket/p?conditional_put=maybe",
        "s3://ok-bucket/p?read_timeout=0",
        "s3://ok-bucket/p?max_attempts=0",
        "s3://ok-bucket/p?addressing_style=sideways",
        "s3://ok-bucket/p?endpoint=http://typo",  # unknown options are refused
        "s3://ok-bucket/p#fragment",
    ],
)
def test_bad_urls_are_invalid(url: str) -> None:
    with pytest.raises(Invalid):
        parse_s3_url(url)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("NoSuchKey", 404), NotFound),
        (client_error("404", 404), NotFound),  # HEAD has no body, so no code
        (client_error("InvalidRange", 416), Invalid),
        (client_error("BadDigest", 400), Unavailable),
        (client_error("XAmzContentSHA256Mismatch", 400), Unavailable),
        (client_error("NoSuchBucket", 404), Unavailable),
        (client_error("AccessDenied", 403), Unavailable),
        (client_error("SlowDown", 503), Unavailable),
        (client_error("InternalError", 500), Unavailable),
        (client_error("NotImplemented", 501), Unavailable),
        (EndpointConnectionError(endpoint_url="http://s3"), Unavailable),
        (ConnectTimeoutError(endpoint_url="http://s3"), Unavailable),
        (ReadTimeoutError(endpoint_url="http://s3"), Unavailable),
        (NoCredentialsError(), Unavailable),
    ],
)
def test_driver_errors_become_the_error_tree(
    error: Exception, expected: type[ChronicleError]
) -> None:
    translated = _translate(error, "instances/ab/cd/x.dcm")
    assert type(translated) is expected
    assert "instances/ab/cd/x.dcm" in str(translated)


def test_a_store_without_conditional_writes_is_told_how_to_configure_the_fallback() -> None:
    message = str(_translate(client_error("NotImplemented", 501), "k"))
    assert "conditional_put=false" in message
