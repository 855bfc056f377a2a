"""STOW-RS (PS3.18 10.5): POST /dicomweb/studies and /dicomweb/studies/{study}.

The body is spooled to disk part by part first and only then stored, so a
malformed, truncated or oversized body is answered 400/413 with nothing kept.
A multipart/related body of type application/dicom holds one Part-10 instance
per part; one of type application/dicom+json or application/dicom+xml holds
metadata and bulk data parts, which `api.stow_metadata` joins into one Part-10
file per instance. Either way each instance then goes through the ingest
service in the thread pool the same way; the answer is the Store Instances
Response Module (`api.stow_response`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydicom import dcmread
from starlette.requests import ClientDisconnect

from api import stow_metadata
from api.problems import problem
from api.stow_bulk import BulkParts
from api.stow_metadata import MetadataInstance, MetadataRequest
from api.stow_response import (
    CANNOT_UNDERSTAND,
    DICOM_JSON,
    DICOM_XML,
    MULTIPART_XML,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    RETRY_AFTER_SECONDS,
    Failed,
    Result,
    Stored,
    StoreOutcomeLike,
    negotiate,
    render,
    warning_reason,
)
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from ingest.multipart import BodyTooLarge, MultipartSpool, Part, parse_content_type
from ingest.part10_spool import writer_for
from schemas.events import Source
from schemas.uids import check_uid, is_uid

log = logging.getLogger("chronicle.stow")

router = APIRouter(prefix="/dicomweb", tags=["STOW-RS"])

__all__ = ["DICOM_JSON", "DICOM_XML", "MULTIPART_XML", "negotiate", "peek_sop_uids", "router"]

PART10 = "application/dicom"
#: Part media types taken as a Part 10 file (octet-stream: clients that label loosely).
_PART10_TYPES = frozenset({"", PART10, "application/octet-stream"})
_REQUEST_TYPES = frozenset({"", PART10}) | stow_metadata.METADATA_TYPES


class Part10Store(Protocol):
    def store_part10_file(
        self, path: Path, *, source: Source, expected_study_uid: str | None = None
    ) -> StoreOutcomeLike: ...

    def store_part10_files(
        self,
        paths: Sequence[Path],
        *,
        source: Source,
        expected_study_uid: str | None = None,
        received: bool = False,
    ) -> Sequence[StoreOutcomeLike | Exception]: ...


class StowArchive(Protocol):
    """What STOW needs of `api.wiring.Archive`."""

    @property
    def settings(self) -> Settings: ...
    @property
    def ingest(self) -> Part10Store: ...


@router.post("/studies", summary="Store instances (STOW-RS)")
async def store_instances(request: Request) -> Response:
    return await _store(request, study=None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS)")
async def store_study_instances(request: Request, study: str) -> Response:
    try:
        study = check_uid(study, "Study Instance UID")
    except Invalid as exc:
        return problem(400, "Bad Request", str(exc))
    return await _store(request, study=study)


async def _store(request: Request, study: str | None) -> Response:
    archive: StowArchive = request.app.state.archive
    settings = archive.settings
    reply = negotiate(request.headers.get("accept", ""))
    if reply is None:
        detail = f"the store response is available as {DICOM_JSON}, {DICOM_XML} or {MULTIPART_XML}"
        return problem(406, "Not Acceptable", detail)
    framing = _framing(request.headers.get("content-type", ""))
    if isinstance(framing, Response):
        return framing
    kind, boundary = framing
    if _declared_length(request) > settings.max_body_bytes:
        detail = f"the request body is over the limit of {settings.max_body_bytes} bytes"
        return problem(413, "Content Too Large", detail)
    storer = _Storer(archive.ingest, _source(request), study)
    try:
        async with MultipartSpool(
            settings.data_dir / "tmp",
            boundary,
            max_body_bytes=settings.max_body_bytes,
            part_writer=writer_for if kind == PART10 else None,
        ) as spool:
            parts = [part async for part in spool.parts(request.stream())]
            if not parts:
                return problem(400, "Bad Request", "the multipart body has no parts")
            if kind in stow_metadata.METADATA_TYPES:
                base = _request_url(request, settings)
                results = await _store_metadata_request(storer, parts, kind, base)
            else:
                results = await storer.part10_request(parts)
    except BodyTooLarge as exc:
        return problem(413, "Content Too Large", str(exc))
    except Invalid as exc:
        return problem(400, "Bad Request", f"malformed multipart body: {exc}")
    except ClientDisconnect:
        return problem(400, "Bad Request", "the client disconnected before the body ended")
    except OSError as exc:
        log.error("cannot spool a STOW-RS body: %s", exc)
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
        return problem(503, "Service Unavailable", "cannot spool the request body", headers)
    return render(results, reply, _dicomweb_base(request, settings))


def _framing(content_type: str) -> tuple[str, str] | Response:
    """The request's root type and boundary, or the 415 answer."""
    media_type, params = parse_content_type(content_type)
    wanted = (
        'multipart/related; type="application/dicom" (or type="application/dicom+json", '
        'type="application/dicom+xml" with bulk data parts)'
    )
    if media_type != "multipart/related":
        return problem(415, "Unsupported Media Type", f"STOW-RS takes {wanted}")
    kind = params.get("type", "").lower()
    if kind not in _REQUEST_TYPES:
        return problem(415, "Unsupported Media Type", f"type={kind} is not stored; send {wanted}")
    return kind or PART10, params.get("boundary", "")


