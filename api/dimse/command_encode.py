"""DIMSE command sets encoded without pydicom's general writer.

pynetdicom encodes every message's command set (always Implicit VR Little
Endian, PS3.7 6.3.1) twice with pydicom: once to measure the group length,
once to send; and it sends the command and the data set as two PDUs even
when both are a few hundred bytes. Profiled, that is ~0.4 ms of CPU per message: a C-FIND
answering 66 matches spent more on it than on the query, and every C-STORE
response pays it too. A command set is a few US, UL, UI and AE elements, so
`encode_command_set` writes them directly and hands anything unusual (an AT
value, a raw element) back to pydicom, and a small message goes as one PDU.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from functools import lru_cache
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.pdu_primitives import P_DATA

_TEXT = frozenset({"AE", "CS", "LO", "SH", "ST", "UI"})
_NUMBER = {"US": "<H", "UL": "<L"}
#: Data sets up to this size are sent in the same PDU as their command.
_SMALL = 64 << 10


def install_command_encoder() -> None:
    """Make pynetdicom's DIMSE messages encode command sets with `encode_command_set`."""
    original = _dimse_messages.encode  # type: ignore[attr-defined]
    if getattr(original, "chronicle", False):
        return

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if is_implicit_vr and is_little_endian and not deflated:
            fast = encode_command_set(ds)
            if fast is not None:
                return fast
        result: bytes | None = original(ds, is_implicit_vr, is_little_endian, deflated)
        return result

    encode.chronicle = True  # type: ignore[attr-defined]
    _dimse_messages.encode = encode  # type: ignore[attr-defined]
    _dimse_messages.DIMSEMessage.encode_msg = _one_pdu(  # type: ignore[method-assign]
        _dimse_messages.DIMSEMessage.encode_msg
    )


def _one_pdu(encode_msg: Callable[..., Iterator[P_DATA]]) -> Callable[..., Iterator[P_DATA]]:
    """A small message's command and data set PDVs in one P-DATA-TF (PS3.8 9.3.5
    allows several PDVs per PDU): one socket write and one PDU for the peer to
    read instead of two, for every C-FIND match and every response."""

    def encode_one(self: Any, context_id: int, max_pdu_length: int) -> Iterator[P_DATA]:
        data = self.data_set
        small = self._data_set_path is None and (
            data is None or (isinstance(data, BytesIO) and data.getbuffer().nbytes <= _SMALL)
        )
        if not small:
            yield from encode_msg(self, context_id, max_pdu_length)
            return
        pdus = list(encode_msg(self, context_id, max_pdu_length))
        items = [item for pdu in pdus for item in pdu.presentation_data_value_list]
        size = sum(5 + len(value) for _, value in items)
        if len(pdus) < 2 or (max_pdu_length and size > max_pdu_length):
            yield from pdus
            return
        merged = P_DATA()
        merged.presentation_data_value_list.extend(items)
        yield merged

    return encode_one


def encode_command_set(ds: Dataset) -> bytes | None:
    """`ds` in Implicit VR Little Endian, or None when an element needs pydicom."""
    out = bytearray()
    for tag in sorted(ds._dict):
        elem = ds._dict[tag]
        if not isinstance(elem, DataElement):
            return None
        raw = _value_bytes(_vr(int(tag)), elem._value)
        if raw is None:
            return None
        out += struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(raw))
        out += raw
    return bytes(out)


@lru_cache(maxsize=256)
def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _value_bytes(vr: str, value: Any) -> bytes | None:
    if value is None or value == "" or value == []:
        return b""
    if vr in _NUMBER:
        values = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, int) for v in values):
            return None
        try:
            return b"".join(struct.pack(_NUMBER[vr], v) for v in values)
        except struct.error:
            return None
    if vr in _TEXT:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            try:
                raw = value.encode("ascii")
            except UnicodeError:
                return None
        else:
            return None
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    return None
