"""Storage Commitment Push Model SCP end to end (PS3.4 Annex J).

A real archive in this process (SQLite log, folder blobs, chDB) behind the
DIMSE front-end; pynetdicom plays the modality (dcmtk has no commitment
SCU): it stores with C-STORE, requests commitment with N-ACTION and takes
the N-EVENT-REPORT on its own association, or on a small SCP of its own
(Storage Commitment in the SCU role) at its configured address.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer

from api.dimse.commitment import STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
from api.dimse.server import DimseServer, start_dimse
from api.wiring import Archive, open_archive
from infra.settings import load_settings
from projections.commitment import CommitmentReactor, ScansByPrefix
from projections.commitment_rules import Report, ReportPolicy
from projections.replay import replay
from schemas import codec
from schemas.events import StorageCommitmentReported
from tests.support import free_port, make_ct

MODALITY = "MODALITY"
UNREACHABLE = "GONE"
WAIT = 15.0


@dataclass
class Received:
    """One N-EVENT-REPORT as the modality saw it."""

    where: str  # "same" (the N-ACTION's association) or "new"
    event_type: int
    info: Dataset
    roles: tuple[bool, bool]  # the modality's (SCU, SCP) role on that context


@pytest.fixture(scope="module")
def reports() -> queue.Queue[Received]:
    return queue.Queue()


@pytest.fixture(scope="module")
def modality_scp(reports: queue.Queue[Received]) -> Iterator[ThreadedAssociationServer]:
    """The modality's listener for reports on a new association (SCU role, role selection)."""
    ae = AE(ae_title=MODALITY)
    ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)

    def on_report(event: Any) -> tuple[int, None]:
        reports.put(Received("new", event.event_type, event.event_information, cx_roles(event)))
        return 0x0000, None

    def cx_roles(event: Any) -> tuple[bool, bool]:
        [cx] = [
            c for c in event.assoc.accepted_contexts if c.context_id == event.context.context_id
        ]
        return bool(cx.as_scu), bool(cx.as_scp)

    server = ae.start_server(
        ("127.0.0.1", free_port()), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert server is not None
    yield server
    ae.shutdown()


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, modality_scp: ThreadedAssociationServer
) -> Iterator[Archive]:
    port = modality_scp.server_address[1]
    flags = {
        "data_dir": str(tmp_path_factory.mktemp("commitment")),
        "min_free_bytes": 0,
        "dimse_port": free_port(),
        "remote_aes": [f"{MODALITY}@127.0.0.1:{port}", f"{UNREACHABLE}@127.0.0.1:{free_port()}"],
        "dimse_timeout": 10.0,
        "acse_timeout": 5.0,
    }
    opened = open_archive(load_settings(flags, environ={}))
    assert opened.commitment is not None
    opened.commitment.policy = ReportPolicy(attempts=2, first_delay=0.1, decision_wait=5.0)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def server(archive: Archive) -> Iterator[DimseServer]:
    dimse = start_dimse(archive)
    yield dimse
    dimse.stop()


@pytest.fixture
def reactor(archive: Archive) -> CommitmentReactor:
    assert archive.commitment is not None
    return archive.commitment


def associate(server: DimseServer, reports: queue.Queue[Received], calling: str = MODALITY) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = [build_context(STORAGE_COMMITMENT), build_context(CTImageStorage)]
    contexts.append(build_context(MRImageStorage))

    def on_report(event: Any) -> tuple[int, None]:
        reports.put(Received("same", event.event_type, event.event_information, (True, False)))
        return 0x0000, None

    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        contexts=contexts,
        ae_title="CHRONICLE",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    return assoc


def store(assoc: Any, *datasets: Dataset) -> None:
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000


def request(assoc: Any, transaction_uid: str, *datasets: Dataset | tuple[str, str]) -> int:
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for ref in datasets:
        item = Dataset()
        sop_class, sop_instance = (
            (ref.SOPClassUID, ref.SOPInstanceUID) if isinstance(ref, Dataset) else ref
        )
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
    return int(status.Status)


def small_ct(**attrs: Any) -> Dataset:
    return make_ct(rows=8, cols=8, patient_id="COMMIT-1", **attrs)


def next_report(reports: queue.Queue[Received]) -> Received:
    return reports.get(timeout=WAIT)


def committed(report: Received) -> set[str]:
    return {i.ReferencedSOPInstanceUID for i in report.info.get("ReferencedSOPSequence", [])}


def failures(report: Received) -> dict[str, int]:
    return {
        i.ReferencedSOPInstanceUID: int(i.FailureReason)
        for i in report.info.get("FailedSOPSequence", [])
    }


def reported(archive: Archive, transaction_uid: str) -> list[StorageCommitmentReported]:
    found = []
    for record in archive.log.read({}, 1_000_000):
        payload = codec.decode(record.value).payload
        if (
            isinstance(payload, StorageCommitmentReported)
            and payload.transaction_uid == transaction_uid
        ):
            found.append(payload)
    return found


