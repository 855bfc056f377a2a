"""FastAPI dependencies: the Archive built by the app factory, nothing global."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.wiring import Archive


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(get_archive)]
