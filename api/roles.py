"""What a `chronicle serve` process runs: any subset of ingest, projector, api.

- ingest: DIMSE Verification + Storage SCP and STOW-RS. No projection store
  at all: blob to the blob store, event to the log, acknowledgement.
- projector: the Projector and the storage commitment reactor.
- api: QIDO-RS, WADO-RS, WADO-URI, rendered, frames, metadata; DIMSE C-FIND,
  C-MOVE, C-GET and Storage Commitment.

api and projector share the projection store. chDB allows one process per
directory, so on chdb:// they live in one process; on a ClickHouse server an
api process without a projector reads the projector's checkpoint rows for
read-your-writes (`CheckpointWatcher`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from infra.errors import Invalid, Unavailable
from infra.ports import Position, ProjectionStore, covers
from infra.settings import ROLES, Settings

INGEST, PROJECTOR, API = ROLES

#: How often an api process without a projector re-reads the checkpoint rows.
CHECKPOINT_POLL_SECONDS = 0.02


class ProjectionFeed(Protocol):
    """What front-ends need of the projector: its position and a bounded wait.

    `projections.runner.Projector` in the process that projects; a view of it
    elsewhere (`CheckpointWatcher`, `api.workers.OwnerProjector`, `NoFeed`).
    """

    @property
    def skipped(self) -> int: ...

    @property
    def last_error(self) -> str: ...

    def checkpoint(self) -> dict[int, int]: ...

    def wait(self, target: Position, timeout: float) -> bool: ...

    def run_until(
        self, target: Position, progress: Callable[[int], None] | None = None
    ) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def reload(self) -> None: ...


def describe(roles: Collection[str]) -> str:
    """`ingest,projector,api` order, comma-separated (log lines, /healthz)."""
    return ",".join(role for role in ROLES if role in roles)


def is_embedded_index(index_url: str) -> bool:
    return index_url.lower().startswith("chdb:")


def check_roles(settings: Settings) -> None:
    """Refuse a split that chDB cannot serve: api and projector apart on chdb://."""
    roles = set(settings.roles)
    if not is_embedded_index(settings.index_url) or (API in roles) == (PROJECTOR in roles):
        return
    given, missing = (API, PROJECTOR) if API in roles else (PROJECTOR, API)
    raise Invalid(
        f"--role {describe(roles)}: the {given} role needs the {missing} role in the same "
        f"process on the embedded index {settings.index_url} (chDB allows one process per "
        f"directory). Run --role {describe(roles | {API, PROJECTOR})}, or put the index on "
        "a ClickHouse server (--index-url http://host:8123/db) to run them as separate processes."
    )


def front_end_roles(roles: Collection[str]) -> frozenset[str]:
    """The roles a front-end worker process takes over: all but the projector."""
    return frozenset(roles).difference({PROJECTOR})


def needs_index(roles: Collection[str]) -> bool:
    return API in roles or PROJECTOR in roles


class CheckpointWatcher:
    """The projector as an api process without one sees it: its checkpoint rows.

    The projector stores its per-partition Position in the `checkpoint` table
    beside the rows it produced (projections/runner.py), so once those rows
    cover a log end, so do the projections. Read fresh every time: another
    process writes them.
    """

    skipped = 0
    last_error = ""

    def __init__(
        self,
        index: ProjectionStore,
        *,
        name: str = "levels",
        poll_seconds: float = CHECKPOINT_POLL_SECONDS,
        patience: float = 60.0,
    ) -> None:
        self._index = index
        self._name = name
        self._poll = poll_seconds
        self._patience = patience

    def checkpoint(self) -> dict[int, int]:
        rows = self._index.query(
            "SELECT partition, next_offset FROM checkpoint FINAL WHERE projector = {name:String}",
            {"name": self._name},
        )
        return {int(p): int(o) for p, o in rows}

    def wait(self, target: Position, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not covers(self.checkpoint(), target):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self._poll, remaining))
        return True

    def run_until(self, target: Position, progress: Callable[[int], None] | None = None) -> None:
        """Another process projects: wait for it (bounded by `patience`)."""
        if not self.wait(target, self._patience):
            raise Unavailable(f"the projector has not reached {dict(target)} yet")

    def start(self) -> None:
        """Another process runs the projector."""

    def stop(self) -> None:
        """Another process runs the projector."""

    def reload(self) -> None:
        """Nothing cached: every call reads the checkpoint rows."""


def _not_here(what: str) -> Unavailable:
    return Unavailable(f"this process runs no {what}: start it with --role api or projector")


class NoIndex:
    """The projection store of a process without the api and projector roles.

    Opens nothing: an ingest node keeps no local state and never loads the
    ClickHouse driver. Any use is a wiring mistake and says so.
    """

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        raise _not_here("projection store")

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        raise _not_here("projection store")

    def query_dicts(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        raise _not_here("projection store")

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        raise _not_here("projection store")

    def close(self) -> None:
        """Nothing was opened."""


class NoFeed:
    """The projector of a process without the api and projector roles."""

    skipped = 0
    last_error = ""

    def checkpoint(self) -> dict[int, int]:
        raise _not_here("projector")

    def wait(self, target: Position, timeout: float) -> bool:
        raise _not_here("projector")

    def run_until(self, target: Position, progress: Callable[[int], None] | None = None) -> None:
        raise _not_here("projector")

    def start(self) -> None:
        """No projector here."""

    def stop(self) -> None:
        """No projector here."""

    def reload(self) -> None:
        """No projector here."""
