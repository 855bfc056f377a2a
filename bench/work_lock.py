"""One benchmark run per work folder."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def only_run_in(work: Path) -> Iterator[None]:
    """Refuse a work folder another run is using: two runs on one folder share
    the archives (two Orthancs on one index, one failing "database is locked")
    and each other's machine time."""
    work.mkdir(parents=True, exist_ok=True)
    with (work / ".scale.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another scale run is using {work}") from None
        yield
