"""Background work (the projector's loop and inserters, chDB's merges) runs at
BACKGROUND_NICENESS; a command projecting in the foreground and every other
thread keep their priority; CHRONICLE_BACKGROUND_NICENESS=0 changes nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from infra import clickhouse, priority
from infra.ports import ProjectionStore
from projections.runner import Projector
from tests.unit.test_projector_checkpoint import SUFFIX, GrowingLog, _filled
from tests.unit.test_projector_checkpoint import store as store


def _nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def _in_thread(work: Callable[[], None], name: str = "probe") -> int:
    """Run `work` on a new thread; that thread's nice value once done, read
    while it still lives."""
    seen: list[int] = []
    finished, release = threading.Event(), threading.Event()

    def run() -> None:
        work()
        seen.append(threading.get_native_id())
        finished.set()
        release.wait(10)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    finished.wait(10)
    try:
        return _nice(seen[0])
    finally:
        release.set()
        thread.join()


@pytest.fixture()
def niceness(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.delenv(priority.NICENESS_ENV, raising=False)
    yield priority.BACKGROUND_NICENESS


def test_a_background_thread_lowers_itself_and_no_other(niceness: int) -> None:
    before = _nice(threading.get_native_id())
    assert _in_thread(priority.lower_this_thread) == max(before, niceness)
    assert _nice(threading.get_native_id()) == before  # the caller's own thread untouched


def test_niceness_zero_leaves_every_thread_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(priority.NICENESS_ENV, "0")
    before = _in_thread(lambda: None)
    assert _in_thread(priority.lower_this_thread) == before


def test_threads_are_lowered_by_their_os_name(niceness: int) -> None:
    named: list[int] = []
    ready, release = threading.Event(), threading.Event()

    def merge_like() -> None:
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm", "w") as fh:
            fh.write("MergeMutate3")
        named.append(tid)
        ready.set()
        release.wait(10)

    thread = threading.Thread(target=merge_like)
    thread.start()
    ready.wait(10)
    try:
        done: set[int] = set()
        priority.lower_threads_named(("MergeMutate",), done)
        assert done == {named[0]}
        assert _nice(named[0]) == niceness
        assert _nice(threading.get_native_id()) < niceness
    finally:
        release.set()
        thread.join()


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_the_projectors_loop_and_inserters_run_as_background_work(
    store: ProjectionStore, niceness: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse, "LOWER_MERGES_EVERY_S", 0.0)
    log = _filled(GrowingLog())
    projector = Projector(log, store, suffix=SUFFIX, batch=4, gather_seconds=0)  # type: ignore[arg-type]
    projector.start()
    try:
        assert projector.wait(log.end(), timeout=30)
        loop = _threads("projector-")
        inserters = _threads("insert-")
        assert loop and inserters
        for thread in loop + inserters:
            assert thread.native_id is not None and _nice(thread.native_id) == niceness
        merges = _merge_threads()
        assert merges, "chDB names no MergeMutate thread: its merges would keep nice 0"
        assert all(_nice(tid) == niceness for tid in merges)
    finally:
        projector.stop()
    assert _nice(threading.get_native_id()) < niceness


def _merge_threads() -> list[int]:
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as fh:
            if fh.read().startswith("MergeMutate"):
                found.append(int(task))
    return found


def test_a_foreground_projection_keeps_its_priority(store: ProjectionStore, niceness: int) -> None:
    log = _filled(GrowingLog())
    projector = Projector(log, store, suffix=SUFFIX, batch=4, gather_seconds=0)  # type: ignore[arg-type]
    before = _in_thread(lambda: None)
    assert _in_thread(lambda: projector.run_until(log.end()), name="replay") == before
    pool = projector._pool
    assert pool is not None
    inserters = [t for t in _threads("insert-") if t.is_alive()]
    assert inserters and all(
        t.native_id is not None and _nice(t.native_id) == before for t in inserters
    )
    projector.stop()
