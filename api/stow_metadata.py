"""STOW-RS metadata and bulk data requests (PS3.18 10.5.1.4) made into Part-10 files.

A request of type application/dicom+json carries a JSON array of instances
per metadata part; one of type application/dicom+xml carries one
NativeDicomModel per part. The other parts are bulk data, named by
Content-Location (`api.stow_bulk`). Each instance becomes one Part-10 file in
the request's spool folder, written without holding bulk values in memory
(pydicom streams buffered values), and STOW then stores that file exactly as
it stores an application/dicom part: same validation, blob before event, same
statuses. What is stored is the instance the metadata describes, in Explicit VR
Little Endian, or in the transfer syntax of its compressed pixel data part.

Choices: File Meta elements (group 0002) and group lengths in the metadata are
dropped (Chronicle writes its own File Meta); a bulk part no instance names is
ignored; application/dicom parts in the same request are stored as they are.
What the metadata leaves out is added only where the bytes demand it: ISO_IR
192 for non-ASCII text without a Specific Character Set, the MIME Type of an
Encapsulated Document from its part's media type, Encapsulated Document
Length when the document needs a pad byte, and the Image Pixel Description of
compressed pixel data from its codestream (`api.stow_pixels`).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate_buffer
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import BUFFERABLE_VRS

from api.stow_bulk import BulkPart, BulkParts
from api.stow_pixels import (
    EXPLICIT_VR_LE,
    HEADER_BYTES,
    describe_pixels,
    is_video,
    pixel_transfer_syntax,
    read_codestream,
)
from api.stow_response import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH, Failed
from infra.errors import Invalid, Unavailable
from ingest.multipart import Part, parse_content_type
from schemas.dicom_json import JSON
from schemas.dicom_json_decode import json_to_dataset
from schemas.dicom_xml import xml_to_json
from schemas.uids import is_uid

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
PART10 = "application/dicom"
METADATA_TYPES = frozenset({DICOM_JSON, DICOM_XML})
PIXEL_DATA = "7FE00010"
ENCAPSULATED_DOCUMENT = "00420011"
_LOOSE_LABELS = {"application/json": DICOM_JSON, "application/xml": DICOM_XML}
_NATIVE_MEDIA = frozenset({"", "application/octet-stream"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST"})
_TEXT_VRS |= {"TM", "UC", "UR", "UT"}
#: the path of a nested element: (sequence tag, item index) pairs from the top
Where = tuple[tuple[str, int], ...]


class MalformedMetadata(Invalid):
    """An instance's DICOM JSON does not decode: bad syntax (HTTP 400 if nothing is kept)."""


@dataclass(frozen=True, slots=True)
class MetadataInstance:
    """One instance's DICOM JSON, before its bulk data is joined to it."""

    dataset: JSON
    sop_class_uid: str
    sop_instance_uid: str
    name: str  # "part 1" or "part 1 instance 2", for messages


#: A request's items in order: instances to assemble, Part-10 parts, early failures.
Item = MetadataInstance | Part | Failed


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    items: list[Item]
    bulk: BulkParts


def read_request(parts: Sequence[Part], root_type: str, base_url: str) -> MetadataRequest:
    """Sort a spooled metadata request into instances, Part-10 parts and bulk parts."""
    items: list[Item] = []
    bulk = BulkParts(base_url)
    for number, part in enumerate(parts, start=1):
        media_type, _ = parse_content_type(part.content_type)
        named = "content-location" in part.headers or "content-id" in part.headers
        # unlabelled or loosely labelled parts are metadata unless named as bulk data
        kind = _LOOSE_LABELS.get(media_type, media_type or root_type)
        if media_type in METADATA_TYPES or (kind in METADATA_TYPES and not named):
            items.extend(_read_metadata(part, kind, number))
        elif media_type == PART10:
            items.append(part)
        elif not bulk.add(part):
            items.append(
                Failed(CANNOT_UNDERSTAND, f"part {number} ({media_type}) has no Content-Location")
            )
    return MetadataRequest(items, bulk)


def _read_metadata(part: Part, kind: str, number: int) -> list[MetadataInstance | Failed]:
    data = part.path.read_bytes()
    try:
        if kind == DICOM_JSON:
            document = orjson.loads(data)
            objects = document if isinstance(document, list) else [document]
        else:
            objects = [xml_to_json(data)]
    except (orjson.JSONDecodeError, Invalid) as exc:
        what = "JSON" if kind == DICOM_JSON else "XML"
        detail = f"part {number}: metadata is not valid DICOM {what}: {exc}"
        return [Failed(CANNOT_UNDERSTAND, detail, malformed=True)]
    if not objects:
        return [Failed(CANNOT_UNDERSTAND, f"part {number}: no instance in it", malformed=True)]
    many = len(objects) > 1
    return [
        _instance(obj, f"part {number} instance {i}" if many else f"part {number}")
        for i, obj in enumerate(objects, start=1)
    ]


