"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Answers are DICOM JSON (application/dicom+json, the default) or one PS3.19
Native DICOM Model part per match in multipart/related;
type="application/dicom+xml". No match is 204 No Content (current PS3.18);
a query that cannot be understood is a 400 problem. Endpoints are plain
`def` so FastAPI runs them, and the read barrier's wait, in its thread pool.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import ArchiveDep
from api.matching import Page, parse_qido, search_page
from api.negotiation import MediaRange, first_offer, parse_accept, related_type
from api.pending_studies import without_waiting
from api.problems import lagging_headers, problem
from api.query_model import Level, Query
from api.study_json import (
    JsonPage,
    absolute_retrieve_url,
    answered_as_json,
    search_studies_json,
)
from api.study_snapshot import Snapshot
from infra.errors import Invalid, Unavailable
from infra.ports import ProjectionStore
from infra.settings import Settings
from schemas.dicom_xml import json_to_xml
from schemas.uids import check_uid

log = logging.getLogger("chronicle.qido")
router = APIRouter(prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MORE_RESULTS = '299 chronicle "There are additional results that can be requested"'
_JSON_RANGES = frozenset({"*/*", "application/*", "application/json", DICOM_JSON})
_XML_RANGES = frozenset({"multipart/related", "multipart/*"})


class Searchable(Protocol):
    """What a search needs of api.wiring.Archive."""

    settings: Settings
    index: ProjectionStore

    def read_barrier(self) -> bool: ...


@router.get("/studies")
def search_studies(request: Request, archive: ArchiveDep) -> Response:
    return _search(request, archive, Level.STUDY)


@router.get("/series")
def search_series(request: Request, archive: ArchiveDep) -> Response:
    return _search(request, archive, Level.SERIES)


@router.get("/instances")
def search_instances(request: Request, archive: ArchiveDep) -> Response:
    return _search(request, archive, Level.IMAGE)


@router.get("/studies/{study}/series")
def search_study_series(request: Request, archive: ArchiveDep, study: str) -> Response:
    return _search(request, archive, Level.SERIES, study=study)


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, archive: ArchiveDep, study: str) -> Response:
    return _search(request, archive, Level.IMAGE, study=study)


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    return _search(request, archive, Level.IMAGE, study=study, series=series)


def _without_waiting(archive: Searchable, query: Query) -> Snapshot | None:
    """A study search nothing pending can change needs no read-your-writes
    wait: the study memory's rows to answer it from, else None."""
    if not answered_as_json(query):
        return None
    event_log = getattr(archive, "log", None)
    projector = getattr(archive, "projector", None)
    return without_waiting(event_log, projector, archive.index, query)


def _search(
    request: Request,
    archive: Searchable,
    level: Level,
    *,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    reply = negotiate(request.headers.get("accept"))
    if reply is None:
        detail = f'QIDO-RS answers {DICOM_JSON} or multipart/related; type="{DICOM_XML}"'
        return problem(406, "Not Acceptable", detail)
    try:
        query = parse_qido(
            level,
            request.query_params.multi_items(),
            study_uid=check_uid(study, "StudyInstanceUID") if study is not None else None,
            series_uid=check_uid(series, "SeriesInstanceUID") if series is not None else None,
        )
    except Invalid as exc:
        return problem(400, "Bad Request", str(exc))
    early = _without_waiting(archive, query) if reply == "json" else None
    fresh = early is not None or archive.read_barrier()
    base = dicomweb_base(request, archive.settings)
    try:
        page = _page(archive.index, query, reply, base, early)
    except Invalid as exc:
        # The query was validated above, so the index refusing it is our fault.
        log.exception("QIDO-RS search failed: %s", request.url)
        return problem(500, "Internal Server Error", str(exc))
    except Unavailable as exc:
        return problem(503, "Service Unavailable", str(exc), headers={"Retry-After": "5"})
    headers = _warnings(fresh, page.more)
    if isinstance(page, JsonPage):
        if not page.matches:
            return Response(status_code=204, headers=headers)
        return Response(page.body, media_type=DICOM_JSON, headers=headers)
    if not page.results:
        return Response(status_code=204, headers=headers)
    results = [absolute_retrieve_url(obj, base) for obj in page.results]
    if reply == "json":
        return Response(orjson.dumps(results), media_type=DICOM_JSON, headers=headers)
    boundary = uuid.uuid4().hex
    return Response(
        _multipart_xml(results, boundary),
        headers={
            **headers,
            "Content-Type": f'multipart/related; type="{DICOM_XML}"; boundary={boundary}',
        },
    )


def _page(
    index: ProjectionStore, query: Query, reply: str, base: str, snapshot: Snapshot | None
) -> Page | JsonPage:
    """A study search answered in DICOM JSON is joined from kept JSON text
    (api.study_json), unless it needs stored metadata; the rest as dicts."""
    found = search_studies_json(index, query, base, snapshot) if reply == "json" else None
    return found if found is not None else search_page(index, query)


def _warnings(fresh: bool, more: bool) -> dict[str, str]:
    warnings = [w for w in (lagging_headers(fresh).get("Warning"), more and MORE_RESULTS) if w]
    return {"Warning": ", ".join(warnings)} if warnings else {}


def negotiate(accept: str | None) -> str | None:
    """'json', 'xml' or None (406) for an Accept header, by q-value then order."""
    return first_offer(parse_accept(accept), _reply_kind)


def _reply_kind(media: MediaRange) -> str | None:
    if media.media_type in _JSON_RANGES:
        return "json"
    if media.media_type in _XML_RANGES and related_type(media, DICOM_XML) == DICOM_XML:
        return "xml"
    return None


def dicomweb_base(request: Request, settings: Settings) -> str:
    """The public DICOMweb root: --public-url behind a proxy, else the request's base."""
    root = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{root}/dicomweb"


def _multipart_xml(results: list[dict[str, Any]], boundary: str) -> bytes:
    parts = [
        f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode() + json_to_xml(obj) + b"\r\n"
        for obj in results
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()
