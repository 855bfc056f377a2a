"""What the WADO-RS routers share (`api.wado`, `api.frames`): finding the
instances a URL names, problem responses, and the URLs put in responses."""

from __future__ import annotations

from fastapi import Request, Response

from api.catalog import InstanceRow, Lister, list_instances, prepared_metadata
from api.deps import ArchiveDep
from api.negotiation import Refusal
from api.problems import lagging_headers, problem
from infra.errors import Invalid, NotFound, Unavailable
from schemas.uids import check_uid

#: Failures answered as problems: NotFound here means a stored object vanished (500).
REFUSALS = (Refusal, NotFound, Unavailable)


def find_rows(
    archive: ArchiveDep,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    lister: Lister = list_instances,
) -> tuple[list[InstanceRow], dict[str, str]]:
    """Validate UIDs, wait for read-your-writes, find the instances (or refuse)."""
    study, series, instance = _checked(study, series, instance)
    headers = lagging_headers(archive.read_barrier())
    try:
        rows = lister(archive.index, study, series, instance)
    except Unavailable as exc:
        raise Refusal(503, "Service Unavailable", str(exc), headers) from exc
    if not rows:
        level = "instance" if instance else "series" if series else "study"
        raise Refusal(404, "Not Found", f"no such {level}", headers)
    return rows, headers


def find_prepared(
    archive: ArchiveDep, study: str, series: str | None
) -> tuple[bytes | None, dict[str, str]]:
    """Validate UIDs, wait for read-your-writes, read the study's or series'
    prepared /metadata (`catalog.prepared_metadata`; None: use find_rows)."""
    study, series, _ = _checked(study, series, None)
    headers = lagging_headers(archive.read_barrier())
    try:
        return prepared_metadata(archive.index, study, series), headers
    except Unavailable as exc:
        raise Refusal(503, "Service Unavailable", str(exc), headers) from exc


def _checked(
    study: str, series: str | None, instance: str | None
) -> tuple[str, str | None, str | None]:
    try:
        return (
            check_uid(study, "StudyInstanceUID"),
            None if series is None else check_uid(series, "SeriesInstanceUID"),
            None if instance is None else check_uid(instance, "SOPInstanceUID"),
        )
    except Invalid as exc:
        raise Refusal(400, "Bad Request", str(exc)) from exc


def answer(exc: Exception, headers: dict[str, str] | None = None) -> Response:
    """The problem response for one of REFUSALS."""
    refusal = _as_refusal(exc)
    extra = {**refusal.headers, **(headers or {})}
    if refusal.status == 503:
        extra["Retry-After"] = "5"
    return problem(refusal.status, refusal.title, refusal.detail, extra or None)


def _as_refusal(exc: Exception) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, NotFound):
        return Refusal(500, "Internal Server Error", f"stored object missing: {exc}")
    return Refusal(503, "Service Unavailable", str(exc))


def base_url(archive: ArchiveDep, request: Request) -> str:
    public: str = archive.settings.public_url
    return (public or str(request.base_url)).rstrip("/") + "/dicomweb"


def instance_url(base: str, row: InstanceRow) -> str:
    return (
        f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )
