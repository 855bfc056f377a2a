"""Shared stand-ins for the DIMSE integration tests: a scripted archive and a server.

The server runs around a stand-in archive (real Settings, a scripted ingest,
the query engine monkeypatched per test) so each status mapping can be
forced; end-to-end tests against the real archive live with the lead's suites.
Test modules bind the fixtures to module-level names so pytest collects them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.filereader import read_dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from api.dimse.server import DimseServer, start_dimse
from infra.errors import Invalid
from infra.settings import Settings
from schemas.events import Source
from tests.support import free_port

CALLING = "SCU"


@dataclass
class ScriptedIngest:
    """Records each call; `behaviour` decides what a store does."""

    calls: list[tuple[Path, Source, bytes]] = field(default_factory=list)
    behaviour: Callable[[Path], Any] = lambda path: SimpleNamespace(duplicate=False)

    #: The transfer syntax of each bare data set (storage associations, storage_link).
    syntaxes: list[str | None] = field(default_factory=list)

    def store_part10_file(self, path: Path, *, source: Source) -> Any:
        self.calls.append((path, source, path.read_bytes()))
        self.syntaxes.append(None)
        return self.behaviour(path)

    def store_dataset_file(
        self,
        path: Path,
        *,
        transfer_syntax_uid: str,
        source: Source,
        offset: int = 0,
        expected_sop_instance_uid: str | None = None,
        dataset_sha256: str | None = None,
        received: bool = False,
    ) -> Any:
        # As IngestService does: a data set naming another instance is refused
        # before anything is kept.
        named = _sop_instance_uid(path, transfer_syntax_uid, offset)
        if expected_sop_instance_uid is not None and named not in (None, expected_sop_instance_uid):
            raise Invalid("dataset SOP Instance UID differs from the command's", status=0xA900)
        dataset = path.read_bytes()[offset:]
        if dataset_sha256 is not None:
            assert hashlib.sha256(dataset).hexdigest() == dataset_sha256
        self.calls.append((path, source, dataset))
        self.syntaxes.append(transfer_syntax_uid)
        return self.behaviour(path)


def _sop_instance_uid(path: Path, transfer_syntax: str, offset: int = 0) -> str | None:
    """The data set's SOP Instance UID, or None when the stand-in cannot read it."""
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            ds = read_dataset(fh, is_implicit_VR=implicit, is_little_endian=True)
        return str(ds.SOPInstanceUID)
    except Exception:
        return None


@dataclass
class StandInArchive:
    settings: Settings
    ingest: ScriptedIngest
    index: object = field(default_factory=object)
    fresh: bool = True
    barriers: int = 0

    def read_barrier(self) -> bool:
        self.barriers += 1
        return self.fresh


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> StandInArchive:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("dimse"),
        dimse_port=free_port(),
        remote_aes=[f"{CALLING}@127.0.0.1:104", "STORESCU@127.0.0.1:104", "FINDSCU@localhost:104"],
        max_body_bytes=1_000_000,
    )
    return StandInArchive(settings, ScriptedIngest())


@pytest.fixture(scope="module")
def server(archive: StandInArchive) -> Iterator[DimseServer]:
    dimse = start_dimse(archive)
    yield dimse
    dimse.stop()


@pytest.fixture
def ingest(archive: StandInArchive, server: DimseServer) -> Iterator[ScriptedIngest]:
    archive.ingest.calls.clear()
    archive.ingest.syntaxes.clear()
    yield archive.ingest
    archive.ingest.behaviour = lambda path: SimpleNamespace(duplicate=False)


def associate(
    port: int,
    contexts: list[Any],
    calling: str = CALLING,
    called: str = "CHRONICLE",
    negotiation: list[Any] | None = None,
) -> Any:
    ae = AE(ae_title=calling)
    ae.requested_contexts = contexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called, ext_neg=negotiation)


def extended(sop_class: str, info: bytes) -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_application_information = info
    return item
