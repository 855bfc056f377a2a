"""The DIMSE client's byte level (command sets, P-DATA framing) and the sub-operation accounting.

A socketpair stands in for the peer: what PeerAssociation writes is read back
PDU by PDU and reassembled, so framing is checked against PS3.8 9.3.5 for
every fragment size, including the peer's smallest PDUs.
"""

from __future__ import annotations

import io
import socket
import struct
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode

from api.dimse.move import Ending, RetrieveResponder, drop_next_response, final_status, perform
from api.dimse.peer import (
    C_STORE_RSP,
    DimseError,
    PeerAssociation,
    command_set,
    dataset_start,
    parse_command,
    pdata_pdus,
    read_pdu,
    us_value,
)
from api.dimse.retrieve import EXPLICIT, Delivery, Outgoing, Part10File, SubOperationFailed
from api.scu import SubOutcome, Tally
from tests.support import dataset_bytes, make_ct, part10_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"


def _command_pdus(sock: socket.socket) -> tuple[list[tuple[int, int, bytes]], int]:
    """Every PDV of one message (command, then dataset): (context, control, value)."""
    pdvs: list[tuple[int, int, bytes]] = []
    biggest = 0
    seen_last_data = seen_last_command = False
    while not seen_last_data:
        kind, pdu = read_pdu(sock)
        assert kind == 0x04
        biggest = max(biggest, len(pdu) - 6)
        pos = 6
        while pos < len(pdu):
            length = struct.unpack_from(">I", pdu, pos)[0]
            context, control = pdu[pos + 4], pdu[pos + 5]
            pdvs.append((context, control, pdu[pos + 6 : pos + 4 + length]))
            seen_last_command |= control == 0x03
            seen_last_data |= control == 0x02
            pos += 4 + length
    assert seen_last_command
    return pdvs, biggest


def _answer(sock: socket.socket, msg_id: int, status: int) -> None:
    response = command_set(
        [
            (0x00000002, "UI", CT),
            (0x00000100, "US", C_STORE_RSP),
            (0x00000120, "US", msg_id),
            (0x00000800, "US", 0x0101),
            (0x00000900, "US", status),
        ]
    )
    sock.sendall(b"".join(bytes(p) for p in pdata_pdus(1, response, 0x01, 4096)))


@settings(max_examples=25, deadline=None)
@given(fragment=st.sampled_from([100, 1018, 16378, 1 << 20]), rows=st.integers(1, 40))
def test_a_stored_file_goes_out_whole_in_pdus_the_peer_can_take(fragment: int, rows: int) -> None:
    ds = make_ct(rows=rows, cols=7)
    data = part10_bytes(ds)
    ours, theirs = socket.socketpair()
    assoc = PeerAssociation(ours, "PEER", {1: (CT, EXPLICIT)}, fragment)
    result: dict[str, Any] = {}

    def peer() -> None:
        pdvs, biggest = _command_pdus(theirs)
        command = parse_command(b"".join(v for _, c, v in pdvs if c & 0x01))
        result["command"], result["biggest"] = command, biggest
        result["dataset"] = b"".join(v for _, c, v in pdvs if not c & 0x01)
        _answer(theirs, us_value(command[0x00000110]) or 0, 0xB000)

    thread = threading.Thread(target=peer)
    thread.start()
    with tempfile.NamedTemporaryFile(suffix=".dcm") as file:
        file.write(data)
        file.flush()
        file.seek(0)
        part = Part10File(file.name, file.file)  # type: ignore[arg-type]
        request = assoc.prepare_store(
            part, sop_class=CT, sop_instance="1.2.3", originator_aet="MOVER", originator_id=9
        )
        status = assoc.send_store(request)
    thread.join(5)
    ours.close()
    theirs.close()

    assert status == (0xB000, "")
    assert result["dataset"] == dataset_bytes(data)
    assert result["biggest"] <= fragment + 6
    command = result["command"]
    assert us_value(command[0x00000100]) == 0x0001
    assert command[0x00001030].rstrip(b" ") == b"MOVER"
    assert us_value(command[0x00001031]) == 9


def test_command_sets_are_implicit_little_endian_with_their_group_length() -> None:
    encoded = command_set([(0x00000900, "US", 0xFF00), (0x00000002, "UI", "1.2.3")])

    decoded = decode(io.BytesIO(encoded), True, True)

    assert decoded.CommandGroupLength == len(encoded) - 12
    assert decoded.AffectedSOPClassUID == "1.2.3"
    assert decoded.Status == 0xFF00
    assert list(parse_command(encoded)) == [0x00000000, 0x00000002, 0x00000900]


