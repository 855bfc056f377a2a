"""Administration resources (JSON, not DICOMweb): `GET /admin/conflicts`.

A conflict is one SOP Instance UID kept with two or more different datasets
(docs/conformance.md 3.1.5). The report lists each version with where it came
from and which one queries show; `chronicle conflicts` prints the same report.
"""

from __future__ import annotations

import logging
from typing import Protocol

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import ArchiveDep
from api.problems import lagging_headers, problem
from infra.errors import Invalid, Unavailable
from infra.ports import ProjectionStore
from projections.conflicts import DEFAULT_LIMIT, ConflictPage, check_page, list_conflicts

log = logging.getLogger("chronicle.admin")
router = APIRouter(prefix="/admin")


class Readable(Protocol):
    """What the report needs of api.wiring.Archive."""

    index: ProjectionStore

    def read_barrier(self) -> bool: ...


@router.get("/conflicts")
def conflicts(request: Request, archive: ArchiveDep) -> Response:
    return conflicts_response(request, archive)


def conflicts_response(request: Request, archive: Readable) -> Response:
    try:
        limit = _integer(request, "limit", DEFAULT_LIMIT)
        offset = _integer(request, "offset", 0)
        check_page(limit, offset)
    except Invalid as exc:
        return problem(400, "Bad Request", str(exc))
    fresh = archive.read_barrier()
    try:
        page: ConflictPage = list_conflicts(archive.index, limit=limit, offset=offset)
    except Unavailable as exc:
        return problem(503, "Service Unavailable", str(exc), headers={"Retry-After": "5"})
    except Invalid as exc:
        log.exception("conflict report failed")
        return problem(500, "Internal Server Error", str(exc))
    return Response(
        orjson.dumps(page.to_json()),
        media_type="application/json",
        headers=lagging_headers(fresh),
    )


def _integer(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise Invalid(f"{name} must be an integer, not {text!r}") from None
