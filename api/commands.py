"""What each `chronicle` subcommand does, given Settings and its arguments."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tqdm import tqdm

from api import importer, workers
from api.dimse.balance import SharedListener, reuse_port_socket
from api.roles import API, INGEST, PROJECTOR, check_roles, describe
from api.wiring import Archive, open_archive
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.settings import Settings
from projections.replay import replay

if TYPE_CHECKING:
    from api.dimse.server import DimseServer

log = logging.getLogger("chronicle")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    check_roles(settings)
    if workers.is_worker():
        workers.die_with_owner()
        owner_url = os.environ.get(workers.OWNER_URL_ENV) or None
        token = os.environ.get(workers.TOKEN_ENV, "")
        archive = workers.open_worker_archive(settings, owner_url, token)
        return _serve_front_ends(
            archive,
            process="worker",
            listener=SharedListener.from_env(),
            http=SharedListener.from_env(kind="HTTP"),
        )
    archive = open_archive(settings, roles=settings.roles)
    pool = workers.WorkerPool()
    listener: SharedListener | None = None
    http: SharedListener | None = None
    state = None
    try:
        extra = workers.worker_count(settings)
        if extra:
            if workers.needs_owner_endpoint(settings):
                pool.start_internal(archive)
                state = workers.share_owner_state(archive)
            if _serves_dimse(archive):
                listener = SharedListener.open(
                    settings.dimse_host, settings.dimse_port, processes=extra + 1
                )
            http = SharedListener.open(
                settings.http_host, settings.http_port, processes=extra + 1, kind="HTTP"
            )
            shared = [one for one in (listener, http) if one is not None]
            pool.spawn(extra, sys.argv[1:], shared, state)
        return _serve_front_ends(archive, process="owner", listener=listener, http=http)
    finally:
        _exit_if_stuck(SHUTDOWN_SECONDS)
        pool.stop()
        archive.close()


#: How long stopping may take once the front-ends are down. Everything
#: acknowledged is already durable, so a stuck association thread or a report
#: still being retried must not keep the process alive.
SHUTDOWN_SECONDS = 8.0


def _exit_if_stuck(seconds: float) -> None:
    def stuck() -> None:
        log.warning("shutdown still not finished after %.0f s; exiting now", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, stuck)
    timer.daemon = True
    timer.start()


class _Server:
    """uvicorn's Server, minus its re-raising of SIGTERM after shutdown.

    uvicorn re-raises the captured signal once it stops, which would kill the
    process before DIMSE is stopped and the archive closed.
    """

    @staticmethod
    def run(
        config: object, sockets: list[socket.socket], shared: SharedListener | None = None
    ) -> None:
        """Serve on `sockets`, or, with `shared`, on connections accepted from
        the node's shared HTTP socket (api.http_balance)."""
        import uvicorn

        from api.http_balance import BalancedAcceptor

        class Quiet(uvicorn.Server):
            acceptor: BalancedAcceptor | None = None

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=[] if shared is not None else sockets)
                if shared is None or self.should_exit:
                    return
                loop, config = asyncio.get_running_loop(), self.config

                def protocol() -> asyncio.Protocol:
                    return config.http_protocol_class(  # type: ignore[call-arg]
                        config=config,
                        server_state=self.server_state,
                        app_state=self.lifespan.state,
                        _loop=loop,
                    )

                self.acceptor = BalancedAcceptor(shared, loop, protocol)
                self.acceptor.start()

            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                if self.acceptor is not None:
                    await asyncio.to_thread(self.acceptor.stop)
                await super().shutdown(sockets=sockets)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                def stop(signum: int, frame: object) -> None:
                    self.handle_exit(signum, None)

                previous = {
                    sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
                }
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        Quiet(config).run(sockets=sockets)  # type: ignore[arg-type]


