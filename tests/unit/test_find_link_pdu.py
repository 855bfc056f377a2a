"""A C-FIND response as one P-DATA-TF of two PDVs reads back whole in pynetdicom."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from api.dimse.find_link import one_pdu
from api.dimse.peer import command_set


def test_command_and_identifier_in_one_pdu_decode_as_one_message() -> None:
    identifier = Dataset()
    identifier.PatientName = "SMITH^JOHN"
    identifier.QueryRetrieveLevel = "STUDY"
    data = bytes(encode(identifier, True, True) or b"")
    command = command_set(
        [
            (0x00000002, "UI", "1.2.840.10008.5.1.4.1.2.2.1"),
            (0x00000100, "US", 0x8020),
            (0x00000120, "US", 7),
            (0x00000800, "US", 0x0000),
            (0x00000900, "US", 0xFF00),
        ]
    )
    raw = one_pdu(3, command, data)
    pdu = P_DATA_TF()
    pdu.decode(raw)
    assert len(pdu.presentation_data_value_items) == 2  # one PDU, two PDVs
    message = C_FIND_RSP()
    assoc = SimpleNamespace(_accepted_cx={})
    assert message.decode_msg(pdu.to_primitive(), assoc)  # type: ignore[arg-type]
    assert message.command_set.Status == 0xFF00
    assert message.command_set.MessageIDBeingRespondedTo == 7
    found = decode(BytesIO(message.data_set.getvalue()), True, True)  # type: ignore[union-attr]
    assert found.PatientName == "SMITH^JOHN"
