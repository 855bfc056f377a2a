"""Composition root: settings -> adapters -> services. Nothing imports api."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog, ProjectionStore
from infra.settings import Settings
from ingest.service import IngestService
from projections.runner import Projector

log = logging.getLogger("chronicle")


@dataclass
class Archive:
    """Everything a front-end needs, built once per process from Settings."""

    settings: Settings
    log: EventLog
    blobs: BlobStore
    index: ProjectionStore
    ingest: IngestService
    projector: Projector
    _closed: bool = field(default=False, repr=False)

    def read_barrier(self) -> bool:
        """Read-your-writes: wait until projections cover the log end seen now.

        Returns True when caught up, False when the bounded wait
        (settings.read_wait_seconds) ran out: the caller answers with what it
        has and says so (DICOMweb: Warning 299 header; DIMSE: a log line).
        """
        target = self.log.end()
        fresh = self.projector.wait(target, timeout=self.settings.read_wait_seconds)
        if not fresh:
            log.warning("projection lagging behind %s; answering with what is projected", target)
        return fresh

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.projector.stop()
        self.index.close()
        self.blobs.close()
        self.log.close()


def open_archive(settings: Settings, *, start_projector: bool = True) -> Archive:
    """Open the three backends, apply migrations, start the projector thread."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    index = open_projection_store(settings.index_url)
    ingest = IngestService(
        event_log,
        blobs,
        site=settings.site,
        node=settings.node,
        min_free_bytes=settings.min_free_bytes,
        space_path=settings.data_dir,
        default_charset=settings.default_character_set,
    )
    projector = Projector(event_log, index, blobs=blobs, batch=settings.projector_batch)
    if start_projector:
        projector.start()
    return Archive(settings, event_log, blobs, index, ingest, projector)
