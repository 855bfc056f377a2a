"""A race-free pause of pynetdicom's association reactor (pynetdicom 3.0).

Before sending a request and reading its response itself, an association
clears `_reactor_checkpoint` and waits for `_is_paused`. But the reactor sets
`_is_paused = True` *before* calling `checkpoint.wait()` and `False` after
it: when the checkpoint was still set, the sender can see True in between,
send, and the reactor then takes the response off the queue ("Received
unexpected C-STORE service message", then a DIMSE timeout). A peer that
answers within a millisecond - Chronicle's own storage link - hits this
window. Here the checkpoint itself records, under a lock shared with
`clear()`, whether the reactor is parked on it, and `_is_paused` reads that;
the reactor's own "about to pause" flag is dropped as it enters `wait()`, so
a sender never proceeds on it once the reactor has passed a set checkpoint.
A reactor woken by `set()` leaves its parked state only under that lock and
only if the checkpoint is still set: a `clear()` that slipped in between the
wake-up and the lock (a sender that saw "parked" and went on) keeps it parked.
Seen with 8 C-FIND clients in one process: one final response in ~1,500 was
taken by the reactor, and the request timed out after 30 s.
pynetdicom's other uses of the flag are kept: `kill()` and `_serve_request`
(so a handler may call send_* on its own association) set it explicitly.
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom import association as _association


class ReactorCheckpoint(threading.Event):
    """`threading.Event` that knows whether a waiter is blocked on it."""

    def __init__(self, owner: Any = None) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._owner = owner
        self.parked = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._guard:
            if self._owner is not None:
                self._owner.__dict__[_FLAG] = False
            if self.is_set():
                return True
            self.parked = True
        while True:
            woken = super().wait(timeout)
            with self._guard:
                # Cleared again between the wake-up and this guard: a sender has
                # seen `parked` and is sending, so stay parked (the response it
                # waits for must not be taken off the queue here).
                if woken and not self.is_set():
                    continue
                self.parked = False
                return woken

    def clear(self) -> None:
        with self._guard:
            super().clear()


_FLAG = "_chronicle_paused"


def _get_paused(self: Any) -> bool:
    checkpoint = self.__dict__.get("_reactor_checkpoint")
    parked = isinstance(checkpoint, ReactorCheckpoint) and checkpoint.parked
    return parked or bool(self.__dict__.get(_FLAG, False))


def _set_paused(self: Any, value: bool) -> None:
    self.__dict__[_FLAG] = value


def install_reactor_pause() -> None:
    """Give every pynetdicom Association a ReactorCheckpoint (idempotent)."""
    cls = _association.Association
    if getattr(cls, "_chronicle_pause", False):
        return
    original_init = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        checkpoint = ReactorCheckpoint(self)
        checkpoint.set()
        self._reactor_checkpoint = checkpoint

    cls.__init__ = init  # type: ignore[method-assign]
    cls._is_paused = property(_get_paused, _set_paused)  # type: ignore[assignment]
    cls._chronicle_pause = True  # type: ignore[attr-defined]