def wait_reported(archive: Archive, transaction_uid: str, count: int = 1) -> list[Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = reported(archive, transaction_uid)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{transaction_uid}: {count} report event(s) not recorded in time")


def assert_quiet(reports: queue.Queue[Received], seconds: float = 0.5) -> None:
    with pytest.raises(queue.Empty):
        reports.get(timeout=seconds)


# ------------------------------------------------------------------ tests


def test_all_committed_report_comes_on_the_same_association(
    archive: Archive, server: DimseServer, reports: queue.Queue[Received]
) -> None:
    first, second = small_ct(), small_ct()
    transaction = generate_uid()
    assoc = associate(server, reports)
    try:
        store(assoc, first, second)
        # No wait between store and request: the decision sees both (read-your-writes).
        assert request(assoc, transaction, first, second) == 0x0000
        report = next_report(reports)
    finally:
        assoc.release()
    assert (report.where, report.event_type) == ("same", 1)
    assert report.info.TransactionUID == transaction
    assert committed(report) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert "FailedSOPSequence" not in report.info
    assert report.info.RetrieveAETitle == "CHRONICLE"
    [event] = wait_reported(archive, transaction)
    assert (event.delivery, event.event_type_id, event.failed) == ("same-association", 1, [])
    assert event.requester.calling_ae == MODALITY


def test_report_goes_to_the_configured_address_once_the_association_is_gone(
    archive: Archive,
    server: DimseServer,
    reactor: CommitmentReactor,
    reports: queue.Queue[Received],
) -> None:
    ds = small_ct()
    transaction = generate_uid()
    reactor.stop()  # hold the report back until the requester has released
    try:
        assoc = associate(server, reports)
        store(assoc, ds)
        assert request(assoc, transaction, ds) == 0x0000
        assoc.release()
    finally:
        reactor.start()
    report = next_report(reports)
    assert (report.where, report.event_type) == ("new", 1)
    assert report.roles == (True, False)  # the modality is SCU, Chronicle the SCP
    assert committed(report) == {ds.SOPInstanceUID}
    [event] = wait_reported(archive, transaction)
    assert event.delivery == "new-association"
    assert event.destination.startswith(f"{MODALITY}@127.0.0.1:")


def test_unknown_tampered_conflicting_and_unsupported_items_fail(
    archive: Archive, server: DimseServer, reports: queue.Queue[Received]
) -> None:
    good, tampered = small_ct(), small_ct()
    unknown = (CTImageStorage, generate_uid())
    unsupported = ("1.2.840.10008.5.1.4.31", generate_uid())  # Modality Worklist FIND
    transaction = generate_uid()
    assoc = associate(server, reports)
    try:
        store(assoc, good, tampered)
        blob_path = _blob_path(archive, tampered.SOPInstanceUID)
        data = bytearray(blob_path.read_bytes())
        data[-1] ^= 0xFF
        blob_path.chmod(0o644)
        blob_path.write_bytes(bytes(data))
        conflict = (MRImageStorage, good.SOPInstanceUID)
        assert request(assoc, transaction, good, tampered, unknown, conflict, unsupported) == 0
        report = next_report(reports)
    finally:
        assoc.release()
    assert (report.where, report.event_type) == ("same", 2)
    assert committed(report) == {good.SOPInstanceUID}
    assert failures(report) == {
        tampered.SOPInstanceUID: 0x0110,
        unknown[1]: 0x0112,
        good.SOPInstanceUID: 0x0119,
        unsupported[1]: 0x0122,
    }
    [event] = wait_reported(archive, transaction)
    assert len(event.failed) == 4 and event.event_type_id == 2


def _blob_path(archive: Archive, sop_instance_uid: str) -> Path:
    assert archive.read_barrier()
    [(key,)] = archive.index.query(
        "SELECT blob_key FROM instance FINAL WHERE sop_instance_uid = {uid:String}",
        {"uid": sop_instance_uid},
    )
    return archive.settings.data_dir.resolve() / "blobs" / str(key)


def test_a_reported_transaction_uid_is_not_reused(
    archive: Archive, server: DimseServer, reports: queue.Queue[Received]
) -> None:
    ds = small_ct()
    transaction = generate_uid()
    assoc = associate(server, reports)
    try:
        store(assoc, ds)
        assert request(assoc, transaction, ds) == 0x0000
        assert next_report(reports).event_type == 1
        wait_reported(archive, transaction)
        assert request(assoc, transaction, ds) == 0x0000
        again = next_report(reports)
    finally:
        assoc.release()
    assert again.event_type == 2 and again.info.TransactionUID == transaction
    assert failures(again) == {ds.SOPInstanceUID: 0x0131}
    assert committed(again) == set()
    assert [e.delivery for e in wait_reported(archive, transaction, 2)] == ["same-association"] * 2


def test_a_retry_while_pending_is_answered_once(
    archive: Archive,
    server: DimseServer,
    reactor: CommitmentReactor,
    reports: queue.Queue[Received],
) -> None:
    ds = small_ct()
    transaction = generate_uid()
    reactor.stop()
    try:
        first = associate(server, reports)
        store(first, ds)
        assert request(first, transaction, ds) == 0x0000
        first.release()
        retry = associate(server, reports)
        assert request(retry, transaction, ds) == 0x0000
    finally:
        reactor.start()
    try:
        report = next_report(reports)
        assert report.event_type == 1 and committed(report) == {ds.SOPInstanceUID}
        assert_quiet(reports)
    finally:
        retry.release()
    deliveries = sorted(e.delivery for e in wait_reported(archive, transaction, 2))
    assert deliveries[0] == "absorbed" and deliveries[1] in ("new-association", "same-association")


def test_an_unreachable_requester_is_recorded_as_undelivered(
    archive: Archive,
    server: DimseServer,
    reactor: CommitmentReactor,
    reports: queue.Queue[Received],
) -> None:
    ds = small_ct()
    transaction = generate_uid()
    reactor.stop()
    try:
        assoc = associate(server, reports, calling=UNREACHABLE)
        store(assoc, ds)
        assert request(assoc, transaction, ds) == 0x0000
        assoc.release()
    finally:
        reactor.start()
    [event] = wait_reported(archive, transaction)
    assert (event.delivery, event.attempts) == ("undelivered", 2)
    assert "could not be reached" in event.detail
    # Never delivered, so not "already reported": asking again is answered afresh.
    assoc = associate(server, reports, calling=UNREACHABLE)
    try:
        assert request(assoc, transaction, ds) == 0x0000
        report = next_report(reports)
    finally:
        assoc.release()
    assert (report.where, report.event_type) == ("same", 1)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("no transaction", 0x0115),
        ("empty sequence", 0x0115),
        ("bad uid", 0x0115),
        ("action type 2", 0x0123),
        ("other instance", 0x0112),
    ],
)
def test_malformed_requests_fail_the_n_action(
    server: DimseServer, reports: queue.Queue[Received], change: str, status: int
) -> None:
    info = Dataset()
    info.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    info.ReferencedSOPSequence = [item]
    action, instance = 1, WELL_KNOWN_INSTANCE
    if change == "no transaction":
        del info.TransactionUID
    elif change == "empty sequence":
        info.ReferencedSOPSequence = []
    elif change == "bad uid":
        item.ReferencedSOPInstanceUID = "1.2.abc"
    elif change == "action type 2":
        action = 2
    else:
        instance = generate_uid()
    assoc = associate(server, reports)
    try:
        answer, _ = assoc.send_n_action(info, action, STORAGE_COMMITMENT, instance)
    finally:
        assoc.release()
    assert answer.Status == status
    assert_quiet(reports, 0.3)


