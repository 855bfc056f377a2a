"""What each `chronicle` subcommand does, given Settings and its arguments."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from tqdm import tqdm

from api import importer, workers
from api.wiring import Archive, open_archive
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.settings import Settings
from projections.replay import replay

log = logging.getLogger("chronicle")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    owner_url = os.environ.get(workers.OWNER_URL_ENV)
    if owner_url:
        token = os.environ.get(workers.TOKEN_ENV, "")
        archive = workers.open_worker_archive(settings, owner_url, token)
        return _serve_front_ends(archive, role="worker")
    archive = open_archive(settings)
    pool = workers.WorkerPool()
    try:
        if settings.workers > 1:
            pool.start_internal(archive)
            pool.spawn(settings.workers - 1, sys.argv[1:])
        return _serve_front_ends(archive, role="owner")
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
    def run(config: object, sockets: list[socket.socket]) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
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


def _serve_front_ends(archive: Archive, *, role: str) -> int:
    """DIMSE and DICOMweb on SO_REUSEPORT sockets shared with sibling processes."""
    import uvicorn

    from api.app import create_app
    from api.dimse.server import start_dimse

    settings = archive.settings
    dimse = start_dimse(archive, reuse_port=True)
    http_socket = workers.reuse_port_socket(settings.http_host, settings.http_port)
    log.info(
        "Chronicle %s (pid %d): DICOMweb http://%s:%d/dicomweb, DIMSE %s on %s:%d",
        role,
        os.getpid(),
        settings.http_host,
        settings.http_port,
        settings.ae_title,
        settings.dimse_host,
        settings.dimse_port,
    )
    try:
        config = uvicorn.Config(
            create_app(archive), log_level="info", access_log=False, timeout_graceful_shutdown=5
        )
        _Server.run(config, [http_socket])
    finally:
        if role == "worker":
            _exit_if_stuck(SHUTDOWN_SECONDS / 2)
        dimse.stop()
        if role == "worker":
            archive.close()
    return 0


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
            applied = replay(event_log, index, blobs, progress=bar.update)
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
