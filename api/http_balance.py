"""DICOMweb connections spread evenly over a node's front-end processes.

The DIMSE reasoning (`api.dimse.balance`) holds for HTTP too: with one
SO_REUSEPORT socket per process the kernel hashes each connection to one
process, so four keep-alive STOW-RS clients landed 3:1 or 4:0 on two
processes more often than 2:2, and a process holding three of them was
bound by its one interpreter lock while its sibling idled.

So, with workers, every process accepts from the owner's one HTTP socket in
a thread of its own, weighing its open connections on a load board like the
DIMSE listener's, and hands each accepted connection to its uvicorn event
loop; uvicorn itself listens on nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from api.dimse.balance import SharedListener

log = logging.getLogger("chronicle.http")

#: How often a waiting acceptor looks whether it should stop.
_POLL_SECONDS = 0.25
#: The owner's slot on the board, and how long a worker leaves it a connection
#: when both hold as many: a few of the interpreter's switch intervals, because
#: the owner's acceptor thread may wait one or more for the lock once select()
#: returns (1 ms lost the race now and then when the machine was busy; 5 ms
#: lost it in one start in three or four, in tests/integration/test_cli.py).
OWNER_SLOT = 0
TIE_YIELD_SECONDS = 0.02

ProtocolFactory = Callable[[], asyncio.Protocol]


class BalancedAcceptor:
    """Accepts from a shared socket for one event loop, leaving connections to a
    less busy sibling process when it has more open than that sibling."""

    def __init__(
        self, shared: SharedListener, loop: asyncio.AbstractEventLoop, factory: ProtocolFactory
    ) -> None:
        self._shared, self._loop, self._factory = shared, loop, factory
        shared.sock.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="HttpAcceptor", daemon=True)

    def start(self) -> None:
        self._shared.board.mark_ready()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * _POLL_SECONDS)

    def counted(self, protocol: asyncio.Protocol) -> asyncio.Protocol:
        """`protocol`, with its connection's end taken off this process's count."""
        board, lost = self._shared.board, protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                board.leave()

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _run(self) -> None:
        sock, board = self._shared.sock, self._shared.board
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], _POLL_SECONDS)
                if not ready:
                    continue
                busier = board.yield_to_siblings()
                if not busier and board.slot != OWNER_SLOT and board.ties_with(OWNER_SLOT):
                    # On a tie the owner takes it: it reads the index in
                    # process, a worker through the owner (a QIDO at 100k:
                    # 19 ms served by the owner, 24 ms by a worker).
                    time.sleep(TIE_YIELD_SECONDS)
                conn, _ = sock.accept()  # the socket does not block
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("accepting a DICOMweb connection failed: %s", exc)
                time.sleep(_POLL_SECONDS)
                continue
            board.enter()  # counted before the next connection is weighed
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            try:
                self._loop.call_soon_threadsafe(self._adopt, conn)
            except RuntimeError:  # the loop has closed: shutting down
                board.leave()
                conn.close()
                return

    def _adopt(self, conn: socket.socket) -> None:
        async def adopt() -> None:
            try:
                await self._loop.connect_accepted_socket(
                    lambda: self.counted(self._factory()), sock=conn
                )
            except OSError as exc:
                self._shared.board.leave()
                conn.close()
                log.warning("a DICOMweb connection failed before its first request: %s", exc)

        self._loop.create_task(adopt())