class RecordingCourier:
    def __init__(self) -> None:
        self.sent: list[Report] = []

    def is_open(self, association: Any) -> bool:
        return False

    def send_on(self, association: Any, report: Report) -> None:
        self.sent.append(report)

    def send_to(self, remote: Any, report: Report) -> None:
        self.sent.append(report)


def test_replay_and_a_fresh_checkpoint_send_nothing_again(
    archive: Archive, server: DimseServer, reports: queue.Queue[Received]
) -> None:
    ds = small_ct()
    transaction = generate_uid()
    assoc = associate(server, reports)
    try:
        store(assoc, ds)
        assert request(assoc, transaction, ds) == 0x0000
        assert next_report(reports).event_type == 1
    finally:
        assoc.release()
    wait_reported(archive, transaction)
    rows_sql = "SELECT * FROM storage_commitment FINAL ORDER BY transaction_uid, request_event_id"
    archive.projector.wait(archive.log.end(), 5.0)
    before_rows = archive.index.query(rows_sql)
    end_before = archive.log.end()
    archive.projector.stop()
    try:
        replay(archive.log, archive.index, archive.blobs)
    finally:
        archive.projector.reload()
        archive.projector.start()
    assert archive.index.query(rows_sql) == before_rows
    assert_quiet(reports)
    # A reactor that lost its checkpoint re-reads the whole log and acts on
    # nothing: over the SQLite log's scan by prefix, and over a log with the
    # port's verbs only.
    for name, event_log in (("fresh", archive.log), ("fresh-read", _PortOnly(archive.log))):
        courier = RecordingCourier()
        fresh = CommitmentReactor(
            archive.settings,
            event_log,  # type: ignore[arg-type]
            archive.index,
            archive.blobs,
            archive.projector,
            courier,
            is_supported_class=lambda uid: True,
            name=f"commitment-{name}",
        )
        assert isinstance(event_log, ScansByPrefix) == (name == "fresh")
        fresh.start()
        try:
            deadline = time.monotonic() + WAIT
            while fresh.run_once() and time.monotonic() < deadline:
                pass
            assert fresh.pending() == 0
        finally:
            fresh.stop()
        assert courier.sent == []
    assert archive.log.end() == end_before


class _PortOnly:
    """An event log with the port's verbs only (no scan by prefix)."""

    def __init__(self, event_log: Any) -> None:
        self._log = event_log

    def __getattr__(self, name: str) -> Any:
        if name == "scan":
            raise AttributeError(name)
        return getattr(self._log, name)