def _declared_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        return 0


def _source(request: Request) -> Source:
    user = request.scope.get("user")
    name = getattr(user, "display_name", "") if getattr(user, "is_authenticated", False) else ""
    peer = request.client.host if request.client else ""
    return Source("STOW", calling_ae="", called_ae="", peer=peer, user=str(name))


def _dicomweb_base(request: Request, settings: Settings) -> str:
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/dicomweb"


def _request_url(request: Request, settings: Settings) -> str:
    """The URL relative Content-Locations and BulkDataURIs resolve against."""
    if not settings.public_url:
        return str(request.url)
    return settings.public_url.rstrip("/") + request.url.path


# -- storing --------------------------------------------------------------


async def _store_metadata_request(
    storer: _Storer, parts: list[Part], kind: str, base_url: str
) -> list[Result]:
    request: MetadataRequest = await run_in_threadpool(
        stow_metadata.read_request, parts, kind, base_url
    )
    numbers = {part.path: number for number, part in enumerate(parts, start=1)}
    results: list[Result] = []
    for item in request.items:
        if isinstance(item, Failed):
            results.append(_logged(item, "metadata"))
        elif isinstance(item, MetadataInstance):
            results.append(await storer.instance(item, request.bulk, parts[0].path.parent))
        else:
            results.append(await storer.part10(item, numbers[item.path]))
    if not results:
        detail = f"no {kind} metadata part in the request"
        results.append(Failed(CANNOT_UNDERSTAND, detail, malformed=True))
    return results


