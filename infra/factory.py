"""URL -> adapter. Nothing is opened until one of these functions is called.

| port            | embedded              | scale-out                      |
|-----------------|-----------------------|--------------------------------|
| EventLog        | sqlite:///abs/log.db  | kafka://broker:9092/topic      |
| BlobStore       | file:///abs/blobs     | s3://bucket/prefix?endpoint_url=… |
| ProjectionStore | chdb:///abs/index     | http(s)://host:8123/db         |

Adapters are imported on demand so an ingest-only worker never loads the
ClickHouse driver.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from infra.errors import Invalid
from infra.ports import BlobStore, EventLog, ProjectionStore


def open_event_log(url: str) -> EventLog:
    scheme = _scheme(url, "event log")
    if scheme == "sqlite":
        from infra.sqlite_log import SqliteEventLog

        return SqliteEventLog(_local_path(url, "event log"))
    if scheme == "kafka":
        from infra.kafka_log import KafkaEventLog

        return KafkaEventLog.from_url(url)
    raise Invalid(f"event log URL {url!r}: expected sqlite:///abs/path or kafka://broker/topic")


def open_blob_store(url: str) -> BlobStore:
    scheme = _scheme(url, "blob store")
    if scheme == "file":
        from infra.fs_blobs import FileBlobStore

        return FileBlobStore(_local_path(url, "blob store"))
    if scheme == "s3":
        from infra.s3_blobs import S3BlobStore

        return S3BlobStore.from_url(url)
    raise Invalid(f"blob store URL {url!r}: expected file:///abs/path or s3://bucket/prefix")


def open_projection_store(url: str) -> ProjectionStore:
    """Open the index and bring its schema up to date (migrations)."""
    scheme = _scheme(url, "index")
    if scheme == "chdb":
        _local_path(url, "index")
    elif scheme not in ("http", "https"):
        raise Invalid(f"index URL {url!r}: expected chdb:///abs/path or http(s)://host:8123/db")
    from infra.clickhouse import ClickHouseStore
    from infra.migrations import migrate

    store = ClickHouseStore(url)
    try:
        migrate(store)
    except BaseException:
        store.close()
        raise
    return store


def _scheme(url: str, what: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise Invalid(f"{what} URL {url!r} has no scheme (e.g. sqlite:///abs/path)")
    return urlsplit(url).scheme.lower()


def _local_path(url: str, what: str) -> Path:
    """The absolute path of scheme:///abs/path; a host part means a relative path."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc or not path.startswith("/"):
        raise Invalid(
            f"{what} URL {url!r} needs an absolute path: {parts.scheme}:///abs/path (three slashes)"
        )
    if parts.query or parts.fragment:
        raise Invalid(f"{what} URL {url!r} takes no query or fragment")
    return Path(path)
