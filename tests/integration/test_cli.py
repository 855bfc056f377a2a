"""The `chronicle` command as users run it: import, replay, check, workers."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.chronicle_server import StartChronicle, chronicle_command
from tests.support import free_port, make_ct, tool_env, write_part10


def chronicle(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chronicle_command(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=tool_env(),
        cwd=cwd,
    )


def studies(base_url: str, **params: str) -> list[dict[str, object]]:
    response = httpx.get(f"{base_url}/dicomweb/studies", params=params, timeout=30)
    assert response.status_code in (200, 204), response.text
    return [] if response.status_code == 204 else response.json()  # type: ignore[no-any-return]


def test_import_replay_check_round_trip(tmp_path: Path, start_chronicle: StartChronicle) -> None:
    folder = tmp_path / "incoming"
    for i in range(3):
        write_part10(make_ct(patient_id=f"IMP-{i}", rows=8, cols=8), folder / f"sub{i}" / "a.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "truncated.dcm").write_bytes((folder / "sub0" / "a.dcm").read_bytes()[:900])
    data = tmp_path / "data"

    imported = chronicle("import", str(folder), "--data-dir", str(data))
    assert imported.returncode == 0, imported.stderr
    assert "stored: 3" in imported.stdout
    assert "skipped" in imported.stdout  # the text file and the truncated one, with reasons

    again = chronicle("import", str(folder), "--data-dir", str(data))
    assert "already kept (duplicates): 3" in again.stdout

    check = chronicle("check", "--data-dir", str(data))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "events: 6" in check.stdout and "OK" in check.stdout

    port = free_port()  # the same base URL before and after, so RetrieveURLs compare
    server = start_chronicle(data_dir=data, http_port=port)
    before = studies(server.base_url, PatientID="IMP-*")
    assert len(before) == 3
    held = chronicle("replay", "--data-dir", str(data))
    assert held.returncode != 0 and "held by another process" in held.stderr
    assert server.stop() == 0

    replayed = chronicle("replay", "--data-dir", str(data))
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 6 events" in replayed.stdout
    server = start_chronicle(data_dir=data, http_port=port)
    assert studies(server.base_url, PatientID="IMP-*") == before


def test_import_beside_a_running_server_and_through_it(
    tmp_path: Path, start_chronicle: StartChronicle
) -> None:
    server = start_chronicle()
    beside = write_part10(make_ct(patient_id="BESIDE-1", rows=8, cols=8), tmp_path / "a.dcm")
    result = chronicle("import", str(beside), "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    assert "the running server projects them" in result.stdout
    assert studies(server.base_url, PatientID="BESIDE-1")

    through = write_part10(make_ct(patient_id="STOW-1", rows=8, cols=8), tmp_path / "b.dcm")
    result = chronicle("import", str(through), "--url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert "stored: 1" in result.stdout
    assert studies(server.base_url, PatientID="STOW-1")


def test_check_reports_a_missing_blob(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_part10(make_ct(rows=8, cols=8), tmp_path / "x.dcm")
    assert chronicle("import", str(tmp_path / "x.dcm"), "--data-dir", str(data)).returncode == 0
    [blob] = [p for p in (data / "blobs").rglob("*.dcm")]
    blob.unlink()
    check = chronicle("check", "--data-dir", str(data))
    assert check.returncode == 1
    assert "MISSING" in check.stdout


def test_several_worker_processes_share_the_ports(
    tmp_path: Path, start_chronicle: StartChronicle
) -> None:
    server = start_chronicle(["--workers", "2"])
    study = make_ct().StudyInstanceUID
    datasets = [make_ct(study_uid=study, rows=8, cols=8, patient_id="WORKERS-1") for _ in range(12)]
    # Both processes answer (and keep) this search before the stores: each must
    # drop what it kept when the owner's index changes (shared write counter).
    for _ in range(6):
        assert studies(base_url=server.base_url, PatientID="WORKERS-1") == []

    def send(part: list[object]) -> None:
        ae = AE(ae_title="HARNESS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
        assert assoc.is_established
        for ds in part:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()

    threads = [threading.Thread(target=send, args=(datasets[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every connection, whichever process the kernel gave it to, sees every store.
    for _ in range(6):
        [found] = studies(server.base_url, StudyInstanceUID=study)
        assert found["00201208"]["Value"] == [12]  # type: ignore[index]
        [again] = studies(server.base_url, PatientID="WORKERS-1")
        assert again["00201208"]["Value"] == [12]  # type: ignore[index]
    assert "worker" in server.output()


def test_associations_are_spread_evenly_over_the_processes(
    start_chronicle: StartChronicle,
) -> None:
    """The workers share the owner's socket and a load board: four open
    associations are two per process, never the kernel's 3:1 or 4:0 (with one
    SO_REUSEPORT socket per process, more often than not)."""
    server = start_chronicle(["--workers", "2"])
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(CTImageStorage)
    held = []
    before = len(server.output())  # the readiness probe's C-ECHO is in the log too
    try:
        for _ in range(4):
            assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
            assert assoc.is_established
            held.append(assoc)
            time.sleep(0.1)  # the serving process has counted it before the next
        served = re.findall(
            r"INFO (\d+) chronicle\.dimse: association from HARNESS", server.output()[before:]
        )
        assert sorted(Counter(served).values()) == [2, 2]
    finally:
        for assoc in held:
            assoc.release()


def test_dicomweb_connections_are_spread_evenly_over_the_processes(
    start_chronicle: StartChronicle,
) -> None:
    """DICOMweb connections too (api.http_balance): four held keep-alive
    connections are served two per process."""
    server = start_chronicle(["--workers", "2"])
    owner = server.process.pid
    [worker] = [int(c) for c in Path(f"/proc/{owner}/task/{owner}/children").read_text().split()]
    held: list[socket.socket] = []
    try:
        for _ in range(4):
            conn = socket.create_connection(("127.0.0.1", server.http_port))
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(conn)
            time.sleep(0.1)  # the serving process has counted it before the next
            if len(held) == 1:
                # A tie goes to the owner, which reads the index in process.
                assert held[0].getsockname()[1] in _peers_of(owner, server.http_port)
        ports = {conn.getsockname()[1] for conn in held}
        served = {pid: len(_peers_of(pid, server.http_port) & ports) for pid in (owner, worker)}
        assert sorted(served.values()) == [2, 2], served
    finally:
        for conn in held:
            conn.close()


def _peers_of(pid: int, port: int) -> set[int]:
    """Remote ports of the TCP connections `pid` holds on its local `port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(local.split(":")[1], 16) == port:
            peers.add(int(remote.split(":")[1], 16))
    return peers


def test_workers_stop_when_their_owner_is_killed(start_chronicle: StartChronicle) -> None:
    """SIGKILL leaves no orphan holding the ports: the kernel tells the workers."""
    server = start_chronicle(["--workers", "2"])
    owner = server.process.pid
    [worker] = [int(c) for c in Path(f"/proc/{owner}/task/{owner}/children").read_text().split()]
    server.kill()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        if "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break  # exited; a zombie until its new parent reaps it
        time.sleep(0.1)
    alive = Path(f"/proc/{worker}").exists()
    assert not alive or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
