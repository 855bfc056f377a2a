"""An idle storage association is closed after the network timeout
(SO_RCVTIMEO on the storage link's blocking socket)."""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from api.dimse.server import start_dimse
from infra.settings import Settings
from tests.integration.dimse_harness import CALLING, ScriptedIngest, StandInArchive
from tests.support import free_port, make_ct


def test_a_silent_peer_is_let_go_after_the_network_timeout(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        dimse_port=free_port(),
        remote_aes=[f"{CALLING}@127.0.0.1:104"],
        network_timeout=1,
    )
    server = start_dimse(StandInArchive(settings, ScriptedIngest()))
    try:
        ae = AE(ae_title=CALLING)
        ae.requested_contexts = [build_context(CTImageStorage)]
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", settings.dimse_port, ae_title="CHRONICLE")
        assert assoc.is_established
        # Still served while active: a store goes through.
        assert assoc.send_c_store(make_ct(rows=8, cols=8)).Status == 0x0000
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not assoc.is_established  # the server closed the idle association
    finally:
        server.stop()
