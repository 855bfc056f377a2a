"""A worker's reads through the owner survive a pooled connection the owner drops.

The scale suite's soak once stopped on `index owner ... unreachable: Connection
reset by peer`: a worker sent a read on a kept-alive connection the owner was
closing (both sides dropped idle connections after 5 s). Reads are sent once
more on a new connection; the owner now keeps idle connections longer than the
workers' clients do."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from api.workers import INTERNAL_KEEP_ALIVE_SECONDS
from infra.errors import Unavailable
from infra.proxy_index import OwnerProjectionStore

_ANSWER = json.dumps({"columns": ["n"], "rows": [[1]]}).encode()
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_ANSWER)}\r\n\r\n".encode()
    + _ANSWER
)


def _read_request(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return True


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.fixture
def owner() -> Iterator[tuple[str, list[int]]]:
    """Answers one request per connection, then resets it when the next one
    arrives: every reuse of a pooled connection meets the race."""
    server = socket.create_server(("127.0.0.1", 0))
    answered: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if _read_request(conn):
                    answered.append(1)  # before the answer: the client may check at once
                    conn.sendall(_RESPONSE)
                if _read_request(conn):
                    _reset(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", answered
    server.close()


def test_a_read_on_a_connection_the_owner_dropped_is_sent_again(
    owner: tuple[str, list[int]],
) -> None:
    url, answered = owner
    store = OwnerProjectionStore(url, token="t")
    try:
        for _ in range(3):
            assert store.query("SELECT 1") == [(1,)]
    finally:
        store.close()
    assert len(answered) == 3


def test_an_owner_that_is_gone_is_unavailable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    store = OwnerProjectionStore(url, token="t", timeout=2)
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            store.query("SELECT 1")
    finally:
        store.close()


def test_the_owner_keeps_idle_connections_longer_than_workers_do() -> None:
    assert INTERNAL_KEEP_ALIVE_SECONDS > 5  # httpx's keepalive_expiry
