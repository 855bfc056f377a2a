"""The FastAPI app factory: routers per resource, nothing built at import."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware

from api import frames, health, qido, stow, wado
from api.admin import router as admin_router
from api.problems import problem
from api.rendered import router as rendered_router
from api.roles import API, INGEST, describe
from api.wado_uri import router as wado_uri_router
from api.wiring import Archive

#: (role, router) in mounting order; every process serves /healthz and /metrics.
ROLE_ROUTERS = (
    (API, qido.router),
    (API, wado.router),
    (API, frames.router),
    (INGEST, stow.router),
    (API, rendered_router),
    (API, wado_uri_router),
    (API, admin_router),
)


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="Chronicle",
        summary="Event-sourced DICOM archive: DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        version="0.1.0",
    )
    app.state.archive = archive
    if archive.settings.cors_origins:
        # Browser viewers read across origins; permissive for reads by default.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=archive.settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Warning", "Content-Location", "Content-Range"],
        )
    app.include_router(health.router)
    for role, router in ROLE_ROUTERS:
        if role in archive.roles:
            app.include_router(router)
    app.include_router(elsewhere_router(archive.roles))
    return app


def elsewhere_router(roles: frozenset[str]) -> APIRouter:
    """404s naming the role that serves what this process does not.

    Mounted last, so it answers only what no role router took: without it a
    GET /dicomweb/studies on an ingest node would be 405 (STOW's POST owns the
    path), which hides that QIDO-RS simply lives on another node.
    """
    router = APIRouter(include_in_schema=False)
    missing = [
        (role, methods)
        for role, methods in ((API, ["GET", "HEAD"]), (INGEST, ["POST"]))
        if role not in roles
    ]
    for role, methods in missing:
        answer = _elsewhere(f"this node runs roles {describe(roles)}; an {role} node serves this")
        router.add_api_route("/dicomweb/{path:path}", answer, methods=methods)
        if role == API:
            router.add_api_route("/wado", answer, methods=methods)
    return router


def _elsewhere(detail: str) -> Callable[[], Response]:
    def elsewhere() -> Response:
        return problem(404, "Not Found", detail)

    return elsewhere
