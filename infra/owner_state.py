"""What the index owner's workers may know without asking it: shared memory.

Front-end workers read the embedded index through the owner over loopback
(`infra.proxy_index`). Two questions every read asks would each cost a round
trip there: has the index changed since an answer was kept (the read cache),
and does the projection cover the log end yet (read-your-writes). The owner
publishes both here as it changes them - its index write counter, how many
writes are in progress, its projector's checkpoint on partition 0 (the
embedded log's only one) and its count of writes that may change study_stats
(the study memory's clock) - and workers read them from the same memory.

Each cell is written by the owner only. A reader may see a write's counter
before its "in progress" mark or the reverse; either way it sees *some*
change and drops what it kept, so the worst a torn read does is invalidate
once too often. The checkpoint only grows, so a stale read only sends a
reader to the owner to wait.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping

from infra.ports import Position

#: The inherited memory's descriptor in a worker's environment.
OWNER_STATE_FD_ENV = "CHRONICLE_OWNER_STATE_FD"
_CELLS = 4  # writes, writes in progress, checkpoint of partition 0, study writes
_WRITES, _IN_PROGRESS, _CHECKPOINT, _STUDY_WRITES = range(_CELLS)


class OwnerState:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _CELLS * 8)
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> OwnerState:
        fd = os.memfd_create("chronicle-owner-state", 0)
        os.ftruncate(fd, _CELLS * 8)
        return cls(fd)  # zeroed: no write yet, nothing projected (next offset 0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OwnerState | None:
        env = os.environ if env is None else env
        fd = env.get(OWNER_STATE_FD_ENV)
        return cls(int(fd)) if fd else None

    def env(self) -> dict[str, str]:
        return {OWNER_STATE_FD_ENV: str(self.fd)}

    # -- the owner writes ------------------------------------------------------

    def publish_writes(self, writes: int, in_progress: int) -> None:
        # "In progress" first: a reader that sees the new counter sees it too.
        self._cells[_IN_PROGRESS] = in_progress
        self._cells[_WRITES] = writes

    def publish_study_writes(self, writes: int) -> None:
        self._cells[_STUDY_WRITES] = writes

    def publish_checkpoint(self, checkpoint: Mapping[int, int]) -> None:
        if set(checkpoint) <= {0}:
            self._cells[_CHECKPOINT] = checkpoint.get(0, 0)

    # -- workers read -------------------------------------------------------------

    def writes(self) -> tuple[int, int]:
        """(write counter, writes in progress) of the owner's index."""
        return self._cells[_WRITES], self._cells[_IN_PROGRESS]

    def study_writes(self) -> int:
        """The owner's count of writes that may change study_stats."""
        return self._cells[_STUDY_WRITES]

    def checkpoint(self) -> dict[int, int]:
        """The owner's projection position (partition 0, the embedded log's only one)."""
        return {0: self._cells[_CHECKPOINT]}

    def covers(self, target: Position) -> bool:
        """The owner's projection covers `target` (False: ask the owner)."""
        if not set(target) <= {0}:
            return False
        return self._cells[_CHECKPOINT] >= target.get(0, 0)
