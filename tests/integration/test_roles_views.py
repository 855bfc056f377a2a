"""Roles inside one process: DIMSE services per role, and an api without a projector.

- `start_dimse(storage=..., query=...)` on a real listener: an ingest node
  offers Verification + Storage only (storage-only associations still go to
  storage_link); an api node offers Q/R, retrieve and commitment and answers
  C-STORE 0x0122 without ingesting.
- An api process on a ClickHouse server has no projector of its own: its
  read-your-writes follows the projector's checkpoint rows. Shown here on a
  real chDB index with a real Projector writing them, which another process
  would do on a server: fresh answers while it keeps up, Warning 299 once the
  bound runs out, fresh again when it resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from api.app import create_app
from api.dimse.server import start_dimse
from api.roles import CheckpointWatcher
from api.wiring import Archive, open_archive
from infra.settings import Settings, load_settings
from projections import runner
from schemas.events import Source
from tests.integration.dimse_harness import ScriptedIngest, StandInArchive
from tests.support import make_ct, write_part10

QUERY_SERVICES = {
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StorageCommitmentPushModel,
}
LAGGING = '299 chronicle "projection lagging"'
STOW = Source("STOW", calling_ae="", called_ae="", peer="127.0.0.1:1")


def dimse_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, dimse_port=0, accept_any_caller=True)


def associate(port: int, *contexts: str) -> object:
    ae = AE(ae_title="HARNESS")
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title="CHRONICLE")


def test_an_ingest_listener_offers_storage_and_verification_only(tmp_path: Path) -> None:
    archive = StandInArchive(dimse_settings(tmp_path), ScriptedIngest())
    dimse = start_dimse(archive, storage=True, query=False)
    try:
        offered = {str(cx.abstract_syntax) for cx in dimse.ae.supported_contexts}
        assert Verification in offered and CTImageStorage in offered
        assert not QUERY_SERVICES & offered
        assert dimse.server.router is not None  # type: ignore[attr-defined]
        assoc = associate(dimse.port, CTImageStorage)
        assert assoc.send_c_store(make_ct(rows=8, cols=8)).Status == 0x0000  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        assert len(archive.ingest.calls) == 1
    finally:
        dimse.stop()


def test_an_api_listener_serves_queries_and_refuses_stores(tmp_path: Path) -> None:
    archive = StandInArchive(dimse_settings(tmp_path), ScriptedIngest())
    dimse = start_dimse(archive, storage=False, query=True)
    try:
        offered = {str(cx.abstract_syntax) for cx in dimse.ae.supported_contexts}
        assert offered >= QUERY_SERVICES and Verification in offered
        # Query-only associations may take the fast link; storage never does here.
        assert dimse.server.router._store is None  # type: ignore[attr-defined]
        assoc = associate(dimse.port, CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}  # type: ignore[attr-defined]
        assert StudyRootQueryRetrieveInformationModelFind in accepted
        status = assoc.send_c_store(make_ct(rows=8, cols=8))  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        assert status.Status == 0x0122
        assert "ingest node" in status.ErrorComment
        assert archive.ingest.calls == []
    finally:
        dimse.stop()


def test_a_listener_needs_some_service(tmp_path: Path) -> None:
    archive = StandInArchive(dimse_settings(tmp_path), ScriptedIngest())
    with pytest.raises(ValueError, match="storage, query or both"):
        start_dimse(archive, storage=False, query=False)


# ---------------------------------------------------------------- an api without a projector


@pytest.fixture
def owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    """The process that projects (on a server, another process; here the same chDB).

    A lone projector on chDB stores its checkpoint row at most once a second
    (nobody else reads it there); on a server it stores one per batch, as here."""
    monkeypatch.setattr(runner, "CHECKPOINT_SECONDS", 0.0)
    settings = load_settings(
        {"data_dir": str(tmp_path), "min_free_bytes": 0, "read_wait_seconds": 0.5}, environ={}
    )
    opened = open_archive(settings)
    yield opened
    opened.close()


def api_only(owner: Archive) -> Archive:
    watcher = CheckpointWatcher(owner.index)
    return Archive(
        owner.settings,
        owner.log,
        owner.blobs,
        owner.index,
        owner.ingest,
        watcher,
        roles=frozenset({"api"}),
    )


def store(owner: Archive, tmp_path: Path, study: str) -> str:
    ds = make_ct(study, rows=8, cols=8)
    owner.ingest.store_part10_file(
        write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), source=STOW
    )
    return str(ds.SOPInstanceUID)


def instances(client: TestClient, study: str) -> tuple[set[str], str | None]:
    response = client.get(f"/dicomweb/studies/{study}/instances")
    assert response.status_code in (200, 204), response.text
    found = response.json() if response.status_code == 200 else []
    return {item["00080018"]["Value"][0] for item in found}, response.headers.get("Warning")


def test_an_api_without_a_projector_follows_the_checkpoint_rows(
    owner: Archive, tmp_path: Path
) -> None:
    study = make_ct().StudyInstanceUID
    view = api_only(owner)
    client = TestClient(create_app(view))
    first = store(owner, tmp_path, study)
    assert instances(client, study) == ({first}, None)
    assert client.get("/healthz").json()["roles"] == ["api"]

    owner.projector.stop()
    second = store(owner, tmp_path, study)
    assert instances(client, study) == ({first}, LAGGING)
    assert client.get("/healthz").json()["projection_lag"] == 1

    owner.projector.start()
    assert instances(client, study) == ({first, second}, None)
    assert client.post("/dicomweb/studies").status_code == 404  # no STOW on an api node
