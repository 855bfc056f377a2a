"""Roles: settings precedence, the chDB rule, routes and health per role, the views.

Pure: stand-in log, index and projector; no server, no chDB.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from api import commands, workers
from api.app import create_app
from api.cli import build_parser, settings_from
from api.roles import (
    CheckpointWatcher,
    NoFeed,
    NoIndex,
    check_roles,
    describe,
    front_end_roles,
    needs_index,
)
from api.wiring import Archive, open_archive
from infra.errors import Invalid, Unavailable
from infra.settings import ROLES, Settings, load_settings

CHDB = "chdb:///var/lib/chronicle/index"
SERVER = "http://clickhouse:8123/chronicle"


# ---------------------------------------------------------------- settings


def test_roles_default_to_all_three() -> None:
    assert load_settings({}, environ={}).roles == ["ingest", "projector", "api"]


def test_flag_beats_environment_beats_config_file(tmp_path: Path) -> None:
    config = tmp_path / "chronicle.toml"
    config.write_text('roles = ["projector", "api"]\n')
    env = {"CHRONICLE_CONFIG": str(config)}
    assert load_settings({}, environ=env).roles == ["projector", "api"]
    env["CHRONICLE_ROLES"] = "ingest"
    assert load_settings({}, environ=env).roles == ["ingest"]
    assert load_settings({"roles": ["api,projector"]}, environ=env).roles == ["projector", "api"]


def test_role_flag_takes_commas_and_repeats() -> None:
    args = build_parser().parse_args(["serve", "--role", "api", "--role", "ingest,projector"])
    assert settings_from(args).roles == ["ingest", "projector", "api"]
    args = build_parser().parse_args(["serve"])
    assert args.roles is None  # not given: the environment or file decides


@given(st.lists(st.sampled_from(ROLES), min_size=1), st.sampled_from([",", ", ", " ,"]))
def test_any_subset_in_any_order_is_canonical(roles: list[str], separator: str) -> None:
    settings = load_settings({}, environ={"CHRONICLE_ROLES": separator.join(roles)})
    assert settings.roles == [role for role in ROLES if role in roles]


@pytest.mark.parametrize("bad", ["ingester", "api,query", " , "])
def test_unknown_or_no_roles_are_bad_settings(bad: str) -> None:
    with pytest.raises(ValueError, match="role"):
        load_settings({}, environ={"CHRONICLE_ROLES": bad})


# ---------------------------------------------------------------- the chDB rule


@pytest.mark.parametrize(
    ("roles", "fix"),
    [
        ("api", "--role projector,api"),
        ("projector", "--role projector,api"),
        ("ingest,api", "--role ingest,projector,api"),
        ("ingest,projector", "--role ingest,projector,api"),
    ],
)
def test_api_and_projector_apart_on_chdb_are_refused_naming_the_fix(roles: str, fix: str) -> None:
    settings = Settings(roles=roles, index_url=CHDB)  # type: ignore[arg-type]
    with pytest.raises(Invalid) as refused:
        check_roles(settings)
    message = str(refused.value)
    assert f"Run {fix}" in message
    assert "chDB allows one process per directory" in message
    assert "--index-url http://host:8123/db" in message


@pytest.mark.parametrize("roles", ["ingest", "projector,api", "ingest,projector,api"])
def test_splits_chdb_can_serve_pass(roles: str) -> None:
    check_roles(Settings(roles=roles, index_url=CHDB))  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(ROLES), min_size=1))
def test_every_split_passes_on_a_clickhouse_server(roles: list[str]) -> None:
    check_roles(Settings(roles=roles, index_url=SERVER))


def test_front_end_roles_and_index_needs() -> None:
    assert front_end_roles(ROLES) == {"ingest", "api"}
    assert front_end_roles(["projector"]) == frozenset()
    assert not needs_index(["ingest"])
    assert needs_index(["api"]) and needs_index(["projector"])
    assert describe({"api", "ingest"}) == "ingest,api"


# ---------------------------------------------------------------- worker planning


def test_worker_planning_per_role(caplog: pytest.LogCaptureFixture) -> None:
    projector_only = Settings(roles="projector", index_url=SERVER, workers=4)  # type: ignore[arg-type]
    assert workers.worker_count(projector_only) == 0
    assert "ignored" in caplog.text
    ingest = Settings(roles="ingest", workers=3)  # type: ignore[arg-type]
    assert workers.worker_count(ingest) == 2
    assert not workers.needs_owner_endpoint(ingest)  # its workers need no index at all
    assert workers.needs_owner_endpoint(Settings(workers=2))  # api on chDB: via the owner
    api_on_server = Settings(roles="api", index_url=SERVER)  # type: ignore[arg-type]
    assert not workers.needs_owner_endpoint(api_on_server)  # straight to the server
    assert workers.is_worker({workers.WORKER_ENV: "1"})
    assert workers.is_worker({workers.OWNER_URL_ENV: "http://127.0.0.1:1"})
    assert not workers.is_worker({})


def test_an_ingest_worker_opens_no_index(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "roles": ["ingest"]}, environ={})
    archive = workers.open_worker_archive(settings, None, "")
    try:
        assert archive.roles == {"ingest"}
        assert isinstance(archive.index, NoIndex) and isinstance(archive.projector, NoFeed)
        assert not (tmp_path / "index").exists()
    finally:
        archive.close()


def test_an_ingest_archive_opens_log_and_blobs_only(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "roles": ["ingest"]}, environ={})
    archive = open_archive(settings, roles=settings.roles)
    try:
        assert archive.roles == {"ingest"} and archive.commitment is None
        assert isinstance(archive.index, NoIndex) and isinstance(archive.projector, NoFeed)
        assert not (tmp_path / "index").exists()
    finally:
        archive.close()


# ---------------------------------------------------------------- stand-ins


class StubLog:
    def __init__(self, end: dict[int, int] | Exception) -> None:
        self._end = end

    def end(self) -> dict[int, int]:
        if isinstance(self._end, Exception):
            raise self._end
        return dict(self._end)

    def close(self) -> None:
        pass


class StubFeed(NoFeed):
    skipped = 2
    last_error = "boom"

    def checkpoint(self) -> dict[int, int]:
        return {0: 5}


def archive_with(roles: str, end: dict[int, int] | Exception | None = None) -> Archive:
    role_set = frozenset(roles.split(","))
    feed = StubFeed() if role_set & {"api", "projector"} else NoFeed()
    log = StubLog({0: 7} if end is None else end)
    settings = Settings(roles=roles, index_url=SERVER)  # type: ignore[arg-type]
    return Archive(settings, log, None, NoIndex(), None, feed, roles=role_set)  # type: ignore[arg-type]


def test_an_ingest_process_reports_roles_and_log_end_only() -> None:
    client = TestClient(create_app(archive_with("ingest")))
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "roles": ["ingest"], "log_end": {"0": 7}}
    metrics = client.get("/metrics").text
    assert 'chronicle_role{role="ingest"} 1.0' in metrics
    assert "projection" not in metrics


def test_a_projector_process_reports_its_lag_and_serves_nothing_else() -> None:
    client = TestClient(create_app(archive_with("projector")))
    health = client.get("/healthz").json()
    assert health["roles"] == ["projector"]
    assert health["checkpoint"] == {"0": 5} and health["projection_lag"] == 2
    assert health["projection_error"] == "boom" and health["skipped_events"] == 2
    assert "chronicle_projection_lag_events 2.0" in client.get("/metrics").text
    for method, path, role in [
        ("GET", "/dicomweb/studies", "api"),
        ("GET", "/wado?requestType=WADO", "api"),
        ("POST", "/dicomweb/studies", "ingest"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert f"runs roles projector; an {role} node serves this" in response.json()["detail"]


def test_health_says_unavailable_with_the_roles_when_the_log_is_down() -> None:
    client = TestClient(create_app(archive_with("ingest", Unavailable("broker down"))))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "roles": ["ingest"],
        "detail": "broker down",
    }


def route_paths(roles: str) -> set[tuple[str, str]]:
    """(METHOD, path) of every documented route (the elsewhere 404s are not)."""
    paths = create_app(archive_with(roles)).openapi()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def test_routes_follow_the_roles() -> None:
    qido, stow, wado_uri = (
        ("GET", "/dicomweb/studies"),
        ("POST", "/dicomweb/studies"),
        ("GET", "/wado"),
    )
    frames = (
        "GET",
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}",
    )
    everything = route_paths("ingest,projector,api")
    assert {qido, stow, wado_uri, frames} <= everything
    ingest = route_paths("ingest")
    assert stow in ingest and not {qido, wado_uri, frames} & ingest
    api = route_paths("api")
    assert {qido, wado_uri, frames} <= api and stow not in api
    assert ("GET", "/healthz") in route_paths("projector")
    assert not {qido, stow, wado_uri} & route_paths("projector")


def test_startup_line_names_roles_and_services() -> None:
    line = commands.startup_line(archive_with("ingest"), "owner", with_dimse=True)
    assert line.startswith("Chronicle owner (pid ")
    assert "roles ingest: DICOMweb http://127.0.0.1:8080/dicomweb, DIMSE CHRONICLE on" in line
    line = commands.startup_line(archive_with("projector"), "owner", with_dimse=False)
    assert line.endswith("roles projector: health http://127.0.0.1:8080")


def test_a_projector_alone_starts_no_dimse() -> None:
    assert commands._start_dimse(archive_with("projector")) is None


# ---------------------------------------------------------------- projection views


class CheckpointRows:
    """The `checkpoint` table as another process's projector leaves it."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int]] = []
        self.queries = 0

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[int, int]]:
        assert "FROM checkpoint FINAL" in sql and parameters == {"name": "levels"}
        self.queries += 1
        return list(self.rows)


def test_the_watcher_reads_fresh_checkpoint_rows_every_time() -> None:
    rows = CheckpointRows()
    watcher = CheckpointWatcher(rows)  # type: ignore[arg-type]
    assert watcher.checkpoint() == {}
    rows.rows = [(0, 4), (1, 2)]
    assert watcher.checkpoint() == {0: 4, 1: 2}
    assert watcher.wait({0: 4, 1: 2}, timeout=0.0)
    assert not watcher.wait({0: 5}, timeout=0.1)
    assert rows.queries >= 4, "polled while waiting, never cached"


def test_the_watcher_waits_until_the_projector_catches_up() -> None:
    rows = CheckpointRows()
    calls = iter([[], [], [(0, 3)]])
    rows.query = lambda sql, parameters=None: next(calls, [(0, 3)])  # type: ignore[method-assign]
    watcher = CheckpointWatcher(rows, poll_seconds=0.001)  # type: ignore[arg-type]
    assert watcher.wait({0: 3}, timeout=5.0)
    with pytest.raises(Unavailable):
        CheckpointWatcher(rows, patience=0.05, poll_seconds=0.01).run_until({0: 9})  # type: ignore[arg-type]


def test_stand_ins_fail_loudly_and_open_nothing() -> None:
    for call in (
        lambda: NoIndex().query("SELECT 1"),
        lambda: NoIndex().query_dicts("SELECT 1"),
        lambda: NoIndex().insert("t", [], []),
        lambda: NoIndex().command("SELECT 1"),
        lambda: NoFeed().checkpoint(),
        lambda: NoFeed().wait({0: 1}, 1.0),
    ):
        with pytest.raises(Unavailable, match="--role api or projector"):
            call()
    NoIndex().close()
    NoFeed().stop()
