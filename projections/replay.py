"""`chronicle replay`: rebuild every projection from the log, then swap.

Fresh tables are built beside the live ones (suffix `_new`) and swapped in with
EXCHANGE TABLES, so queries keep answering from the old tables until the new
ones are complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from infra.migrations import migrate
from infra.ports import BlobStore, EventLog, ProjectionStore
from projections.runner import Projector

log = logging.getLogger("chronicle.replay")

TABLES = ("patient", "study", "series", "instance", "receipt", "checkpoint")
SUFFIX = "_new"


def replay(
    event_log: EventLog,
    index: ProjectionStore,
    blobs: BlobStore | None = None,
    *,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Rebuild the projection tables from the whole log; return events applied."""
    for table in TABLES:
        index.command(f"DROP TABLE IF EXISTS {table}{SUFFIX}")
    migrate(index, suffix=SUFFIX)
    target = event_log.end()
    projector = Projector(event_log, index, blobs=blobs, batch=batch, suffix=SUFFIX)
    applied = 0

    def counted(n: int) -> None:
        nonlocal applied
        applied += n
        if progress:
            progress(n)

    projector.run_until(target, counted)
    for table in TABLES:
        index.command(f"EXCHANGE TABLES {table} AND {table}{SUFFIX}")
        index.command(f"DROP TABLE IF EXISTS {table}{SUFFIX}")
    log.info("replayed %d events up to %s", applied, target)
    return applied
