"""What the WADO-RS routers share (`api.wado`, `api.frames`): finding the
instances a URL names, problem responses, and the URLs put in responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request, Response

from api.catalog import InstanceRow, Lister, list_instances, list_metadata, prepared_metadata
from api.deps import ArchiveDep
from api.negotiation import Refusal
from api.problems import lagging_headers, problem
from infra.errors import Invalid, NotFound, Unavailable
from schemas.uids import check_uid

#: Failures answered as problems: NotFound here means a stored object vanished (500).
REFUSALS = (Refusal, NotFound, Unavailable)
T = TypeVar("T")


def find_rows(
    archive: ArchiveDep, study: str, series: str | None, instance: str | None
) -> tuple[list[InstanceRow], dict[str, str]]:
    """Validate UIDs, wait for read-your-writes, find the instances (or refuse)."""
    study, series, instance = _checked(study, series, instance)
    headers = lagging_headers(archive.read_barrier())
    return _rows(archive, list_instances, (study, series, instance), headers), headers


def find_metadata(
    archive: ArchiveDep, study: str, series: str | None, instance: str | None, *, prepared: bool
) -> tuple[bytes | None, list[InstanceRow], dict[str, str]]:
    """find_rows for /metadata: with `prepared`, a study's or series' prepared
    document when it has one (`catalog.prepared_metadata`), else the rows
    with their metadata (`catalog.list_metadata`)."""
    study, series, instance = _checked(study, series, instance)
    headers = lagging_headers(archive.read_barrier())
    if prepared and instance is None:
        document = _reading(lambda: prepared_metadata(archive.index, study, series), headers)
        if document is not None:
            return document, [], headers
    return None, _rows(archive, list_metadata, (study, series, instance), headers), headers


def _rows(
    archive: ArchiveDep,
    lister: Lister,
    place: tuple[str, str | None, str | None],
    headers: dict[str, str],
) -> list[InstanceRow]:
    rows = _reading(lambda: lister(archive.index, *place), headers)
    if not rows:
        _, series, instance = place
        level = "instance" if instance else "series" if series else "study"
        raise Refusal(404, "Not Found", f"no such {level}", headers)
    return rows


def _reading(read: Callable[[], T], headers: dict[str, str]) -> T:
    try:
        return read()
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