def test_dataset_start_walks_the_file_meta() -> None:
    data = part10_bytes(make_ct(rows=4, cols=4))

    offset, syntax = dataset_start(data[:4096])

    assert data[offset:] == dataset_bytes(data)
    assert syntax == EXPLICIT
    with pytest.raises(SubOperationFailed):
        dataset_start(b"\0" * 200)


# -- accounting and the C-MOVE responses ------------------------------------------


def _item() -> Outgoing:
    return Outgoing(CT, generate_uid(), EXPLICIT, lambda: io.BytesIO(b""))


def test_tally_counts_completed_warning_failed_and_decoded() -> None:
    items = [_item() for _ in range(5)]
    tally = Tally(5)

    tally.add(SubOutcome(items[0], 0x0000, Delivery.AS_STORED))
    tally.add(SubOutcome(items[1], 0x0000, Delivery.EXPLICIT_LE))
    tally.add(SubOutcome(items[2], 0xB007, Delivery.AS_STORED, "coerced"))
    tally.add(SubOutcome(items[3], 0xA700, Delivery.AS_STORED, "full"))

    assert (tally.completed, tally.warning, tally.failed, tally.remaining) == (2, 1, 1, 1)
    assert tally.decoded == 1
    assert tally.failed_uids == [items[3].sop_instance_uid]
    tally.fail_all(items[4:], "lost")
    assert tally.remaining == 0 and tally.reasons[items[4].sop_instance_uid] == "lost"


@pytest.mark.parametrize(
    ("completed", "warning", "failed", "status"),
    [(3, 0, 0, 0x0000), (0, 0, 3, 0xA702), (2, 0, 1, 0xB000), (0, 1, 2, 0xB000), (0, 0, 0, 0)],
)
def test_final_status(completed: int, warning: int, failed: int, status: int) -> None:
    tally = Tally(completed + warning + failed, completed, failed, warning)

    assert final_status(tally) == status


class _Socket:
    def __init__(self) -> None:
        self.sent = b""

    def send(self, data: bytes) -> None:
        self.sent += data