def _serve_front_ends(
    archive: Archive,
    *,
    process: str,
    listener: SharedListener | None = None,
    http: SharedListener | None = None,
) -> int:
    """DIMSE and DICOMweb on sockets shared with sibling processes: when the node
    has workers, on the owner's sockets, each with a load board (`listener` for
    DIMSE, api.dimse.balance; `http` for DICOMweb, api.http_balance); a process
    on its own listens on SO_REUSEPORT sockets.

    Which services each serves follows the process's roles: DIMSE storage for
    ingest, DIMSE query/retrieve/commitment for api, none for a projector alone.
    """
    import uvicorn

    from api.app import create_app

    settings = archive.settings
    # Before the siblings know of this process: a full collection here takes a
    # moment, and a connection must not wait for it (http_balance's tie rule).
    _settle_collector()
    if API in archive.roles:
        from api.pending_studies import follow_pending
        from api.study_memory import warm_in_background

        warm_in_background(archive.index)
        follow_pending(archive.log, archive.projector, archive.index)
    dimse = _start_dimse(archive, listener)
    if listener is not None:
        _join_siblings(listener, process)
    if http is not None and process == "owner":
        _join_siblings(http, process)  # the workers' acceptors, before the owner's
    sockets = (
        [] if http is not None else [reuse_port_socket(settings.http_host, settings.http_port)]
    )
    log.info("%s", startup_line(archive, process, dimse is not None))
    try:
        config = uvicorn.Config(
            create_app(archive), log_level="info", access_log=False, timeout_graceful_shutdown=5
        )
        _Server.run(config, sockets, http)
    finally:
        if process == "worker":
            _exit_if_stuck(SHUTDOWN_SECONDS / 2)
        if dimse is not None:
            dimse.stop()
        if process == "worker":
            archive.close()
    return 0


def _settle_collector() -> None:
    """Leave what start-up made (modules, pydicom's dictionaries, the app) out of
    Python's cycle collection: a full collection walks every tracked object, and
    a serving process's own caches are enough for it to walk."""
    gc.collect()
    gc.freeze()


#: How long the owner waits for its workers to listen before it serves anyway.
WORKERS_READY_SECONDS = 60.0


def _join_siblings(listener: SharedListener, process: str) -> None:
    """A worker says it listens; the owner waits for every worker before its HTTP
    front-end (what readiness probes see) starts."""
    if process == "worker":
        listener.board.mark_ready()
        return
    missing = listener.board.wait_ready(WORKERS_READY_SECONDS)
    if missing:
        log.warning("workers %s not listening for %s after %.0f s; serving without them",
                    missing, listener.kind, WORKERS_READY_SECONDS)  # fmt: skip
    else:
        log.info("all %d front-end processes listening for %s", listener.board.slots,
                 listener.kind)  # fmt: skip


def _serves_dimse(archive: Archive) -> bool:
    return INGEST in archive.roles or API in archive.roles


def _start_dimse(archive: Archive, listener: SharedListener | None = None) -> DimseServer | None:
    from api.dimse.server import start_dimse

    if not _serves_dimse(archive):
        return None
    storage, query = INGEST in archive.roles, API in archive.roles
    return start_dimse(
        archive, reuse_port=listener is None, storage=storage, query=query, shared=listener
    )


def startup_line(archive: Archive, process: str, with_dimse: bool) -> str:
    """What this process serves, roles first: the line operators grep for."""
    settings = archive.settings
    http = f"http://{settings.http_host}:{settings.http_port}"
    served = [f"DICOMweb {http}/dicomweb" if archive.roles - {PROJECTOR} else f"health {http}"]
    if with_dimse:
        served.append(f"DIMSE {settings.ae_title} on {settings.dimse_host}:{settings.dimse_port}")
    head = f"Chronicle {process} (pid {os.getpid()}) roles {describe(archive.roles)}"
    return f"{head}: {', '.join(served)}"


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    if args.url:
        summary = importer.import_via_stow(args.paths, args.url)
    else:
        summary = importer.import_embedded(settings, args.paths)
    print(summary.render())
    return 0 if summary.ok else 1


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    index = open_projection_store(settings.index_url)
    try:
        total = sum(event_log.end().values())
        with tqdm(total=total, unit="event", desc="replay") as bar:
            embedded = settings.index_url.startswith("chdb:")
            applied = replay(event_log, index, blobs, progress=bar.update, merge=embedded)
        print(f"replayed {applied} events; projections swapped in")
        return 0
    finally:
        index.close()
        blobs.close()
        event_log.close()


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from api.check import check_archive

    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    try:
        report = check_archive(event_log, blobs, verify_hashes=not args.quick)
    finally:
        blobs.close()
        event_log.close()
    print(report.render())
    return 0 if report.ok else 1
