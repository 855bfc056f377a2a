"""Command sets encoded directly are byte-identical to pydicom's encoding."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import (
    C_FIND_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    N_ACTION_RSP,
    N_EVENT_REPORT_RQ,
)
from pynetdicom.dimse_primitives import C_FIND, C_MOVE, C_STORE, N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode

from api.dimse.command_encode import encode_command_set, install_command_encoder

UIDS = st.from_regex(r"1\.2\.840\.[1-9][0-9]{0,12}(\.[1-9][0-9]{0,5}){0,3}", fullmatch=True)
IDS = st.integers(1, 0xFFFF)
COUNTS = st.none() | st.integers(0, 0xFFFF)


def _store_rq(draw: Any) -> tuple[Any, Any]:
    p = C_STORE()
    p.MessageID = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.AffectedSOPInstanceUID = draw(UIDS)
    p.Priority = draw(st.sampled_from([0, 1, 2]))
    if draw(st.booleans()):
        p.MoveOriginatorApplicationEntityTitle = draw(st.sampled_from(["MOVESCU", "A"]))
        p.MoveOriginatorMessageID = draw(IDS)
    p.DataSet = BytesIO(b"\x08\x00")
    return C_STORE_RQ(), p


def _store_rsp(draw: Any) -> tuple[Any, Any]:
    p = C_STORE()
    p.MessageIDBeingRespondedTo = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.AffectedSOPInstanceUID = draw(UIDS)
    p.Status = draw(st.sampled_from([0x0000, 0xA700, 0xB000, 0xC000]))
    return C_STORE_RSP(), p


def _find_rsp(draw: Any) -> tuple[Any, Any]:
    p = C_FIND()
    p.MessageIDBeingRespondedTo = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.Status = draw(st.sampled_from([0x0000, 0xFF00, 0xFF01, 0xFE00]))
    return C_FIND_RSP(), p


def _move_rsp(draw: Any) -> tuple[Any, Any]:
    p = C_MOVE()
    p.MessageIDBeingRespondedTo = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.Status = draw(st.sampled_from([0x0000, 0xFF00, 0xB000]))
    p.NumberOfRemainingSuboperations = draw(COUNTS)
    p.NumberOfCompletedSuboperations = draw(COUNTS)
    p.NumberOfFailedSuboperations = draw(COUNTS)
    p.NumberOfWarningSuboperations = draw(COUNTS)
    return C_MOVE_RSP(), p


def _action_rsp(draw: Any) -> tuple[Any, Any]:
    p = N_ACTION()
    p.MessageIDBeingRespondedTo = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.AffectedSOPInstanceUID = draw(UIDS)
    p.ActionTypeID = 1
    p.Status = 0
    return N_ACTION_RSP(), p


def _event_rq(draw: Any) -> tuple[Any, Any]:
    p = N_EVENT_REPORT()
    p.MessageID = draw(IDS)
    p.AffectedSOPClassUID = draw(UIDS)
    p.AffectedSOPInstanceUID = draw(UIDS)
    p.EventTypeID = draw(st.sampled_from([1, 2]))
    return N_EVENT_REPORT_RQ(), p


BUILDERS = [_store_rq, _store_rsp, _find_rsp, _move_rsp, _action_rsp, _event_rq]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), which=st.sampled_from(BUILDERS))
def test_command_sets_encode_byte_identically(data: st.DataObject, which: Any) -> None:
    message, primitive = which(data.draw)
    message.primitive_to_message(primitive)
    fast = encode_command_set(message.command_set)
    assert fast is not None
    assert fast == encode(message.command_set, True, True)


def test_unusual_elements_are_left_to_pydicom() -> None:
    message, primitive = C_STORE_RSP(), C_STORE()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.Status = 0xC000
    primitive.ErrorComment = "Ünïcode"  # not ASCII: pydicom decides
    message.primitive_to_message(primitive)
    assert encode_command_set(message.command_set) is None


@settings(max_examples=30, deadline=None)
@given(data=st.data(), which=st.sampled_from(BUILDERS))
def test_installed_encoder_sends_what_pydicom_would(data: st.DataObject, which: Any) -> None:
    install_command_encoder()
    message, primitive = which(data.draw)
    message.primitive_to_message(primitive)
    pdus = list(message.encode_msg(1, 16382))
    command = pdus[0].presentation_data_value_list[0][1][1:]
    assert command == encode(message.command_set, True, True)


def test_a_small_message_goes_as_one_pdu_and_a_large_one_in_fragments() -> None:
    install_command_encoder()
    message, primitive = _find_rsp(lambda s: {IDS: 3, UIDS: "1.2.840.10008.5.1.4.1.2.2.1"}.get(s))
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message.primitive_to_message(primitive)
    [pdu] = list(message.encode_msg(1, 16382))
    headers = [value[0] for _, value in pdu.presentation_data_value_list]
    assert headers == [0x03, 0x02]  # last command fragment, last data set fragment
    message.primitive_to_message(primitive)
    assert len(list(message.encode_msg(1, 40))) > 2  # too big for one PDU: as before
