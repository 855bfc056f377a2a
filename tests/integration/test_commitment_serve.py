"""Storage commitment through `chronicle serve` as users run it, and `chronicle replay`.

With several front-end processes an N-ACTION may land in a worker: the
owner's reactor then reports on a new association (the request's own is in
another process). Either way each request gets exactly one report, and a
`chronicle replay` followed by a restart sends none again.
"""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer

from api.dimse.commitment import STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
from tests.chronicle_server import StartChronicle, chronicle_command
from tests.support import free_port, make_ct, tool_env

MODALITY = "MODALITY"
WAIT = 20.0


@pytest.fixture
def reports() -> queue.Queue[tuple[str, str, int]]:
    """(route, Transaction UID, event type) of every report the modality got."""
    return queue.Queue()


@pytest.fixture
def modality_scp(
    reports: queue.Queue[tuple[str, str, int]],
) -> Iterator[ThreadedAssociationServer]:
    ae = AE(ae_title=MODALITY)
    ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)

    def on_report(event: Any) -> tuple[int, None]:
        info = event.event_information
        reports.put(("new", str(info.TransactionUID), int(event.event_type)))
        return 0x0000, None

    server = ae.start_server(
        ("127.0.0.1", free_port()), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert server is not None
    yield server
    ae.shutdown()


def commit(port: int, reports: queue.Queue[tuple[str, str, int]], ds: Dataset) -> str:
    """Store `ds`, request its commitment, keep the association until a report came."""
    ae = AE(ae_title=MODALITY)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10

    def on_report(event: Any) -> tuple[int, None]:
        info = event.event_information
        reports.put(("same", str(info.TransactionUID), int(event.event_type)))
        return 0x0000, None

    contexts = [build_context(STORAGE_COMMITMENT), build_context(CTImageStorage)]
    assoc = ae.associate(
        "127.0.0.1",
        port,
        contexts=contexts,
        ae_title="CHRONICLE",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    transaction = generate_uid()
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        info = Dataset()
        info.TransactionUID = transaction
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        info.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
        assert status.Status == 0x0000
        route, uid, event_type = reports.get(timeout=WAIT)
        assert (uid, event_type) == (transaction, 1)
        assert route in ("same", "new")
    finally:
        assoc.release()
    return transaction


def test_every_request_is_answered_once_and_replay_sends_nothing_again(
    start_chronicle: StartChronicle,
    modality_scp: ThreadedAssociationServer,
    reports: queue.Queue[tuple[str, str, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("commitment-serve") / "data"
    remotes = [f"{MODALITY}@127.0.0.1:{modality_scp.server_address[1]}"]
    server = start_chronicle(["--workers", "2"], data_dir=data_dir, remote_aes=remotes)
    answered = {commit(server.dimse_port, reports, make_ct(rows=8, cols=8)) for _ in range(4)}
    assert len(answered) == 4
    with pytest.raises(queue.Empty):
        reports.get(timeout=0.5)
    assert server.stop() == 0
    replayed = subprocess.run(
        [*chronicle_command(), "replay", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stderr
    start_chronicle(data_dir=data_dir, remote_aes=remotes)
    with pytest.raises(queue.Empty):
        reports.get(timeout=1.5)
