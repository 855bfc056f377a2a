"""Composition root: settings -> adapters -> services. Nothing imports api."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from api.dimse.commitment import DimseCourier, is_storage_sop_class
from api.roles import (
    API,
    PROJECTOR,
    CheckpointWatcher,
    NoFeed,
    NoIndex,
    ProjectionFeed,
    is_embedded_index,
)
from infra.errors import Unavailable
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog, ProjectionStore
from infra.settings import ROLES, Settings
from ingest.service import IngestService
from projections.commitment import REACTOR, CommitmentReactor
from projections.commitment_rules import ReportPolicy
from projections.partitions import PartitionSource
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
    #: The Projector where this process projects; a view of it elsewhere.
    projector: ProjectionFeed
    #: The storage commitment reactor (projector role only; None elsewhere).
    commitment: CommitmentReactor | None = None
    #: The roles this process runs (api/roles.py); front-ends follow them.
    roles: frozenset[str] = frozenset(ROLES)
    _closed: bool = field(default=False, repr=False)

    @property
    def follows_projections(self) -> bool:
        """Whether this process sees the projector's position (api or projector)."""
        return API in self.roles or PROJECTOR in self.roles

    def read_barrier(self) -> bool:
        """Read-your-writes: wait until projections cover the log end seen now.

        Returns True when caught up, False when the bounded wait
        (settings.read_wait_seconds) ran out: the caller answers with what it
        has and says so (DICOMweb: Warning 299 header; DIMSE: a log line).
        """
        try:
            target = self.log.end()
        except Unavailable as exc:
            # Reads need the index, not the log: answer with what is projected.
            log.warning("event log unreachable (%s); answering with what is projected", exc)
            return False
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


def open_archive(
    settings: Settings, *, start_projector: bool = True, roles: Collection[str] = ROLES
) -> Archive:
    """Open what `roles` need, apply migrations, start the projector thread.

    `chronicle serve` passes `settings.roles`; every other command wants the
    whole archive. Without the api and projector roles the projection store
    is never opened (an ingest node keeps no local state). With api but no
    projector (only on a ClickHouse server, see api.roles.check_roles)
    read-your-writes follows the projector's checkpoint rows.
    """
    roles = frozenset(roles)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    event_log = open_event_log(settings.log_url)
    try:
        blobs = open_blob_store(settings.blob_url)
    except BaseException:
        event_log.close()
        raise
    ingest = IngestService.from_settings(settings, event_log, blobs)
    if API not in roles and PROJECTOR not in roles:
        return Archive(settings, event_log, blobs, NoIndex(), ingest, NoFeed(), roles=roles)
    try:
        index = open_projection_store(settings.index_url)
    except BaseException:
        blobs.close()
        event_log.close()
        raise
    if PROJECTOR not in roles:
        watcher = CheckpointWatcher(index)
        return Archive(settings, event_log, blobs, index, ingest, watcher, roles=roles)
    group, reactor_log = _projector_group(settings, event_log, index, start_projector)
    projector = Projector(
        event_log, index, blobs=blobs, batch=settings.projector_batch, partitions=group
    )
    commitment = _commitment_reactor(settings, reactor_log, index, blobs, projector)
    if start_projector:
        projector.start()
        commitment.start()
    return Archive(settings, event_log, blobs, index, ingest, projector, commitment, roles)


def _projector_group(
    settings: Settings, event_log: EventLog, index: ProjectionStore, start_projector: bool
) -> tuple[PartitionSource | None, EventLog]:
    """Projector processes sharing a ClickHouse server split a Kafka topic's
    partitions in a consumer group (docs/scale-out.md, "Several projectors"); the
    commitment reactor then follows the same share. On chDB one process projects
    every partition; so does a command that projects once (start_projector=False)."""
    kafka = settings.log_url.lower().startswith("kafka:")
    if not start_projector or not kafka or is_embedded_index(settings.index_url):
        return None, event_log
    from infra.clickhouse import http_client_args
    from infra.kafka_group import OwnedPartitionsLog
    from infra.kafka_log import KafkaEventLog

    assert isinstance(event_log, KafkaEventLog)
    database = http_client_args(settings.index_url)["database"]
    group = event_log.join_group(
        event_log.options.projector_group or f"chronicle-projector-{database}"
    )
    reactor_checkpoint = CheckpointWatcher(index, name=REACTOR).checkpoint
    return group, OwnedPartitionsLog(event_log, group, reactor_checkpoint)


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
