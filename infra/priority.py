"""Background work yields the processor to the work someone waits for.

A serving node does two kinds of work: what a caller waits for (a C-STORE
response, a search) and what only has to keep up (projecting the log into
the index, ClickHouse merging the parts those inserts make). On a small
machine they meet on the same cores: during the scale suite's soak a search
waited for a core about as long as it ran, behind the projector's batches
and chDB's merges (docs/performance.md, fifteenth session).

Linux gives each thread its own nice value, so the threads that only keep up
run at `BACKGROUND_NICENESS`: they still get every idle cycle, and a waiting
request's thread runs first when both want a core. Raising one's own nice
value needs no privilege; it cannot be lowered again, which is why only
threads that do nothing else are lowered. Elsewhere (no per-thread nice
value) nothing is changed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger("chronicle.priority")

#: A nice-10 thread gets about a tenth of the processor time of a nice-0 one
#: when both are runnable (the kernel's weights 110 vs 1024).
BACKGROUND_NICENESS = 10
#: Set to 0 to keep every thread at the process's priority.
NICENESS_ENV = "CHRONICLE_BACKGROUND_NICENESS"
#: chDB's (ClickHouse's) merge and mutation pool: its threads name themselves so.
CHDB_BACKGROUND_THREADS = ("MergeMutate",)


def background_niceness() -> int:
    try:
        return max(0, min(19, int(os.environ.get(NICENESS_ENV, BACKGROUND_NICENESS))))
    except ValueError:
        return BACKGROUND_NICENESS


def _per_thread() -> bool:
    return sys.platform.startswith("linux")


def _lower(thread_id: int, niceness: int) -> bool:
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, thread_id, niceness)
        return True
    except OSError as exc:  # the thread ended, or a sandbox forbids it
        log.debug("thread %d keeps its priority: %s", thread_id, exc)
        return False


def lower_this_thread() -> None:
    """The calling thread runs as background work from now on."""
    niceness = background_niceness()
    if niceness and _per_thread():
        _lower(threading.get_native_id(), niceness)


def lower_threads_named(prefixes: Iterable[str], done: set[int]) -> None:
    """Lower this process's threads whose OS name starts with one of `prefixes`
    (threads a library started), skipping the ids in `done` and adding them."""
    niceness = background_niceness()
    if not niceness or not _per_thread():
        return
    wanted = tuple(prefixes)
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return
    for task in tasks:
        thread_id = int(task)
        if thread_id in done:
            continue
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="ascii", errors="replace") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        if name.startswith(wanted) and _lower(thread_id, niceness):
            done.add(thread_id)