def _instance(obj: Any, name: str) -> MetadataInstance | Failed:
    problem = _malformation(obj)
    if problem:
        return Failed(CANNOT_UNDERSTAND, f"{name}: {problem}", malformed=True)
    sop_class, sop_instance = _uid(obj, "00080016"), _uid(obj, "00080018")
    for uid, what in (
        (sop_class, "SOP Class UID (0008,0016)"),
        (sop_instance, "SOP Instance UID (0008,0018)"),
    ):
        if not uid:
            return Failed(CANNOT_UNDERSTAND, f"{name}: {what} is missing or not a UID")
    return MetadataInstance(obj, sop_class, sop_instance, name)


def _malformation(obj: Any) -> str:
    """What makes `obj` not a DICOM JSON dataset at its top level ("" when nothing)."""
    if not isinstance(obj, dict):
        return "not a DICOM JSON object"
    for key, attr in obj.items():
        if len(key) != 8 or not all(c in "0123456789abcdefABCDEF" for c in key):
            return f"{key!r} is not a tag"
        if not isinstance(attr, dict) or not isinstance(attr.get("vr"), str):
            return f"attribute {key} has no vr"
    return ""


def _uid(obj: JSON, key: str) -> str:
    attr = obj.get(key)
    values = attr.get("Value") if isinstance(attr, dict) else None
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        return ""
    return values[0] if is_uid(values[0]) else ""


# -- assembly ---------------------------------------------------------------


def assemble_part10(instance: MetadataInstance, bulk: BulkParts, target: Path) -> str:
    """Write `instance` with its bulk data as a Part-10 file; return its transfer syntax.

    Raises Invalid with the FailureReason to report: 0xA900 for a BulkDataURI
    no part answers, 0xC000 for metadata that does not encode, 0xC122 for a
    media type that cannot carry the stated transfer syntax.
    """
    obj = {k: v for k, v in instance.dataset.items() if k[:4] != "0002" and k[4:] != "0000"}
    references = list(_bulk_references(obj, ()))
    found = {uri: bulk.find(uri) for _, _, uri in references}
    for where, key, uri in references:
        if not found[uri]:
            raise Invalid(
                f"{instance.name}: no bulk data part has the Content-Location {uri!r} "
                f"named by ({key[:4]},{key[4:]}){_path_text(where)}",
                status=DATA_SET_DOES_NOT_MATCH,
            )
    try:
        ds = json_to_dataset(obj)
    except Invalid as exc:
        raise MalformedMetadata(f"{instance.name}: {exc}") from exc
    if "SpecificCharacterSet" not in ds and not orjson.dumps(obj).isascii():
        # JSON and XML text is Unicode: without a declared character set, only
        # UTF-8 encodes it as sent
        ds.SpecificCharacterSet = "ISO_IR 192"
    with ExitStack() as stack:
        ts = EXPLICIT_VR_LE
        for where, key, uri in references:
            parent, parts = _dataset_at(ds, where), found[uri]
            if key == PIXEL_DATA and not where and parts[0].media_type not in _NATIVE_MEDIA:
                ts = _encapsulate(ds, parts, stack)
            else:
                vr = parent[_tag(key)].VR
                parent[_tag(key)] = _native(key, vr, parts, stack, target)
                if key == ENCAPSULATED_DOCUMENT and not where:
                    _describe_document(ds, parts)
        ds.file_meta = _file_meta(instance, ts)
        _write(ds, target, instance.name)
    return ts


def _bulk_references(obj: JSON, where: Where) -> Iterator[tuple[Where, str, str]]:
    for key, attr in obj.items():
        if not isinstance(attr, dict):
            continue  # json_to_dataset reports it
        uri = attr.get("BulkDataURI")
        if isinstance(uri, list):
            uri = uri[0] if uri else None
        if isinstance(uri, str) and "InlineBinary" not in attr and "Value" not in attr:
            yield where, key.upper(), uri
        elif attr.get("vr") == "SQ" and isinstance(attr.get("Value"), list):
            for index, item in enumerate(attr["Value"]):
                if isinstance(item, dict):
                    yield from _bulk_references(item, (*where, (key.upper(), index)))


def _tag(key: str) -> BaseTag:
    return BaseTag(int(key, 16))


