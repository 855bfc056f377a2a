"""DIMSE messages of a storage association, read and written on a blocking socket.

`MessageReader` turns P-DATA-TF PDUs into complete messages: command
fragments are gathered and parsed (Implicit VR Little Endian, PS3.7 E.1),
data set fragments go straight from the receive buffer to a file, never
assembled in memory. It answers A-RELEASE-RQ itself; an A-ABORT, a closed
connection or a PDV on a context that was not accepted ends the association.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .peer import command_set, parse_command, pdata_pdus, text_value, us_value

P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
_COMMAND, _LAST = 0x01, 0x02
NO_DATASET = 0x0101
#: Largest PDU accepted from a peer that ignores our maximum (0 = unlimited).
MAX_PDU = 64 * 1024 * 1024
#: Messages whose data set is a query identifier, kept in memory: C-FIND-RQ.
IN_MEMORY = frozenset({0x0020})
MAX_IDENTIFIER = 1024 * 1024


class ProtocolError(ConnectionError):
    """The peer broke the upper-layer protocol; the association is aborted."""


@dataclass
class Message:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    command_field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    dataset_path: Path | None = None
    dataset_bytes: int = 0
    #: Where the data set starts in its file (after what the opener wrote first).
    dataset_offset: int = 0
    #: sha256 of the data set's bytes, computed as they arrived.
    dataset_sha256: str | None = None
    #: A query's identifier, kept in memory (a C-STORE's data set goes to a file).
    identifier: bytes | None = None


class MessageReader:
    def __init__(
        self,
        sock: socket.socket,
        contexts: dict[int, tuple[str, str]],
        open_file: Callable[[Message], Any],
    ) -> None:
        self._sock = sock
        self._contexts = contexts
        self._open_file = open_file
        self._buffer = bytearray(256 * 1024)
        self._command = bytearray()
        self._message: Message | None = None
        self._file: Any = None
        self._digest: Any = None
        self._memory: bytearray | None = None

    def next_message(self) -> Message | None:
        """The next complete message, or None once the peer released or aborted."""
        while True:
            kind, length = self._header()
            if kind is None:
                return None
            body = self._body(length)
            if kind == RELEASE_RQ:
                self._sock.sendall(struct.pack(">BBII", RELEASE_RP, 0, 4, 0))
                return None
            if kind == ABORT:
                return None
            if kind != P_DATA:
                raise ProtocolError(f"unexpected PDU type 0x{kind:02X}")
            done = self._pdvs(body)
            if done is not None:
                return done

    def discard(self) -> None:
        """Delete the file of a data set that never completed."""
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._file = None

    def _header(self) -> tuple[int | None, int]:
        head = bytearray(6)
        if not _fill(self._sock, memoryview(head), allow_eof=True):
            return None, 0
        kind, _, length = struct.unpack(">BBI", head)
        if length > MAX_PDU:
            raise ProtocolError(f"a {length}-byte PDU")
        return kind, length

    def _body(self, length: int) -> memoryview:
        if len(self._buffer) < length:
            self._buffer = bytearray(length)
        view = memoryview(self._buffer)[:length]
        _fill(self._sock, view, allow_eof=False)
        return view

    def _pdvs(self, body: memoryview) -> Message | None:
        complete: Message | None = None
        pos = 0
        while pos + 6 <= len(body):
            item_length = struct.unpack_from(">I", body, pos)[0]
            context_id, control = body[pos + 4], body[pos + 5]
            value = body[pos + 6 : pos + 4 + item_length]
            pos += 4 + item_length
            if complete is not None:
                raise ProtocolError("a PDV after a complete message in the same PDU")
            if context_id not in self._contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            if control & _COMMAND:
                complete = self._command_fragment(context_id, value, control)
            else:
                complete = self._data_fragment(value, control)
        return complete

    def _command_fragment(self, context_id: int, value: memoryview, control: int) -> Message | None:
        if self._message is not None:
            raise ProtocolError("a command before the previous data set ended")
        self._command += value
        if not control & _LAST:
            return None
        elements = parse_command(bytes(self._command))
        self._command.clear()
        abstract, transfer = self._contexts[context_id]
        message = Message(
            context_id=context_id,
            abstract_syntax=abstract,
            transfer_syntax=transfer,
            command_field=us_value(elements.get(0x00000100)) or 0,
            message_id=us_value(elements.get(0x00000110)) or 0,
            sop_class_uid=text_value(elements.get(0x00000002)),
            sop_instance_uid=text_value(elements.get(0x00001000)),
        )
        if us_value(elements.get(0x00000800)) == NO_DATASET:
            return message
        self._message = message
        if message.command_field in IN_MEMORY:
            self._memory = bytearray()
            return None
        self._file = self._open_file(message)
        message.dataset_path = Path(self._file.name)
        message.dataset_offset = self._file.tell()
        # Hashed on the way in: ingest need not read the data set again for it.
        self._digest = hashlib.sha256()
        return None

    def _data_fragment(self, value: memoryview, control: int) -> Message | None:
        message = self._message
        if message is not None and self._memory is not None:
            self._memory += value
            if len(self._memory) > MAX_IDENTIFIER:
                raise ProtocolError(f"a query identifier over {MAX_IDENTIFIER} bytes")
            if not control & _LAST:
                return None
            message.identifier = bytes(self._memory)
            self._memory = None
            self._message = None
            return message
        if message is None or self._file is None:
            raise ProtocolError("a data set fragment without its command")
        write_all(self._file, value)
        self._digest.update(value)
        message.dataset_bytes += len(value)
        if not control & _LAST:
            return None
        message.dataset_sha256 = self._digest.hexdigest()
        self._file.close()
        self._file = None
        self._message = None
        return message


def write_all(file: Any, data: bytes | memoryview) -> None:
    """All of `data`: a raw (unbuffered) file may take less than asked."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _fill(sock: socket.socket, view: memoryview, *, allow_eof: bool) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if allow_eof and got == 0:
                return False
            raise ConnectionError("the peer closed the connection mid-PDU")
        got += n
    return True


def read_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    _fill(sock, memoryview(buffer), allow_eof=False)
    return bytes(buffer)


def _pdata(context_id: int, command: bytes) -> bytes:
    """A response's command set as one P-DATA-TF (a few dozen bytes: one fragment)."""
    return b"".join(pdata_pdus(context_id, command, _COMMAND, len(command) or 1))


def echo_response(message: Message) -> bytes:
    return _pdata(
        message.context_id,
        command_set(
            [
                (0x00000002, "UI", message.sop_class_uid),
                (0x00000100, "US", 0x8030),
                (0x00000120, "US", message.message_id),
                (0x00000800, "US", NO_DATASET),
                (0x00000900, "US", 0x0000),
            ]
        ),
    )


def store_response(message: Message, status: int, comment: str) -> bytes:
    elements: list[tuple[int, str, int | str]] = [
        (0x00000002, "UI", message.sop_class_uid),
        (0x00000100, "US", 0x8001),
        (0x00000120, "US", message.message_id),
        (0x00000800, "US", NO_DATASET),
        (0x00000900, "US", status),
        (0x00001000, "UI", message.sop_instance_uid),
    ]
    if comment:
        elements.append((0x00000902, "LO", comment))
    return _pdata(message.context_id, command_set(elements))
