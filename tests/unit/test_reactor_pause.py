"""The reactor checkpoint reports a pause only once the reactor is really parked."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from api.dimse.reactor_pause import ReactorCheckpoint, _get_paused, _set_paused


def test_a_pass_through_a_set_checkpoint_never_counts_as_paused() -> None:
    owner = SimpleNamespace()
    checkpoint = ReactorCheckpoint(owner)
    owner.__dict__["_reactor_checkpoint"] = checkpoint
    checkpoint.set()
    _set_paused(owner, True)  # the reactor's "about to pause", before wait()
    assert checkpoint.wait(0)  # set: it passes straight through...
    assert not _get_paused(owner)  # ...and is not paused, whatever the flag said


def test_a_sender_proceeds_only_while_the_reactor_is_parked() -> None:
    owner = SimpleNamespace()
    checkpoint = ReactorCheckpoint(owner)
    owner.__dict__["_reactor_checkpoint"] = checkpoint
    checkpoint.set()
    checkpoint.clear()  # the sender pauses the reactor
    assert not _get_paused(owner)
    reactor = threading.Thread(target=checkpoint.wait, daemon=True)
    reactor.start()
    deadline = time.monotonic() + 5
    while not _get_paused(owner) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert _get_paused(owner) and reactor.is_alive()  # parked, so it cannot take messages
    checkpoint.set()
    reactor.join(5)
    assert not _get_paused(owner)


def test_an_explicit_pause_still_counts() -> None:
    owner = SimpleNamespace()
    owner.__dict__["_reactor_checkpoint"] = ReactorCheckpoint(owner)
    _set_paused(owner, True)  # kill() and _serve_request say so explicitly
    assert _get_paused(owner)


def test_a_clear_between_wake_up_and_unpark_keeps_the_reactor_parked() -> None:
    """The window a GIL switch opens: set() wakes the reactor, and before it
    leaves its parked state a sender clears the checkpoint, sees "parked" and
    sends. The reactor must stay parked, or it takes the sender's response."""
    owner = SimpleNamespace()
    checkpoint = ReactorCheckpoint(owner)
    owner.__dict__["_reactor_checkpoint"] = checkpoint
    reactor = threading.Thread(target=checkpoint.wait, daemon=True)
    reactor.start()
    deadline = time.monotonic() + 5
    while not checkpoint.parked and time.monotonic() < deadline:
        time.sleep(0.001)
    with checkpoint._guard:  # hold the reactor between its wake-up and the unpark
        checkpoint.set()
        time.sleep(0.05)  # it wakes and blocks on the guard
        threading.Event.clear(checkpoint)  # the sender's clear(), inside the guard
        assert _get_paused(owner)  # what the sender reads before sending
    reactor.join(0.2)
    assert reactor.is_alive() and _get_paused(owner)  # still parked
    checkpoint.set()  # the sender is done
    reactor.join(5)
    assert not reactor.is_alive() and not _get_paused(owner)
