"""A real `chronicle serve` in a subprocess, and the pytest fixtures that start it.

tests/integration/conftest.py and tests/interop/conftest.py re-export the
fixtures, so integration and interop tests share one definition. Each server
gets its own data folder and free ports, so tests stay xdist-safe.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support import free_port, tool_env

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0
STOP_GRACE = 10.0
#: Calling AE titles every test server accepts: the harness itself and dcmtk's defaults.
DEFAULT_CALLERS = ("HARNESS", "STORESCU", "FINDSCU", "ECHOSCU", "MOVESCU", "GETSCU")


@dataclass
class ChronicleServer:
    """One running `chronicle serve`: where to reach it and how to stop it."""

    base_url: str
    dicomweb_url: str
    http_port: int
    dimse_port: int
    ae_title: str
    data_dir: Path
    remote_aes: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def echo(self, calling_ae: str = "HARNESS") -> int | None:
        """C-ECHO status, or None when the association is not established."""
        return c_echo(self.dimse_port, self.ae_title, calling_ae)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_GRACE seconds; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_GRACE)
        self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL at once (a crashed node): no shutdown code runs; stop() is then a no-op."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_GRACE)
        self._log_file.close()


class StartChronicle(Protocol):
    def __call__(
        self,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        *,
        data_dir: Path | None = None,
        ae_title: str = "CHRONICLE",
        remote_aes: Sequence[str] | None = None,
        http_port: int | None = None,
        roles: str | None = None,
    ) -> ChronicleServer: ...


def c_echo(port: int, called_ae: str, calling_ae: str, timeout: float = 5.0) -> int | None:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def chronicle_command() -> list[str]:
    """The installed console script; `python -m api.cli` when it is not installed."""
    script = Path(sys.executable).parent / "chronicle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


def default_remote_aes() -> list[str]:
    return [f"{title}@127.0.0.1:{free_port()}" for title in DEFAULT_CALLERS]


def _workers_env(workers: int | None) -> dict[str, str]:
    return {} if workers is None else {"CHRONICLE_WORKERS": str(workers)}


def launch_chronicle(
    data_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ae_title: str = "CHRONICLE",
    remote_aes: Sequence[str] | None = None,
    http_port: int | None = None,
    roles: str | None = None,
    workers: int | None = 1,
) -> ChronicleServer:
    """Start `chronicle serve` and return once /healthz is 200 and C-ECHO succeeds.

    `workers`: front-end processes; tests run one (faster to start, and most
    tests are not about processes) unless they pass `--workers` or another
    number; None keeps the server's default (one per core), as the benchmarks do.

    Pass `http_port` (from free_port()) when extra_args must name it, e.g. --public-url.
    `roles` (e.g. "ingest" or "projector,api") adds `--role`; several servers
    may then share one data folder, each with its own log file. A projector-only
    server has no DIMSE: only /healthz is awaited.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port, dimse_port = http_port or free_port(), free_port()
    remotes = list(remote_aes) if remote_aes is not None else default_remote_aes()
    argv = chronicle_command() + ["serve", "--data-dir", str(data_dir)]
    argv += ["--http-port", str(http_port), "--dimse-port", str(dimse_port)]
    argv += ["--ae-title", ae_title]
    for remote in remotes:
        argv += ["--remote-ae", remote]
    if roles is not None:
        argv += ["--role", roles]
    argv += list(extra_args)
    label = f"-{roles.replace(',', '-')}" if roles else ""
    log_path = data_dir.parent / f"{data_dir.name}{label}-server.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=tool_env({"PYTHONUNBUFFERED": "1", **_workers_env(workers), **(env or {})}),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{http_port}"
    server = ChronicleServer(
        base_url=base_url,
        dicomweb_url=f"{base_url}/dicomweb",
        http_port=http_port,
        dimse_port=dimse_port,
        ae_title=ae_title,
        data_dir=data_dir,
        remote_aes=remotes,
        process=process,
        log_path=log_path,
        _log_file=log_file,
    )
    _wait_until_ready(server, argv, dimse=roles is None or roles.strip() != "projector")
    return server


def _wait_until_ready(server: ChronicleServer, argv: list[str], *, dimse: bool = True) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # Only a caller the server accepts can prove DIMSE is up.
    caller = _accepted_caller(server.remote_aes, argv)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()
            pytest.fail(
                f"chronicle serve exited with {server.process.returncode} before it was ready\n"
                f"command: {' '.join(argv)}\n--- server output ---\n{server.output()[-8000:]}"
            )
        if _healthy(server.base_url) and (not dimse or server.echo(caller) == 0x0000):
            return
        time.sleep(0.2)
    server.stop()
    pytest.fail(
        f"chronicle serve was not ready within {STARTUP_TIMEOUT:.0f} s "
        f"(GET /healthz 200 and C-ECHO)\ncommand: {' '.join(argv)}\n"
        f"--- server output ---\n{server.output()[-8000:]}"
    )


def _accepted_caller(remote_aes: Sequence[str], argv: Sequence[str]) -> str:
    if "--accept-any-caller" in argv or not remote_aes:
        return "HARNESS"
    return remote_aes[0].split("@", 1)[0]


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def chronicle_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StartChronicle]:
    """A factory that starts servers and stops every one of them on exit."""
    with ExitStack() as stack:

        def start(
            extra_args: Sequence[str] = (),
            env: dict[str, str] | None = None,
            *,
            data_dir: Path | None = None,
            ae_title: str = "CHRONICLE",
            remote_aes: Sequence[str] | None = None,
            http_port: int | None = None,
            roles: str | None = None,
        ) -> ChronicleServer:
            folder = data_dir or tmp_path_factory.mktemp("chronicle") / "data"
            server = launch_chronicle(
                folder,
                extra_args=extra_args,
                env=env,
                ae_title=ae_title,
                remote_aes=remote_aes,
                http_port=http_port,
                roles=roles,
            )
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def start_chronicle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartChronicle]:
    """Function-scoped factory: start_chronicle(extra_args=[...], env={...}, data_dir=...)."""
    with chronicle_servers(tmp_path_factory) as start:
        yield start


@pytest.fixture
def chronicle_server(start_chronicle: StartChronicle) -> ChronicleServer:
    """A fresh server on an empty data folder, stopped after the test."""
    return start_chronicle()


@pytest.fixture(scope="module")
def start_chronicle_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StartChronicle]:
    """Module-scoped factory, for suites that share servers across tests."""
    with chronicle_servers(tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="module")
def chronicle_server_module(start_chronicle_module: StartChronicle) -> ChronicleServer:
    """One server shared by every test of a module (state carries between tests)."""
    return start_chronicle_module()
