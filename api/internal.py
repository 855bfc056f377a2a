"""The owner's internal endpoints for its front-end worker processes.

Bound to the owner's private loopback listener only, guarded by a per-run
random token; read-only SQL (SELECT / WITH) and the projector's wait.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from api.wiring import Archive
from infra.errors import ChronicleError, Invalid
from infra.proxy_index import TOKEN_HEADER

_READ_ONLY = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)

router = APIRouter(prefix="/internal")


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(
            body, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS, default=str
        ),
        status_code=status,
        media_type="application/json",
    )


async def _body(request: Request) -> dict[str, Any]:
    token = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(token, request.app.state.internal_token):
        raise PermissionError("bad internal token")
    data: dict[str, Any] = orjson.loads(await request.body())
    return data


@router.post("/query")
async def query(request: Request) -> Response:
    from fastapi.concurrency import run_in_threadpool

    try:
        body = await _body(request)
    except PermissionError:
        return _json({"detail": "forbidden"}, 403)
    sql = str(body.get("sql", ""))
    if not _READ_ONLY.match(sql) or ";" in sql.rstrip().rstrip(";"):
        return _json({"detail": "only one SELECT statement"}, 400)
    archive: Archive = request.app.state.archive
    try:
        dicts = await run_in_threadpool(archive.index.query_dicts, sql, body.get("parameters"))
    except Invalid as exc:
        return _json({"detail": str(exc)}, 400)
    except ChronicleError as exc:
        return _json({"detail": str(exc)}, 503)
    columns = list(dicts[0]) if dicts else []
    return _json({"columns": columns, "rows": [list(d.values()) for d in dicts]})


@router.post("/wait")
async def wait(request: Request) -> Response:
    from fastapi.concurrency import run_in_threadpool

    try:
        body = await _body(request)
    except PermissionError:
        return _json({"detail": "forbidden"}, 403)
    archive: Archive = request.app.state.archive
    target = {int(p): int(o) for p, o in body.get("target", {}).items()}
    timeout = min(float(body.get("timeout", 5.0)), 60.0)
    fresh = await run_in_threadpool(archive.projector.wait, target, timeout)
    return _json({"fresh": fresh})


@router.post("/checkpoint")
async def checkpoint(request: Request) -> Response:
    try:
        await _body(request)
    except PermissionError:
        return _json({"detail": "forbidden"}, 403)
    archive: Archive = request.app.state.archive
    return _json({"checkpoint": {str(p): o for p, o in archive.projector.checkpoint().items()}})


def create_internal_app(archive: Archive, token: str) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.archive = archive
    app.state.internal_token = token
    app.include_router(router)
    return app