def _responder(max_pdu: int = 0) -> tuple[RetrieveResponder, _Socket]:
    sock = _Socket()
    assoc = SimpleNamespace(
        dul=SimpleNamespace(socket=sock), dimse=SimpleNamespace(maximum_pdu_size=max_pdu)
    )
    syntax = SimpleNamespace(is_implicit_VR=True, is_little_endian=True, is_deflated=False)
    event = SimpleNamespace(
        assoc=assoc,
        context=SimpleNamespace(context_id=3, transfer_syntax=syntax),
        request=SimpleNamespace(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2", MessageID=11),
    )
    return RetrieveResponder(event), sock


def _messages(data: bytes) -> tuple[dict[int, bytes], bytes]:
    command, dataset = b"", b""
    pos = 0
    while pos < len(data):
        length = struct.unpack_from(">I", data, pos + 2)[0]
        control = data[pos + 11]
        value = data[pos + 12 : pos + 6 + length]
        if control & 0x01:
            command += value
        else:
            dataset += value
        pos += 6 + length
    return parse_command(command), dataset


def test_pending_responses_carry_the_four_counts() -> None:
    responder, sock = _responder()
    tally = Tally(4, completed=1, failed=1, warning=0)

    responder.pending(tally)

    command, dataset = _messages(sock.sent)
    assert us_value(command[0x00000100]) == 0x8021 and us_value(command[0x00000120]) == 11
    assert us_value(command[0x00000900]) == 0xFF00
    assert [us_value(command[t]) for t in (0x1020, 0x1021, 0x1022, 0x1023)] == [2, 1, 1, 0]
    assert us_value(command[0x00000800]) == 0x0101 and dataset == b""


def test_final_warning_lists_the_failed_instances_in_pdus_the_requestor_takes() -> None:
    responder, sock = _responder(max_pdu=4096)
    uids = [generate_uid() for _ in range(200)]  # ~13 KB of UIDs: several PDUs
    tally = Tally(201, completed=1, failed=200, failed_uids=uids)

    responder.final(tally)

    command, dataset = _messages(sock.sent)
    assert us_value(command[0x00000900]) == 0xB000
    assert 0x00001020 not in command  # no Remaining in a final response
    listing = decode(io.BytesIO(dataset), True, True)
    assert list(listing.FailedSOPInstanceUIDList) == uids


def test_pynetdicoms_closing_response_is_dropped_once() -> None:
    sent: list[Any] = []

    class Dimse:
        def send_msg(self, primitive: Any, context_id: int) -> None:
            sent.append(primitive.MessageIDBeingRespondedTo)

    dimse = Dimse()
    assoc = SimpleNamespace(dimse=dimse)
    drop_next_response(assoc, 5)

    dimse.send_msg(SimpleNamespace(MessageIDBeingRespondedTo=5), 1)
    dimse.send_msg(SimpleNamespace(MessageIDBeingRespondedTo=5), 1)

    assert sent == [5]


# -- the sub-operation loop ------------------------------------------------------


class _Link:
    """Stands in for PeerAssociation/RequestorLink: accepts Explicit VR LE CT."""

    peer = "PEER"

    def __init__(self, statuses: dict[int, int], lose_at: int | None = None) -> None:
        self.statuses, self.lose_at, self.sent = statuses, lose_at, 0
        self.originators: list[tuple[str | None, int | None]] = []

    def syntaxes(self, sop_class: str) -> set[str]:
        return {EXPLICIT}

    def prepare_store(self, part: Any, **kwargs: Any) -> Any:
        self.originators.append((kwargs["originator_aet"], kwargs["originator_id"]))
        return object()

    def send_store(self, request: Any, while_waiting: Any = None) -> tuple[int, str]:
        if self.sent == self.lose_at:
            raise DimseError("peer closed the connection")
        self.sent += 1
        if while_waiting is not None:
            while_waiting()
        return self.statuses.get(self.sent, 0x0000), ""


class _Responder:
    """Records each Pending response's counts when it is written."""

    def __init__(self, event: Any, cancel_after: int | None = None) -> None:
        self.event, self.cancel_after, self.pendings = event, cancel_after, []

    def pending_message(self, tally: Tally) -> tuple[int, int, int, int]:
        return (tally.remaining, tally.completed, tally.failed, tally.warning)

    def write(self, message: tuple[int, int, int, int]) -> None:
        self.pendings.append(message)
        if len(self.pendings) == self.cancel_after:
            self.event.is_cancelled = True


def _event() -> Any:
    requestor = SimpleNamespace(ae_title="MOVESCU")
    return SimpleNamespace(
        is_cancelled=False,
        assoc=SimpleNamespace(is_established=True, requestor=requestor),
        request=SimpleNamespace(MessageID=21),
    )


def _ct_items(count: int) -> list[Outgoing]:
    data = part10_bytes(make_ct(rows=4, cols=4))
    return [Outgoing(CT, generate_uid(), EXPLICIT, lambda: io.BytesIO(data)) for _ in range(count)]


def test_a_failed_sub_operation_does_not_stop_the_rest(tmp_path: Path) -> None:
    event, items, tally = _event(), _ct_items(4), Tally(4)
    link, responder = _Link({2: 0xA700, 3: 0xB000}), _Responder(event)

    ending = perform(event, link, items, tally, responder, tmp_path, originator="MOVESCU")  # type: ignore[arg-type]

    assert ending is Ending.DONE
    assert responder.pendings == [(3, 1, 0, 0), (2, 1, 1, 0), (1, 1, 1, 1), (0, 2, 1, 1)]
    assert tally.failed_uids == [items[1].sop_instance_uid]
    assert link.originators == [("MOVESCU", 21)] * 4


def test_c_cancel_stops_between_sub_operations(tmp_path: Path) -> None:
    event, items, tally = _event(), _ct_items(5), Tally(5)
    responder = _Responder(event, cancel_after=2)

    ending = perform(event, _Link({}), items, tally, responder, tmp_path, originator=None)  # type: ignore[arg-type]

    # The 2nd Pending response goes out while the 3rd C-STORE is with the
    # peer; the cancel seen then stops the loop before the 4th.
    assert ending is Ending.CANCELLED
    assert (tally.completed, tally.remaining) == (3, 2)
    assert [p[1] for p in responder.pendings] == [1, 2, 3]  # every Pending owed went out


def test_a_lost_receiver_fails_what_is_left(tmp_path: Path) -> None:
    event, items, tally = _event(), _ct_items(5), Tally(5)

    ending = perform(
        event, _Link({}, lose_at=2), items, tally, _Responder(event), tmp_path, originator=None
    )  # type: ignore[arg-type]

    assert ending is Ending.LOST
    assert (tally.completed, tally.failed, tally.remaining) == (2, 3, 0)
    assert tally.failed_uids == [i.sop_instance_uid for i in items[2:]]
