"""Composition root: settings -> adapters -> services. Nothing imports api."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from api.dimse.commitment import DimseCourier, is_storage_sop_class
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog, ProjectionStore
from infra.settings import Settings
from ingest.service import IngestService
from projections.commitment import CommitmentReactor
from projections.commitment_rules import ReportPolicy
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
    #: The storage commitment reactor (owner process only; None in workers).
    commitment: CommitmentReactor | None = None
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
        if self.commitment is not None:
            self.commitment.stop()
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
    ingest = IngestService.from_settings(settings, event_log, blobs)
    projector = Projector(event_log, index, blobs=blobs, batch=settings.projector_batch)
    commitment = _commitment_reactor(settings, event_log, index, blobs, projector)
    if start_projector:
        projector.start()
        commitment.start()
    return Archive(settings, event_log, blobs, index, ingest, projector, commitment)


def _commitment_reactor(
    settings: Settings,
    event_log: EventLog,
    index: ProjectionStore,
    blobs: BlobStore,
    projector: Projector,
) -> CommitmentReactor:
    courier = DimseCourier(settings)
    return CommitmentReactor(
        settings,
        event_log,
        index,
        blobs,
        projector,
        courier,
        is_supported_class=is_storage_sop_class,
        policy=ReportPolicy(
            attempts=settings.commitment_report_attempts,
            first_delay=settings.commitment_retry_delay,
            backoff=settings.commitment_retry_backoff,
            max_delay=settings.commitment_retry_max_delay,
        ),
    )
