"""Rendered and thumbnail resources (PS3.18 9.5 / 10.4, Supplement 203).

Instances render as their category allows (see api.render_media): images as
image/jpeg (default), image/png or image/gif (animated over every frame of a
multi-frame instance; the still types show the first frame), structured
reports as text/html (default) or text/plain, encapsulated documents as the
document itself. Studies and series answer multipart/related, a part per
renderable instance; a frame list answers one image, an animated GIF or a
multipart with a part per frame. Thumbnails are one image fitted to 128 x 128
(or the viewport given): a series shows its middle image instance, a study the
middle image instance of its lowest-numbered series with images, an instance
its middle frame; what has no pixels gets a labelled placeholder.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset

from api.catalog import InstanceRow, list_instances, load_metadata
from api.deps import ArchiveDep
from api.negotiation import MediaRange, Refusal, parse_accept
from api.problems import lagging_headers, problem
from api.render import encode_images
from api.render_media import (
    IMAGE_OFFERS,
    choose_parts,
    choose_single,
    kind_of_dataset,
    kind_of_metadata,
    part_type,
)
from api.render_output import (
    closing,
    frames_body,
    multipart_type,
    not_acceptable,
    part,
    render_instance,
    single_body,
)
from api.render_params import RenderQuery, parse_frame_list, parse_render_query
from api.render_thumbnail import THUMBNAIL_VIEWPORT, representative, thumbnail_image
from infra.errors import Invalid, NotFound, Unavailable
from schemas.uids import check_uid

log = logging.getLogger("chronicle.rendered")
router = APIRouter(prefix="/dicomweb")

_REFUSALS = (Refusal, NotFound, Unavailable)


@dataclass(frozen=True, slots=True)
class Target:
    study: str
    series: str | None = None
    instance: str | None = None
    frames: str | None = None  # the frame list as written in the URL


# -- common prelude --------------------------------------------------------------


def _rows(archive: ArchiveDep, target: Target) -> tuple[list[InstanceRow], dict[str, str]]:
    """Validate UIDs, wait for read-your-writes, find the instances (or refuse)."""
    try:
        study = check_uid(target.study, "StudyInstanceUID")
        series = None if target.series is None else check_uid(target.series, "SeriesInstanceUID")
        sop = None if target.instance is None else check_uid(target.instance, "SOPInstanceUID")
    except Invalid as exc:
        raise Refusal(400, "Bad Request", str(exc)) from exc
    headers = lagging_headers(archive.read_barrier())
    try:
        rows = list_instances(archive.index, study, series, sop)
    except Unavailable as exc:
        raise Refusal(503, "Service Unavailable", str(exc), headers) from exc
    if not rows:
        level = "instance" if sop else "series" if series else "study"
        raise Refusal(404, "Not Found", f"no such {level}", headers)
    return rows, headers


def _query(request: Request, *, thumbnail: bool) -> RenderQuery:
    query = {name: request.query_params.getlist(name) for name in request.query_params}
    default = THUMBNAIL_VIEWPORT if thumbnail else None
    try:
        return parse_render_query(query, default_viewport=default)
    except ValueError as exc:
        raise Refusal(400, "Bad Request", str(exc)) from exc


def _frames(target: Target) -> list[int] | None:
    if target.frames is None:
        return None
    try:
        return parse_frame_list(target.frames)
    except ValueError as exc:
        raise Refusal(400, "Bad Request", str(exc)) from exc


def _ranges(request: Request) -> list[MediaRange]:
    """PS3.18 8.3.3.1: an `accept` query parameter stands in for the Accept header."""
    given = request.query_params.getlist("accept")
    return parse_accept(",".join(given) if given else request.headers.get("accept"))


def _load(archive: ArchiveDep, row: InstanceRow) -> Dataset:
    stream = archive.blobs.get(row.blob_key)
    try:
        data = stream.read()
    finally:
        stream.close()
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:
        raise Refusal(500, "Internal Server Error", f"stored instance unreadable: {exc}") from exc


def _answer(exc: Exception, headers: dict[str, str]) -> Response:
    if isinstance(exc, Refusal):
        refusal = exc
    elif isinstance(exc, NotFound):
        refusal = Refusal(500, "Internal Server Error", f"stored object missing: {exc}")
    else:
        refusal = Refusal(503, "Service Unavailable", str(exc), {"Retry-After": "5"})
    return problem(
        refusal.status, refusal.title, refusal.detail, {**refusal.headers, **headers} or None
    )


def _instance_url(archive: ArchiveDep, request: Request, row: InstanceRow) -> str:
    # --public-url first: behind a proxy, or for clients that drop the port from Host.
    public: str = archive.settings.public_url
    base = (public or str(request.base_url)).rstrip("/") + "/dicomweb"
    return (
        f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )


def _rendered_instance(archive: ArchiveDep, request: Request, target: Target) -> Response:
    headers: dict[str, str] = {}
    try:
        query = _query(request, thumbnail=False)
        frames = _frames(target)
        rows, headers = _rows(archive, target)
        ds = _load(archive, rows[0])
        ranges = _ranges(request)
        if frames is None:
            body, media = single_body(ds, ranges, query)
        else:
            body, media = frames_body(
                ds, frames, ranges, query, _instance_url(archive, request, rows[0])
            )
    except _REFUSALS as exc:
        return _answer(exc, headers)
    return Response(body, media_type=media, headers=headers)


# -- studies and series: multipart ------------------------------------------------


def _renderable(
    archive: ArchiveDep, rows: list[InstanceRow], pattern: str
) -> list[tuple[InstanceRow, str]]:
    """(row, part media type) of every instance that renders under `pattern`, in order."""
    chosen: list[tuple[InstanceRow, str]] = []
    for row in rows:
        kind = kind_of_metadata(load_metadata(row, archive.blobs), row.transfer_syntax_uid)
        media = part_type(pattern, kind)
        if media is not None:
            chosen.append((row, media))
    return chosen


def _instance_parts(
    archive: ArchiveDep,
    request: Request,
    chosen: list[tuple[InstanceRow, str]],
    query: RenderQuery,
    boundary: str,
) -> Iterator[tuple[str, bytes]]:
    """(media type, encoded part) per instance; one that cannot be rendered is left out
    (logged), but a parameter error (400) stops everything: it would fail them all."""
    for row, media in chosen:
        try:
            ds = _load(archive, row)
            body = render_instance(ds, kind_of_dataset(ds), media, query)
        except Refusal as exc:
            if exc.status == 400:
                raise
            log.warning("rendered: leaving out %s: %s", row.sop_instance_uid, exc.detail)
            continue
        except NotFound:
            log.error("rendered: leaving out %s: its blob is missing", row.sop_instance_uid)
            continue
        location = _instance_url(archive, request, row) + "/rendered"
        yield media, part(boundary, media, location, body)


def _stream(first: bytes, rest: Iterator[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    yield first
    for _, encoded in rest:
        yield encoded
    yield closing(boundary)


def _rendered_many(archive: ArchiveDep, request: Request, target: Target) -> Response:
    headers: dict[str, str] = {}
    try:
        query = _query(request, thumbnail=False)
        rows, headers = _rows(archive, target)
        pattern = choose_parts(_ranges(request))
        if pattern is None:
            raise not_acceptable(
                "studies and series render as multipart/related;"
                ' type="image/jpeg" (or another rendered media type)'
            )
        boundary = uuid.uuid4().hex
        chosen = _renderable(archive, rows, pattern)
        parts = _instance_parts(archive, request, chosen, query, boundary)
        # The first part renders before the headers go, so its failure is still a status.
        media, first = next(parts, ("", b""))
        if not first:
            raise not_acceptable(f"nothing here renders as {pattern}")
    except _REFUSALS as exc:
        return _answer(exc, headers)
    return StreamingResponse(
        _stream(first, parts, boundary),
        media_type=multipart_type(media, boundary),
        headers=headers,
    )


def _thumbnail(archive: ArchiveDep, request: Request, target: Target) -> Response:
    headers: dict[str, str] = {}
    try:
        query = _query(request, thumbnail=True)
        frames = _frames(target)
        media = choose_single(_ranges(request), IMAGE_OFFERS)
        if media is None:
            raise not_acceptable(f"thumbnails are {', '.join(IMAGE_OFFERS)}")
        rows, headers = _rows(archive, target)

        def metadata_of(row: InstanceRow) -> dict[str, Any]:
            return load_metadata(row, archive.blobs)

        row = rows[0] if target.instance else representative(rows, metadata_of)
        image = thumbnail_image(_load(archive, row), frames[0] if frames else None, query)
        body = encode_images([image], media, quality=query.params.quality)
    except ValueError as exc:
        return _answer(Refusal(400, "Bad Request", str(exc)), headers)
    except _REFUSALS as exc:
        return _answer(exc, headers)
    return Response(body, media_type=media, headers=headers)


# -- routes --------------------------------------------------------------------------


@router.get("/studies/{study}/rendered")
def rendered_study(study: str, request: Request, archive: ArchiveDep) -> Response:
    return _rendered_many(archive, request, Target(study))


@router.get("/studies/{study}/series/{series}/rendered")
def rendered_series(study: str, series: str, request: Request, archive: ArchiveDep) -> Response:
    return _rendered_many(archive, request, Target(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def rendered_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    return _rendered_instance(archive, request, Target(study, series, instance))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
def rendered_frames(
    study: str, series: str, instance: str, frames: str, request: Request, archive: ArchiveDep
) -> Response:
    return _rendered_instance(archive, request, Target(study, series, instance, frames))


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request, archive: ArchiveDep) -> Response:
    return _thumbnail(archive, request, Target(study))


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, archive: ArchiveDep) -> Response:
    return _thumbnail(archive, request, Target(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    return _thumbnail(archive, request, Target(study, series, instance))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail")
def frames_thumbnail(
    study: str, series: str, instance: str, frames: str, request: Request, archive: ArchiveDep
) -> Response:
    return _thumbnail(archive, request, Target(study, series, instance, frames))
