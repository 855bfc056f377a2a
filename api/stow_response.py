"""STOW-RS results and the Store Instances Response (PS3.18 10.5.3, Annex I).

Every route into STOW (Part-10 parts, metadata with bulk data parts) ends in
one `Result` per instance; this module turns the list into the HTTP status,
the Store Instances Response Module (DICOM JSON, XML or multipart XML) and the
Warning header, so both routes answer alike.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import Response

from api.negotiation import MediaRange, first_offer, parse_accept, related_type
from schemas.dicom_xml import json_to_xml
from schemas.events import InstanceStored

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = "multipart/related; type=application/dicom+xml"
RETRY_AFTER_SECONDS = "30"
_JSON_ACCEPTS = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})
_XML_ACCEPTS = frozenset({"application/dicom+xml", "application/xml"})
_MAX_WARNING_HEADERS = 10

# Failure Reason (0008,1197) and Warning Reason (0008,1196): PS3.18 Tables I.2-1, I.2-2.
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
_WARNING_STATUS = re.compile(r"^(B[0-9A-F]{3})\b")


class StoreOutcomeLike(Protocol):
    @property
    def event(self) -> InstanceStored: ...
    @property
    def duplicate(self) -> bool: ...
    @property
    def warnings(self) -> list[str]: ...


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
    #: The request's own syntax was bad (metadata that is not JSON or XML).
    malformed: bool = False


Result = Stored | Failed


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


def http_status(results: list[Result]) -> int:
    """200 all kept; 202 some kept with failures or warnings; 503 store down;
    400 nothing kept because the request's syntax was bad; 409 nothing kept otherwise."""
    stored = [r for r in results if isinstance(r, Stored)]
    if stored:
        clean = len(stored) == len(results) and all(r.warning_reason is None for r in stored)
        return 200 if clean else 202
    failed = [r for r in results if isinstance(r, Failed)]
    if any(r.unavailable for r in failed):
        return 503
    if failed and all(r.malformed for r in failed):
        return 400
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
