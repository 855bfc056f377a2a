"""STOW-RS (PS3.18 10.5): POST /dicomweb/studies and /dicomweb/studies/{study}.

The body (multipart/related; type="application/dicom") is spooled to disk part
by part first and only then stored, so a malformed, truncated or oversized body
is answered 400/413 with nothing kept. Each part then goes through the ingest
service in the thread pool; the answer is the Store Instances Response Module
(PS3.18 Annex I) as DICOM JSON, or XML when the Accept header asks for it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydicom import dcmread
from starlette.requests import ClientDisconnect

from api.negotiation import MediaRange, first_offer, parse_accept, related_type
from api.problems import problem
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from ingest.multipart import BodyTooLarge, MultipartSpool, Part, parse_content_type
from schemas.dicom_xml import json_to_xml
from schemas.events import InstanceStored, Source
from schemas.uids import check_uid, is_uid

log = logging.getLogger("chronicle.stow")

router = APIRouter(prefix="/dicomweb", tags=["STOW-RS"])

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = "multipart/related; type=application/dicom+xml"
RETRY_AFTER_SECONDS = "30"
#: Part media types taken as a Part 10 file (octet-stream: clients that label loosely).
_PART10_TYPES = frozenset({"", "application/dicom", "application/octet-stream"})
_JSON_ACCEPTS = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})
_XML_ACCEPTS = frozenset({"application/dicom+xml", "application/xml"})
_MAX_WARNING_HEADERS = 10

# Failure Reason (0008,1197) and Warning Reason (0008,1196): PS3.18 Tables I.2-1, I.2-2.
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
_WARNING_STATUS = re.compile(r"^(B[0-9A-F]{3})\b")


class StoreOutcomeLike(Protocol):
    @property
    def event(self) -> InstanceStored: ...
    @property
    def duplicate(self) -> bool: ...
    @property
    def warnings(self) -> list[str]: ...


class Part10Store(Protocol):
    def store_part10_file(
        self, path: Path, *, source: Source, expected_study_uid: str | None = None
    ) -> StoreOutcomeLike: ...


class StowArchive(Protocol):
    """What STOW needs of `api.wiring.Archive`."""

    @property
    def settings(self) -> Settings: ...
    @property
    def ingest(self) -> Part10Store: ...


@dataclass(frozen=True, slots=True)
class Stored:
    event: InstanceStored
    warning_reason: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    failure_reason: int
    detail: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    #: Storage itself was down: nothing after this part is tried.
    unavailable: bool = False


Result = Stored | Failed


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
    boundary = _boundary(request.headers.get("content-type", ""))
    if isinstance(boundary, Response):
        return boundary
    if _declared_length(request) > settings.max_body_bytes:
        detail = f"the request body is over the limit of {settings.max_body_bytes} bytes"
        return problem(413, "Content Too Large", detail)
    try:
        async with MultipartSpool(
            settings.data_dir / "tmp", boundary, max_body_bytes=settings.max_body_bytes
        ) as spool:
            parts = [part async for part in spool.parts(request.stream())]
            if not parts:
                return problem(400, "Bad Request", "the multipart body has no parts")
            results = await _store_parts(archive.ingest, parts, _source(request), study)
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


def _boundary(content_type: str) -> str | Response:
    media_type, params = parse_content_type(content_type)
    wanted = 'multipart/related; type="application/dicom"'
    if media_type != "multipart/related":
        return problem(415, "Unsupported Media Type", f"STOW-RS takes {wanted}")
    kind = params.get("type", "").lower()
    if kind in ("application/dicom+json", "application/dicom+xml"):
        detail = f"metadata with bulk data parts (type={kind}) is not supported yet; send {wanted}"
        return problem(415, "Unsupported Media Type", detail)
    if kind not in ("", "application/dicom"):
        return problem(415, "Unsupported Media Type", f"type={kind} is not stored; send {wanted}")
    return params.get("boundary", "")


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


# -- storing --------------------------------------------------------------


async def _store_parts(
    ingest: Part10Store, parts: list[Part], source: Source, study: str | None
) -> list[Result]:
    results: list[Result] = []
    down: Failed | None = None
    for number, part in enumerate(parts, start=1):
        if down is not None:
            # Storage is down: trying each remaining part would only wait out
            # the same failure again, so they are reported without an attempt.
            result: Result = await _failed(part, OUT_OF_RESOURCES, down.detail, unavailable=True)
        else:
            result = await _store_part(ingest, part, number, source, study)
        if isinstance(result, Failed):
            log.info("STOW part %d failed (%04X): %s", number, result.failure_reason, result.detail)
            down = result if result.unavailable else down
        part.path.unlink(missing_ok=True)  # free the spool disk as we go
        results.append(result)
    return results


async def _store_part(
    ingest: Part10Store, part: Part, number: int, source: Source, study: str | None
) -> Result:
    media_type, _ = parse_content_type(part.content_type)
    if media_type not in _PART10_TYPES:
        return Failed(CANNOT_UNDERSTAND, f"part {number} is {media_type}, not application/dicom")
    if part.size == 0:
        return Failed(CANNOT_UNDERSTAND, f"part {number} is empty")
    try:
        outcome = await run_in_threadpool(
            ingest.store_part10_file, part.path, source=source, expected_study_uid=study
        )
    except Unavailable as exc:
        return await _failed(part, OUT_OF_RESOURCES, str(exc), unavailable=True)
    except Invalid as exc:
        return await _failed(part, exc.status, str(exc))
    except Exception:
        log.exception("STOW part %d: unexpected failure while storing", number)
        return await _failed(part, PROCESSING_FAILURE, "processing failure")
    return Stored(outcome.event, warning_reason(outcome))


async def _failed(part: Part, reason: int, detail: str, *, unavailable: bool = False) -> Failed:
    sop_class_uid, sop_instance_uid = await run_in_threadpool(peek_sop_uids, part.path)
    # Parser messages may name the spool file; clients have no business with it.
    detail = detail.replace(str(part.path), "the part")
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


def warning_reason(outcome: StoreOutcomeLike) -> int | None:
    """Warning Reason for a kept instance, or None for a clean store.

    An identical duplicate is a success: resending a study after a lost
    response must not look like a problem. Other service warnings may lead
    with their Warning status ("B006 ..."); otherwise they are validation findings.
    """
    notes = [w for w in outcome.warnings if not (outcome.duplicate and w.startswith("duplicate"))]
    if not notes:
        return None
    code = _WARNING_STATUS.match(notes[0])
    return int(code.group(1), 16) if code else DATA_SET_DOES_NOT_MATCH_SOP_CLASS


# -- the response ---------------------------------------------------------


def http_status(results: list[Result]) -> int:
    """200 all kept; 202 some kept with failures or warnings; 409 none kept; 503 store down."""
    stored = [r for r in results if isinstance(r, Stored)]
    if stored:
        clean = len(stored) == len(results) and all(r.warning_reason is None for r in stored)
        return 200 if clean else 202
    if any(isinstance(r, Failed) and r.unavailable for r in results):
        return 503
    return 409


def response_dataset(results: list[Result], dicomweb_base: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON."""
    stored = [r for r in results if isinstance(r, Stored)]
    failed = [r for r in results if isinstance(r, Failed) and r.sop_instance_uid]
    other = [r for r in results if isinstance(r, Failed) and not r.sop_instance_uid]
    studies = {r.event.study_instance_uid for r in stored}
    ds: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if len(studies) == 1:
        ds["00081190"]["Value"] = [f"{dicomweb_base}/studies/{studies.pop()}"]
    if failed:
        ds["00081198"] = _sequence(
            _sop_item(r.sop_class_uid, r.sop_instance_uid) | _us("00081197", r.failure_reason)
            for r in failed
        )
    if stored:
        ds["00081199"] = _sequence(_stored_item(r, dicomweb_base) for r in stored)
    if other:
        ds["0008119A"] = _sequence(_us("00081197", r.failure_reason) for r in other)
    return ds


