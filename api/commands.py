"""What each `chronicle` subcommand does, given Settings and its arguments."""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from api import importer
from api.wiring import open_archive
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.settings import Settings
from projections.replay import replay

log = logging.getLogger("chronicle")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.dimse.server import start_dimse

    archive = open_archive(settings)
    dimse = start_dimse(archive)
    log.info(
        "Chronicle serving DICOMweb on http://%s:%d/dicomweb and DIMSE %s on %s:%d",
        settings.http_host,
        settings.http_port,
        settings.ae_title,
        settings.dimse_host,
        settings.dimse_port,
    )
    try:
        config = uvicorn.Config(
            create_app(archive),
            host=settings.http_host,
            port=settings.http_port,
            log_level="info",
            access_log=False,
        )
        uvicorn.Server(config).run()
    finally:
        dimse.stop()
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


