"""/healthz (roles, log end, projection lag) and /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.deps import ArchiveDep
from api.roles import describe
from api.wiring import Archive
from infra.errors import ChronicleError

router = APIRouter()


@router.get("/healthz")
def healthz(archive: ArchiveDep) -> Response:
    """The process's roles, the log end and, where it follows them, the projections."""
    body: dict[str, object] = {"status": "ok", "roles": list(roles_of(archive))}
    try:
        end = archive.log.end()
        body["log_end"] = {str(p): o for p, o in end.items()}
        if archive.follows_projections:
            body.update(_projection_health(archive, end))
    except ChronicleError as exc:
        down = {**body, "status": "unavailable", "detail": str(exc)}
        return Response(orjson.dumps(down), status_code=503, media_type="application/json")
    return Response(orjson.dumps(body), media_type="application/json")


def roles_of(archive: Archive) -> list[str]:
    return describe(archive.roles).split(",")


def _projection_health(archive: Archive, end: dict[int, int]) -> dict[str, object]:
    checkpoint = archive.projector.checkpoint()
    return {
        "checkpoint": {str(p): o for p, o in checkpoint.items()},
        "projection_lag": _lag(end, checkpoint),
        "projection_error": archive.projector.last_error,
        "skipped_events": archive.projector.skipped,
    }


def _lag(end: dict[int, int], checkpoint: dict[int, int]) -> int:
    return sum(max(0, o - checkpoint.get(p, 0)) for p, o in end.items())


class ArchiveCollector(Collector):
    """Reads the archive's state at scrape time: nothing to keep in sync."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    def collect(self) -> Iterator[GaugeMetricFamily]:
        end = self._archive.log.end()
        ends = GaugeMetricFamily(
            "chronicle_log_end_offset", "Next offset of the event log", labels=["partition"]
        )
        for p, o in end.items():
            ends.add_metric([str(p)], o)
        yield ends
        roles = GaugeMetricFamily("chronicle_role", "Roles this process runs", labels=["role"])
        for role in roles_of(self._archive):
            roles.add_metric([role], 1)
        yield roles
        if not self._archive.follows_projections:
            return  # an ingest node has no projections to report on
        checkpoint = self._archive.projector.checkpoint()
        lag = GaugeMetricFamily("chronicle_projection_lag_events", "Events not yet projected")
        lag.add_metric([], _lag(end, checkpoint))
        yield lag
        skipped = GaugeMetricFamily(
            "chronicle_projection_skipped_events", "Unreadable events the projector skipped"
        )
        skipped.add_metric([], self._archive.projector.skipped)
        yield skipped


def metrics_registry(archive: Archive) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ArchiveCollector(archive))
    return registry


@router.get("/metrics")
def metrics(archive: ArchiveDep) -> Response:
    registry = metrics_registry(archive)
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
