"""Associations spread evenly over a node's front-end processes.

With one SO_REUSEPORT socket per process the kernel hashes every connection
to one process's accept queue: four associations land 3:1 or 4:0 on two
processes more often than 2:2, and a queued connection waits for its process
even when a sibling is idle. Measured on the 2-core bench machine, four
storescu associations: one process 260/s, two processes taking two each
~350/s, the kernel's spread ~270/s.

So the owner opens one listening socket that every worker inherits, and a
load board: shared memory with one counter of open associations per
process, each written only by its own process. All processes wait on the same
socket; one busier than its least busy sibling waits `YIELD_SECONDS` per
extra association before it accepts, so the sibling takes the connection.
If nobody did (the sibling is stuck or gone), it accepts anyway.

The board also says which workers are listening: the owner starts its HTTP
front-end (what readiness probes see) only once every worker is, or a node
just started would take its first associations in whichever process was
up first (measured: every association of a benchmark in the owner).
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

#: How long a busier process leaves a pending connection to a less busy one,
#: per association it has beyond the sibling's count.
YIELD_SECONDS = 0.005
_COUNTER = 4  # bytes per slot: a native int, read and written whole


def _env_names(kind: str) -> tuple[str, str, str, str]:
    """Where a worker finds the inherited socket's and board's descriptors and its
    slot, per kind of listener ("DIMSE", "HTTP": `api.http_balance`)."""
    prefix = f"CHRONICLE_{kind}_"
    return f"{prefix}LISTEN_FD", f"{prefix}BOARD_FD", f"{prefix}SLOT", f"{prefix}SLOTS"


class LoadBoard:
    """Open associations per process, and which processes listen, in memory
    every process of the node maps (a counter and a flag per slot)."""

    def __init__(self, fd: int, slots: int, slot: int) -> None:
        if not 0 <= slot < slots:
            raise ValueError(f"slot {slot} is outside a board of {slots}")
        self.fd, self.slots, self.slot = fd, slots, slot
        self._map = mmap.mmap(fd, 2 * slots * _COUNTER)
        cells = memoryview(self._map).cast("i")
        self._counts, self._ready = cells[:slots], cells[slots:]
        self._lock = threading.Lock()

    @classmethod
    def create(cls, slots: int) -> LoadBoard:
        """A zeroed board; the creating process (the owner) takes slot 0."""
        fd = os.memfd_create("chronicle-load", 0)
        os.ftruncate(fd, 2 * slots * _COUNTER)
        return cls(fd, slots, 0)

    def mark_ready(self) -> None:
        """This process accepts associations now."""
        self._ready[self.slot] = 1

    def wait_ready(self, timeout: float) -> list[int]:
        """Wait until every other slot is ready; the slots still not ready."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [i for i in range(self.slots) if i != self.slot and not self._ready[i]]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)

    def enter(self) -> None:
        with self._lock:
            self._counts[self.slot] += 1

    def leave(self) -> None:
        with self._lock:
            self._counts[self.slot] = max(0, self._counts[self.slot] - 1)

    def excess(self) -> int:
        """How many more associations this process has than its least busy sibling."""
        mine = self._counts[self.slot]
        others = [self._counts[i] for i in range(self.slots) if i != self.slot]
        return max(0, mine - min(others)) if others else 0

    def yield_to_siblings(self) -> bool:
        """Before accepting: leave a pending connection to a less busy sibling for
        `YIELD_SECONDS` per connection this process holds beyond it (if the
        sibling took it, the non-blocking accept then finds nothing). True when
        this process was the busier."""
        if excess := self.excess():
            time.sleep(YIELD_SECONDS * excess)
        return bool(excess)

    def ties_with(self, slot: int) -> bool:
        """This process holds as many as process `slot`."""
        return bool(self._counts[self.slot] == self._counts[slot])

    def counts(self) -> list[int]:
        return list(self._counts)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that sibling processes can bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections
    # only when the proto says TCP, and without it every response split in two
    # writes waited ~40 ms for the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


@dataclass
class SharedListener:
    """One of the node's listening sockets (DIMSE or HTTP) and its load board."""

    sock: socket.socket
    board: LoadBoard
    kind: str = "DIMSE"

    @classmethod
    def open(cls, host: str, port: int, processes: int, kind: str = "DIMSE") -> SharedListener:
        """The owner's: bound before any worker starts, so port 0 works too.
        SO_REUSEPORT still lets other `chronicle serve` processes join the port."""
        return cls(reuse_port_socket(host, port), LoadBoard.create(processes), kind)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, kind: str = "DIMSE"
    ) -> SharedListener | None:
        """A worker's, from what the owner passed it; None for a process on its own."""
        env = os.environ if env is None else env
        listen_fd, board_fd, slot, slots = _env_names(kind)
        if listen_fd not in env:
            return None
        sock = socket.socket(fileno=int(env[listen_fd]))
        board = LoadBoard(int(env[board_fd]), int(env[slots]), int(env[slot]))
        return cls(sock, board, kind)

    @property
    def fds(self) -> tuple[int, int]:
        return self.sock.fileno(), self.board.fd

    def env_for(self, slot: int) -> dict[str, str]:
        listen_fd, board_fd, slot_name, slots = _env_names(self.kind)
        return {
            listen_fd: str(self.sock.fileno()),
            board_fd: str(self.board.fd),
            slot_name: str(slot),
            slots: str(self.board.slots),
        }
