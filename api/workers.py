"""Several front-end processes per node, to use every core past the GIL.

The owner process runs the node's roles (api/roles.py) and, with the
projector role, the projector. With `--workers N`, it starts N-1 worker
processes that take over its front-end roles (ingest, api; never the
projector). Every process (owner included) serves DIMSE and DICOMweb on the
same ports through SO_REUSEPORT listening sockets, so the kernel spreads
associations and connections across them.

A worker ingests on its own (the SQLite log is multi-process safe, blobs are
files, Kafka and S3 are shared anyway). With the api role it reads the
projections through the owner's internal loopback endpoint
(`infra.proxy_index`) when the index is chDB (one process per directory), or
straight from the ClickHouse server otherwise. A worker of an ingest-only
node needs no index and no owner endpoint at all.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from api.dimse.balance import SharedListener
from api.roles import (
    API,
    CheckpointWatcher,
    NoFeed,
    NoIndex,
    ProjectionFeed,
    front_end_roles,
    is_embedded_index,
)
from api.wiring import Archive
from infra.clickhouse import ClickHouseStore
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.owner_state import OwnerState
from infra.ports import Position, ProjectionStore
from infra.proxy_index import OwnerProjectionStore
from infra.settings import Settings
from ingest.service import IngestService
from projections.runner import Projector

log = logging.getLogger("chronicle.workers")

#: How long the owner's internal endpoint keeps an idle connection: longer
#: than the workers' clients keep theirs, so the client always closes first.
INTERNAL_KEEP_ALIVE_SECONDS = 60
#: Set in every worker's environment: this process is a front-end worker.
WORKER_ENV = "CHRONICLE_FRONT_END_WORKER"
#: The owner's internal endpoint, set only when workers read the index through it.
OWNER_URL_ENV = "CHRONICLE_OWNER_URL"
TOKEN_ENV = "CHRONICLE_INTERNAL_TOKEN"
#: The owner's pid, set in every worker's environment (`die_with_owner`).
OWNER_PID_ENV = "CHRONICLE_OWNER_PID"
_PR_SET_PDEATHSIG = 1


def is_worker(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(WORKER_ENV) or env.get(OWNER_URL_ENV))


#: `--workers 0` (the default) stops at this many processes on a large machine.
MAX_AUTO_WORKERS = 8


def front_end_processes(settings: Settings) -> int:
    """`settings.workers`, or with 0 one per core this process may run on."""
    if settings.workers:
        return settings.workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


def worker_count(settings: Settings) -> int:
    """Extra front-end processes to start: none when no front-end role is run."""
    processes = front_end_processes(settings)
    if not front_end_roles(settings.roles):
        if settings.workers > 1:
            log.warning(
                "--workers %d ignored: a projector-only node has no front-ends", settings.workers
            )
        return 0
    return processes - 1


def needs_owner_endpoint(settings: Settings) -> bool:
    """Workers read the index through the owner only with api on chDB."""
    return API in settings.roles and is_embedded_index(settings.index_url)


class OwnerProjector:
    """The projector as a worker sees it: the owner's, over loopback."""

    skipped = 0
    last_error = ""

    def __init__(self, owner: OwnerProjectionStore) -> None:
        self._owner = owner

    def wait(self, target: Position, timeout: float) -> bool:
        return self._owner.wait(target, timeout)

    def checkpoint(self) -> dict[int, int]:
        return self._owner.checkpoint()

    def start(self) -> None:
        """The owner runs the projector."""

    def stop(self) -> None:
        """The owner runs the projector."""

    def reload(self) -> None:
        """The owner runs the projector."""

    def run_until(self, target: Position, progress: Callable[[int], None] | None = None) -> None:
        """The owner projects; wait for it."""
        self._owner.wait(target, 60.0)


def open_worker_archive(settings: Settings, owner_url: str | None, token: str) -> Archive:
    """A worker's Archive: the node's front-end roles, never a projector."""
    roles = front_end_roles(settings.roles)
    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    ingest = IngestService.from_settings(settings, event_log, blobs)
    index, feed = _projection_view(settings, roles, owner_url, token)
    return Archive(settings, event_log, blobs, index, ingest, feed, roles=roles)


def _projection_view(
    settings: Settings, roles: frozenset[str], owner_url: str | None, token: str
) -> tuple[ProjectionStore, ProjectionFeed]:
    if API not in roles:
        return NoIndex(), NoFeed()
    if owner_url:
        owner = OwnerProjectionStore(owner_url, token, state=OwnerState.from_env())
        return owner, OwnerProjector(owner)
    index = open_projection_store(settings.index_url)
    return index, CheckpointWatcher(index)


@dataclass
class WorkerPool:
    """The owner's side: an internal endpoint and the worker processes."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    owner_url: str = ""
    _server: object | None = None

    def start_internal(self, archive: Archive) -> None:
        import uvicorn

        from api.internal import create_internal_app

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.owner_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # Workers' clients drop idle connections after 5 s (httpx's default);
        # uvicorn's own default is also 5 s, and a worker sending on a
        # connection the owner was closing that moment got a reset.
        config = uvicorn.Config(
            create_internal_app(archive, self.token),
            log_level="warning",
            access_log=False,
            timeout_keep_alive=INTERNAL_KEEP_ALIVE_SECONDS,
        )
        server = uvicorn.Server(config)
        self._server = server
        threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="internal-http", daemon=True
        ).start()

    def spawn(
        self,
        count: int,
        argv: list[str],
        listeners: Sequence[SharedListener] = (),
        state: OwnerState | None = None,
    ) -> None:
        """Start `count` workers; with `listeners` (DIMSE, HTTP), each serves on
        those sockets (inherited) from its own slot of their load boards, the
        owner's being 0; with `state`, they follow the owner's index writes and
        checkpoint there."""
        env = {**os.environ, WORKER_ENV: "1", OWNER_PID_ENV: str(os.getpid())}
        if self.owner_url:
            env.update({OWNER_URL_ENV: self.owner_url, TOKEN_ENV: self.token})
        if state is not None:
            env.update(state.env())
        fds = (*(fd for one in listeners for fd in one.fds), *((state.fd,) if state else ()))
        for i in range(count):
            command = [sys.executable, "-m", "api.cli", *argv]
            shared = {k: v for one in listeners for k, v in one.env_for(i + 1).items()}
            self.processes.append(subprocess.Popen(command, env={**env, **shared}, pass_fds=fds))
            log.info("started front-end worker %d (pid %d)", i + 1, self.processes[-1].pid)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]


def share_owner_state(archive: Archive) -> OwnerState:
    """The owner's index writes and checkpoint, published for its workers."""
    state = OwnerState.create()
    if isinstance(archive.index, ClickHouseStore):
        archive.index.published = state
    if isinstance(archive.projector, Projector):
        archive.projector.published = state
        state.publish_checkpoint(archive.projector.checkpoint())
    return state


def die_with_owner(environ: Mapping[str, str] | None = None) -> None:
    """A worker must not outlive its owner (killed, crashed): it would keep the
    ports, and its index reads and checkpoint would go nowhere. On Linux the
    kernel sends it SIGTERM when the owner dies; if the owner is already gone,
    it stops now."""
    env = os.environ if environ is None else environ
    owner = env.get(OWNER_PID_ENV)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the owner's stop() ends us
        return
    if owner and os.getppid() != int(owner):
        os.kill(os.getpid(), signal.SIGTERM)
