"""URL -> adapter: the supported schemes, and clear refusals for the rest."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.clickhouse import ClickHouseStore
from infra.errors import Invalid, Unavailable
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.fs_blobs import FileBlobStore
from infra.migrations import available
from infra.settings import Settings
from infra.sqlite_log import SqliteEventLog


def test_sqlite_urls_open_the_sqlite_log(tmp_path: Path) -> None:
    log = open_event_log(f"sqlite://{tmp_path / 'data' / 'log.db'}")
    try:
        assert isinstance(log, SqliteEventLog)
        assert log.path == tmp_path / "data" / "log.db"
        assert log.append([("1.2.3", b"x")]) == [(0, 0)]
    finally:
        log.close()


def test_file_urls_open_the_file_blob_store(tmp_path: Path) -> None:
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}")
    assert isinstance(blobs, FileBlobStore) and blobs.root == tmp_path / "blobs"
    assert blobs.put_if_absent("k", b"v")


def test_percent_escapes_in_paths_are_decoded(tmp_path: Path) -> None:
    blobs = open_blob_store(f"file://{tmp_path}/with%20space")
    assert isinstance(blobs, FileBlobStore) and blobs.root == tmp_path / "with space"


def test_chdb_urls_open_a_migrated_index(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'index'}"
    index = open_projection_store(url)
    try:
        assert isinstance(index, ClickHouseStore)
        assert index.table_exists("instance") and index.table_exists("checkpoint")
    finally:
        index.close()
    again = open_projection_store(url)  # reopening applies nothing twice
    try:
        shipped = len(available())
        assert again.query("SELECT count() FROM schema_migrations FINAL") == [(shipped,)]
    finally:
        again.close()


def test_the_default_settings_urls_are_all_accepted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    log = open_event_log(settings.log_url)
    log.close()
    open_blob_store(settings.blob_url).close()
    assert settings.index_url.startswith("chdb:///")


def test_an_unreachable_clickhouse_server_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Unavailable):
        open_projection_store(f"http://127.0.0.1:{port}/chronicle")


@pytest.mark.parametrize(
    ("opener", "url"),
    [
        (open_event_log, "sqlite://data/log.db"),
        (open_event_log, "sqlite:relative.db"),
        (open_event_log, "/abs/log.db"),
        (open_event_log, "postgres://db/x"),
        (open_event_log, "sqlite:///abs/log.db?mode=ro"),
        (open_blob_store, "file://blobs"),
        (open_blob_store, "ftp://host/blobs"),
        (open_projection_store, "chdb://index"),
        (open_projection_store, "chdb:relative"),
        (open_projection_store, "mysql://host/db"),
    ],
)
def test_unknown_schemes_and_relative_paths_are_invalid(opener: object, url: str) -> None:
    with pytest.raises(Invalid):
        opener(url)  # type: ignore[operator]