def _dataset_at(ds: Dataset, where: Where) -> Dataset:
    for seq, index in where:
        ds = ds[_tag(seq)].value[index]
    return ds


def _path_text(where: Where) -> str:
    return "".join(f" in item {i + 1} of ({s[:4]},{s[4:]})" for s, i in reversed(where))


def _native(key: str, vr: str, parts: list[BulkPart], stack: ExitStack, target: Path) -> Any:
    """The element for uncompressed bulk data: Little Endian bytes, frames concatenated."""
    tag = _tag(key)
    if vr == "SQ":
        raise Invalid(f"({key[:4]},{key[4:]}) is a sequence: it cannot be bulk data")
    if vr not in BUFFERABLE_VRS:  # numbers and text sent as bulk data: small, read whole
        value = b"".join(part.path.read_bytes() for part in parts)
        if len(value) % 2:
            value += b" " if vr in _TEXT_VRS else b"\x00"
        return RawDataElement(tag, vr, len(value), value, 0, False, True)
    # pydicom writes a buffered value's odd length but pads the value: the
    # padded copy keeps header and value in step
    single = len(parts) == 1 and not parts[0].size % 2
    path = parts[0].path if single else _joined(parts, target, stack)
    return DataElement(tag, vr, stack.enter_context(path.open("rb")))


def _joined(parts: list[BulkPart], target: Path, stack: ExitStack) -> Path:
    """One file of the parts' bytes in order, padded to an even length."""
    joined = target.with_name(f"{target.name}.{uuid.uuid4().hex}.bulk")
    stack.callback(joined.unlink, missing_ok=True)
    with joined.open("wb") as out:
        for part in parts:
            with part.path.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        if out.tell() % 2:
            out.write(b"\x00")
    return joined


def _encapsulate(ds: Dataset, parts: list[BulkPart], stack: ExitStack) -> str:
    """Pixel Data from compressed parts, one fragment per part; the transfer syntax."""
    first = parts[0]
    if any(
        (p.media_type, p.transfer_syntax) != (first.media_type, first.transfer_syntax)
        for p in parts
    ):
        raise Invalid("the frames of one Pixel Data come in different media types", 0xA900)
    with first.path.open("rb") as head:
        codestream = read_codestream(head.read(HEADER_BYTES))
    ts = pixel_transfer_syntax(first.media_type, first.transfer_syntax, codestream)
    video = is_video(first.media_type)
    declared = _declared_frames(ds)
    if not video and declared is not None and declared != len(parts):
        raise Invalid(
            f"Number of Frames is {declared} but {len(parts)} compressed frame part(s) "
            "came: send one part per frame",
            status=DATA_SET_DOES_NOT_MATCH,
        )
    buffers: list[Any] = [stack.enter_context(p.path.open("rb")) for p in parts]
    value = encapsulate_buffer(buffers, has_bot=len(parts) > 1 and not video)
    ds[_tag(PIXEL_DATA)] = DataElement(_tag(PIXEL_DATA), "OB", value, is_undefined_length=True)
    describe_pixels(ds, codestream, 1 if video else len(parts), ts)
    return ts


def _declared_frames(ds: Dataset) -> int | None:
    if "NumberOfFrames" not in ds or ds.NumberOfFrames in (None, ""):
        return None
    try:
        return int(ds.NumberOfFrames)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"Number of Frames {ds.NumberOfFrames!r} is not a number") from exc


def _describe_document(ds: Dataset, parts: list[BulkPart]) -> None:
    # PS3.18 sends the document in its own media type: the sender's label is
    # the MIME Type when the metadata left it out. An odd length gets a pad byte
    # on encoding, so the true length is kept where PS3.3 provides for it.
    media_type = parts[0].media_type
    if "MIMETypeOfEncapsulatedDocument" not in ds and media_type not in _NATIVE_MEDIA:
        ds.MIMETypeOfEncapsulatedDocument = media_type
    size = sum(p.size for p in parts)
    if size % 2 and "EncapsulatedDocumentLength" not in ds:
        ds.EncapsulatedDocumentLength = size


def _file_meta(instance: MetadataInstance, ts: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(instance.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(instance.sop_instance_uid)
    meta.TransferSyntaxUID = UID(ts)
    return meta


def _write(ds: Dataset, target: Path, name: str) -> None:
    try:
        ds.save_as(target, enforce_file_format=True)
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data
            raise Unavailable(f"cannot write the assembled instance: {exc}") from exc
        raise Invalid(f"{name} does not encode as DICOM: {_first_line(exc)}") from exc
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
        raise Invalid(f"{name} does not encode as DICOM: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