def _stored_item(result: Stored, dicomweb_base: str) -> dict[str, Any]:
    event = result.event
    url = (
        f"{dicomweb_base}/studies/{event.study_instance_uid}/series/"
        f"{event.series_instance_uid}/instances/{event.sop_instance_uid}"
    )
    item = _sop_item(event.sop_class_uid, event.sop_instance_uid)
    item["00081190"] = {"vr": "UR", "Value": [url]}
    if result.warning_reason is not None:
        item |= _us("00081196", result.warning_reason)
    return item


def _sop_item(sop_class_uid: str, sop_instance_uid: str) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [sop_instance_uid]},
    }


def _us(tag: str, value: int) -> dict[str, Any]:
    return {tag: {"vr": "US", "Value": [value]}}


def _sequence(items: Any) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


def negotiate(accept: str) -> str | None:
    """The response media type the Accept header prefers, None when none is offered."""
    return first_offer(parse_accept(accept), _reply_kind)


def _reply_kind(media: MediaRange) -> str | None:
    if media.media_type in _JSON_ACCEPTS:
        return DICOM_JSON
    if media.media_type in _XML_ACCEPTS:
        return DICOM_XML
    if media.media_type == "multipart/related" and related_type(media) == DICOM_XML:
        return MULTIPART_XML
    return None


def render(results: list[Result], reply: str, dicomweb_base: str) -> Response:
    status = http_status(results)
    headers = _warning_headers(results)
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    dataset = response_dataset(results, dicomweb_base)
    if reply == DICOM_JSON:
        return Response(orjson.dumps(dataset), status, headers, media_type=DICOM_JSON)
    xml = json_to_xml(dataset)
    if reply == DICOM_XML:
        return Response(xml, status, headers, media_type=DICOM_XML)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode()
        + xml
        + f"\r\n--{boundary}--\r\n".encode()
    )
    media_type = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
    return Response(body, status, headers, media_type=media_type)


def _warning_headers(results: list[Result]) -> dict[str, str]:
    """PS3.18 10.5.3.2 recommends a Warning with the DICOM status and reason."""
    texts = [f"{r.failure_reason:04X}: {r.detail}" for r in results if isinstance(r, Failed)][
        :_MAX_WARNING_HEADERS
    ]
    if not texts:
        return {}
    safe = [re.sub(r'[^\x20-\x7e]|["\\]', "?", text)[:200] for text in texts]
    return {"Warning": ", ".join(f'299 chronicle "{text}"' for text in safe)}
