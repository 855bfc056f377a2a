"""`chronicle send` and `chronicle echo` as a user runs them, against pynetdicom SCPs we control.

The store is filled with `chronicle import` (three CT in one series, one MR in
JPEG-LS lossless). `send` runs on the embedded store while no server holds
it, and through the DICOMweb API of a running server (`--url`) while one does.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from api.dimse.ae import accepted_transfer_syntaxes
from tests.chronicle_server import StartChronicle, chronicle_command
from tests.support import dcmtk_copy, free_port, make_ct, pydicom_file, tool_env, write_part10

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
JPEG_LS = "1.2.840.10008.1.2.4.80"


@dataclass
class StorageSCP:
    title: str
    port: int
    received: dict[str, tuple[str, Dataset]] = field(default_factory=dict)

    def handle(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received[str(ds.SOPInstanceUID)] = (str(event.context.transfer_syntax), ds)
        return 0x0000


@pytest.fixture
def scp_factory() -> Iterator[Any]:
    servers = []

    def start(title: str, syntaxes: list[str]) -> StorageSCP:
        scp = StorageSCP(title, free_port())
        ae = AE(ae_title=title)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        handlers = [(evt.EVT_C_STORE, scp.handle)]
        servers.append(ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=handlers))
        return scp

    yield start
    for server in servers:
        server.shutdown()


@dataclass(frozen=True)
class Imported:
    data_dir: Path
    study: str
    series: str
    cts: list[str]
    mr: str
    mr_source: Path


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    folder = tmp_path_factory.mktemp("send")
    study, series = generate_uid(), generate_uid()
    cts = [generate_uid() for _ in range(3)]
    for number, uid in enumerate(cts):
        write_part10(
            make_ct(study, series, uid, rows=16, cols=16), folder / "in" / f"ct{number}.dcm"
        )
    mr = generate_uid()
    mr_source = dcmtk_copy(
        pydicom_file("MR_small_jpeg_ls_lossless.dcm"), folder / "in" / "mr.dcm", mr
    )
    data_dir = folder / "data"
    done = _chronicle("import", "--data-dir", str(data_dir), str(folder / "in"))
    assert done.returncode == 0, done.stderr
    return Imported(data_dir, study, series, cts, mr, mr_source)


def _chronicle(*args: str) -> subprocess.CompletedProcess[str]:
    argv = chronicle_command() + list(args)
    return subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=120)


def test_send_from_the_embedded_store_names_every_level_and_reports_what_it_did(
    imported: Imported, scp_factory: Any
) -> None:
    scp = scp_factory("PLAINSCP", [EXPLICIT, IMPLICIT])
    missing = "1.2.3.999"

    done = _chronicle(
        "send",
        "--data-dir",
        str(imported.data_dir),
        imported.series,
        imported.mr,
        missing,
        "--to",
        f"PLAINSCP@127.0.0.1:{scp.port}",
    )

    assert done.returncode == 1, done.stdout + done.stderr  # one UID named nothing
    assert set(scp.received) == {*imported.cts, imported.mr}
    assert "sent to PLAINSCP@127.0.0.1" in done.stdout and "4 of 4" in done.stdout
    assert f"NOT FOUND: {missing}" in done.stdout
    syntax, mr = scp.received[imported.mr]
    assert syntax in (EXPLICIT, IMPLICIT)  # JPEG-LS not accepted: decoded
    assert np.array_equal(mr.pixel_array, dcmread(imported.mr_source).pixel_array)


def test_send_through_a_running_server_and_not_behind_its_back(
    imported: Imported, scp_factory: Any, start_chronicle: StartChronicle
) -> None:
    scp = scp_factory("FULLSCP", accepted_transfer_syntaxes())
    server = start_chronicle(data_dir=imported.data_dir)
    target = f"FULLSCP@127.0.0.1:{scp.port}"

    blocked = _chronicle(
        "send", "--data-dir", str(imported.data_dir), imported.study, "--to", target
    )
    done = _chronicle("send", "--url", server.base_url, imported.study, imported.mr, "--to", target)

    assert blocked.returncode == 1 and "--url" in blocked.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(scp.received) == {*imported.cts, imported.mr}
    assert scp.received[imported.mr][0] == JPEG_LS  # as stored


def test_echo_prints_status_and_round_trip(scp_factory: Any) -> None:
    scp = scp_factory("ECHOSCP", [EXPLICIT])

    answered = _chronicle("echo", f"ECHOSCP@127.0.0.1:{scp.port}", "--ae-title", "ME")
    refused = _chronicle("echo", f"ECHOSCP@127.0.0.1:{free_port()}")

    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "status 0x0000 (Success)" in answered.stdout and " ms" in answered.stdout
    assert refused.returncode == 1 and "no association" in refused.stdout
