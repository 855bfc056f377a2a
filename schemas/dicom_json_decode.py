"""DICOM JSON (PS3.18 Annex F) to a pydicom Dataset: the decoding direction.

The encoding direction and the value conventions it pins (numbers kept as
strings, PN component groups) are `schemas.dicom_json`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import DSfloat

from infra.errors import Invalid
from schemas.dicom_json import BINARY_NUMBER_VRS, JSON, PN_GROUPS

BulkLoader = Callable[[str], bytes]


def json_to_dataset(obj: JSON, *, bulk_loader: BulkLoader | None = None) -> Dataset:
    """The Dataset a DICOM JSON object describes; raises Invalid when malformed.

    BulkDataURIs are resolved through `bulk_loader`; without one the element
    is kept with an empty value.
    """
    if not isinstance(obj, dict):
        raise Invalid("DICOM JSON dataset must be an object")
    ds = Dataset()
    for key in sorted(obj):
        attr = obj[key]
        try:
            tag = int(key, 16)
            vr = attr["vr"]
        except (ValueError, TypeError, KeyError) as exc:
            raise Invalid(f"DICOM JSON attribute {key!r} is malformed") from exc
        if len(key) != 8 or not isinstance(vr, str) or len(vr) != 2:
            raise Invalid(f"DICOM JSON attribute {key!r} is malformed")
        value, converted = _json_value(key, vr, attr, bulk_loader)
        ds._dict[BaseTag(tag)] = DataElement(
            tag, vr, value, already_converted=converted, validation_mode=config.IGNORE
        )
    return ds


def _json_value(key: str, vr: str, attr: Any, loader: BulkLoader | None) -> tuple[Any, bool]:
    if "Value" in attr:
        values = attr["Value"]
        if not isinstance(values, list):
            raise Invalid(f"DICOM JSON attribute {key}: Value must be an array")
        if vr == "SQ":
            items = [json_to_dataset(item or {}, bulk_loader=loader) for item in values]
            return Sequence(items), False
        try:
            out = [_from_json(vr, v) for v in values]
        except (ValueError, TypeError, AttributeError) as exc:
            raise Invalid(f"DICOM JSON attribute {key}: bad {vr} value") from exc
        # a number kept as a JSON string (Annex F) has no pydicom value class
        converted = vr in ("IS", "DS") and any(isinstance(v, str) for v in out)
        if not out:
            return empty_value_for_VR(vr), False
        return (out[0] if len(out) == 1 else out), converted
    blob = attr.get("InlineBinary") or attr.get("BulkDataURI")
    if isinstance(blob, list):
        blob = blob[0] if blob else None
    if "InlineBinary" in attr and isinstance(blob, str):
        try:
            return base64.b64decode(blob, validate=True), False
        except ValueError as exc:
            raise Invalid(f"DICOM JSON attribute {key}: InlineBinary is not base64") from exc
    if "BulkDataURI" in attr and isinstance(blob, str) and loader is not None:
        return loader(blob), False
    return empty_value_for_VR(vr), False


def _from_json(vr: str, v: Any) -> Any:
    if v is None:
        return None if vr in BINARY_NUMBER_VRS else ""
    if vr == "PN":
        if isinstance(v, str):
            return v
        groups = [v.get(g, "") for g in PN_GROUPS]
        while groups and not groups[-1]:
            groups.pop()
        return "=".join(groups)
    if vr == "AT":
        return int(v, 16)
    if vr in ("IS", "DS"):
        return _number_from_json(vr, v)
    if vr in ("UV", "SV"):
        return int(v)
    if vr in BINARY_NUMBER_VRS:
        return float(v) if vr in ("FL", "FD") else int(v)
    return str(v)


def _number_from_json(vr: str, v: Any) -> Any:
    if isinstance(v, str):
        try:
            number = float(v)
        except ValueError:
            return v
        if not math.isfinite(number):
            return v
        v = number
    if vr == "IS":
        return int(v)
    return DSfloat(float(v), auto_format=True)