class _Storer:
    """Stores one request's instances; once storage is down the rest are not tried."""

    def __init__(self, ingest: Part10Store, source: Source, study: str | None) -> None:
        self._ingest = ingest
        self._source = source
        self._study = study
        self._down: Failed | None = None

    async def part10(self, part: Part, number: int) -> Result:
        """An application/dicom part, whose spool file is freed as soon as it is done."""
        name = f"part {number}"
        try:
            media_type, _ = parse_content_type(part.content_type)
            if self._down is None and media_type not in _PART10_TYPES:
                return _logged(
                    Failed(CANNOT_UNDERSTAND, f"{name} is {media_type}, not {PART10}"), name
                )
            if self._down is None and part.size == 0:
                return _logged(Failed(CANNOT_UNDERSTAND, f"{name} is empty"), name)
            return _logged(await self._store_file(part.path, name), name)
        finally:
            part.path.unlink(missing_ok=True)

    async def part10_request(self, parts: list[Part]) -> list[Result]:
        """Every part of an application/dicom request, stored as one batch: blobs
        made durable several at a time, then all events in one log commit."""
        results: list[Result | None] = []
        batch: list[tuple[int, Part]] = []
        try:
            for number, part in enumerate(parts, start=1):
                media_type, _ = parse_content_type(part.content_type)
                refused = None
                if media_type not in _PART10_TYPES:
                    refused = f"part {number} is {media_type}, not {PART10}"
                elif part.size == 0:
                    refused = f"part {number} is empty"
                if refused is not None:
                    results.append(_logged(Failed(CANNOT_UNDERSTAND, refused), f"part {number}"))
                else:
                    results.append(None)
                    batch.append((number, part))
            for (number, _), result in zip(batch, await self._store_batch(batch), strict=True):
                results[number - 1] = _logged(result, f"part {number}")
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)
        return [r for r in results if r is not None]

    async def _store_batch(self, batch: list[tuple[int, Part]]) -> list[Result]:
        paths = [part.path for _, part in batch]
        if not paths:
            return []
        try:
            outcomes = await run_in_threadpool(
                self._ingest.store_part10_files,
                paths,
                source=self._source,
                expected_study_uid=self._study,
                received=True,  # spool files, removed after: ingest may keep them
            )
        except Exception as exc:  # the disk floor, checked once for the request
            outcomes = [exc] * len(paths)
        return [await self._result(path, out) for path, out in zip(paths, outcomes, strict=True)]

    async def _result(self, path: Path, outcome: StoreOutcomeLike | Exception) -> Result:
        if isinstance(outcome, Unavailable):
            self._down = await _failed(path, OUT_OF_RESOURCES, str(outcome), unavailable=True)
            return self._down
        if isinstance(outcome, Invalid):
            return await _failed(path, outcome.status, str(outcome))
        if isinstance(outcome, Exception):
            log.error("STOW %s: unexpected failure while storing", path.name, exc_info=outcome)
            return await _failed(path, PROCESSING_FAILURE, "processing failure")
        return Stored(outcome.event, warning_reason(outcome))

    async def instance(self, instance: MetadataInstance, bulk: BulkParts, spool: Path) -> Result:
        """An instance of a metadata request, assembled into a Part-10 file first."""
        target = spool / f"assembled-{uuid.uuid4().hex}.dcm"
        try:
            refused = await self._assemble(instance, bulk, target)
            result = refused or await self._store_file(target, instance.name)
            return _logged(result, instance.name)
        finally:
            target.unlink(missing_ok=True)  # also what a failed write left half done

    async def _assemble(
        self, instance: MetadataInstance, bulk: BulkParts, target: Path
    ) -> Failed | None:
        uids = (instance.sop_class_uid, instance.sop_instance_uid)
        if self._down is not None:
            return Failed(OUT_OF_RESOURCES, self._down.detail, *uids, unavailable=True)
        try:
            await run_in_threadpool(stow_metadata.assemble_part10, instance, bulk, target)
        except Unavailable as exc:
            self._down = Failed(OUT_OF_RESOURCES, str(exc), *uids, unavailable=True)
            return self._down
        except Invalid as exc:
            malformed = isinstance(exc, stow_metadata.MalformedMetadata)
            return Failed(exc.status, str(exc), *uids, malformed=malformed)
        except Exception:
            log.exception("STOW %s: unexpected failure while assembling", instance.name)
            return Failed(PROCESSING_FAILURE, "processing failure", *uids)
        return None

    async def _store_file(self, path: Path, name: str) -> Result:
        if self._down is not None:
            # Storage is down: trying each remaining instance would only wait
            # out the same failure again, so they are reported without an attempt.
            return await _failed(path, OUT_OF_RESOURCES, self._down.detail, unavailable=True)
        try:
            outcome = await run_in_threadpool(
                self._ingest.store_part10_file,
                path,
                source=self._source,
                expected_study_uid=self._study,
            )
        except Unavailable as exc:
            self._down = await _failed(path, OUT_OF_RESOURCES, str(exc), unavailable=True)
            return self._down
        except Invalid as exc:
            return await _failed(path, exc.status, str(exc))
        except Exception:
            log.exception("STOW %s: unexpected failure while storing", name)
            return await _failed(path, PROCESSING_FAILURE, "processing failure")
        return Stored(outcome.event, warning_reason(outcome))


def _logged(result: Result, name: str) -> Result:
    if isinstance(result, Failed):
        log.info("STOW %s failed (%04X): %s", name, result.failure_reason, result.detail)
    return result


async def _failed(path: Path, reason: int, detail: str, *, unavailable: bool = False) -> Failed:
    sop_class_uid, sop_instance_uid = await run_in_threadpool(peek_sop_uids, path)
    # Parser messages may name the spool file; clients have no business with it.
    detail = detail.replace(str(path), "the part")
    return Failed(reason, detail, sop_class_uid, sop_instance_uid, unavailable)


def peek_sop_uids(path: Path) -> tuple[str, str]:
    """The SOP Class and Instance UIDs of a refused part, when it has readable ones.

    Failed SOP Sequence items need them; a part too broken to say gets ("", "")
    and is reported in the Other Failures Sequence instead.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        sop_class = str(
            ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")
        )
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # any unreadable file is simply one we cannot name
        return "", ""
    sop_class, sop_instance = sop_class.strip("\x00 "), sop_instance.strip("\x00 ")
    if is_uid(sop_class) and is_uid(sop_instance):
        return sop_class, sop_instance
    return "", ""
