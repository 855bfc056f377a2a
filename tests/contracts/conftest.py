"""Adapters the port contracts run against.

Each port's suite takes its backend from one fixture parametrised by adapter
name. A new adapter joins by adding its name to the list and a branch that
yields a fresh URL (event log, blob store) or an open store (projection store)
for it: the suites themselves do not change.

A ClickHouse server joins the projection-store suite when
CHRONICLE_TEST_CLICKHOUSE_URL (http://host:8123/db) is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog, ProjectionStore

EVENT_LOG_ADAPTERS = ["sqlite", "kafka"]
BLOB_STORE_ADAPTERS = ["file", "s3"]
PROJECTION_STORE_ADAPTERS = ["chdb"] + (
    ["clickhouse-http"] if os.environ.get("CHRONICLE_TEST_CLICKHOUSE_URL") else []
)


@pytest.fixture(params=EVENT_LOG_ADAPTERS)
def event_log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming a fresh, empty log that stays the same for the whole test."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'log.db'}"
    if request.param == "kafka":
        from tests.tansu import fresh_topic_url

        return fresh_topic_url(request)
    raise AssertionError(f"no event log adapter {request.param}")


@pytest.fixture
def open_log(event_log_url: str) -> Iterator[Callable[[], EventLog]]:
    """Opens (and at teardown closes) handles on this test's log; call it again to reopen."""
    opened: list[EventLog] = []

    def opener() -> EventLog:
        log = open_event_log(event_log_url)
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


@pytest.fixture
def event_log(open_log: Callable[[], EventLog]) -> EventLog:
    return open_log()


@pytest.fixture(params=BLOB_STORE_ADAPTERS)
def blob_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'blobs'}"
    if request.param == "s3":
        from tests.seaweed import shared_seaweed

        return shared_seaweed(request.config).url()
    raise AssertionError(f"no blob store adapter {request.param}")


@pytest.fixture
def blob_store(blob_store_url: str) -> Iterator[BlobStore]:
    store = open_blob_store(blob_store_url)
    yield store
    store.close()


@pytest.fixture(scope="module", params=PROJECTION_STORE_ADAPTERS)
def projection_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProjectionStore]:
    """One store per module (chDB start-up costs ~1 s); tests use unique table names.

    Module scope, not session: chDB serves one data directory per process, so
    the store must be closed before another test module opens its own.
    """
    if request.param == "chdb":
        url = f"chdb://{tmp_path_factory.mktemp('index')}"
    elif request.param == "clickhouse-http":
        url = os.environ["CHRONICLE_TEST_CLICKHOUSE_URL"]
    else:
        raise AssertionError(f"no projection store adapter {request.param}")
    store = open_projection_store(url)
    yield store
    store.close()


@pytest.fixture
def table_name(projection_store: ProjectionStore) -> Iterator[str]:
    """A name no other test uses, so tests share one store; its tables are dropped after.

    A test may create several tables whose names start with this one.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    leftovers = projection_store.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND startsWith(name, {prefix:String})",
        {"prefix": name},
    )
    for (table,) in leftovers:
        projection_store.command(f"DROP TABLE IF EXISTS `{table}` SYNC")
