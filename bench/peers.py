"""The archives a benchmark drives, each started fresh on loopback free ports.

Orthanc (Debian's 1.10 with its DICOMweb plugin) and Chronicle (`chronicle
serve`, reusing the test harness launcher) behind one small interface, so a
scenario does not care which one it is filling.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.chronicle_server import c_echo, launch_chronicle
from tests.support import free_port, tool_env

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CALLING_AE = "BENCHSCU"
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Peer:
    """Where a running archive takes C-STORE and STOW-RS, and how to count what it kept."""

    name: str
    ae_title: str
    dimse_port: int
    stow_url: str
    count_url: str

    def stored_instances(self) -> int:
        body = httpx.get(self.count_url, timeout=30).json()
        if "CountInstances" in body:  # Orthanc /statistics
            return int(body["CountInstances"])
        return int(sum(int(v) for v in body["log_end"].values()))  # Chronicle /healthz


def orthanc_config(folder: Path, http_port: int, dimse_port: int) -> dict[str, object]:
    return {
        "Name": "bench-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dimse_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"bench": [CALLING_AE, "127.0.0.1", free_port()]},
        "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
    }


@contextmanager
def running_orthanc(folder: Path) -> Iterator[Peer]:
    """Orthanc with a generated config in `folder`; stopped (and its files kept) on exit."""
    for needed in (ORTHANC_BIN, ORTHANC_DICOMWEB):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: `make bench` installs Debian's orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dimse_port = free_port(), free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, http_port, dimse_port), indent=2))
    log_path = folder / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(ORTHANC_BIN), str(config)],
            env=tool_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            _wait_ready(process, f"{base}/system", dimse_port, "ORTHANC", log_path)
            yield Peer(
                "Orthanc", "ORTHANC", dimse_port, f"{base}/dicom-web/studies", f"{base}/statistics"
            )
        finally:
            _stop(process)


@contextmanager
def running_chronicle(
    folder: Path, extra_args: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[Peer]:
    """`chronicle serve [extra_args]` on a fresh data folder under `folder`, accepting BENCHSCU."""
    folder.mkdir(parents=True, exist_ok=True)
    server = launch_chronicle(
        folder / "data",
        extra_args=extra_args,
        env=env,
        remote_aes=[f"{CALLING_AE}@127.0.0.1:{free_port()}"],
        workers=None,  # the server's default: one front-end process per core
    )
    try:
        yield Peer(
            "Chronicle",
            server.ae_title,
            server.dimse_port,
            f"{server.dicomweb_url}/studies",
            f"{server.base_url}/healthz",
        )
    finally:
        server.stop()


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, dimse_port: int, ae_title: str, log: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            up = httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and c_echo(dimse_port, ae_title, CALLING_AE) == 0x0000:
            return
        time.sleep(0.2)
    _stop(process)
    raise SystemExit(f"not ready within {STARTUP_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
