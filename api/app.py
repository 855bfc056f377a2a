"""The FastAPI app factory: routers per resource, nothing built at import."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import frames, health, qido, stow, wado
from api.rendered import router as rendered_router
from api.wado_uri import router as wado_uri_router
from api.wiring import Archive


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
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(frames.router)
    app.include_router(stow.router)
    app.include_router(rendered_router)
    app.include_router(wado_uri_router)
    return app
