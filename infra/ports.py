"""The three ports of DESIGN.md as Protocols, plus the Position type.

Each port has an embedded adapter (the default) and a scale-out adapter, both
with the same verbs; `infra.factory` picks one by URL. Adapters raise only
`infra.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

#: A position in the log: partition -> offset of the *next* record to read.
#: The SQLite log has one partition, 0. An empty mapping is the log's start.
Position = Mapping[int, int]


def covers(checkpoint: Position, target: Position) -> bool:
    """True when `checkpoint` has consumed everything before `target`."""
    return all(checkpoint.get(p, 0) >= o for p, o in target.items())


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One event as stored in the log: its bytes plus where it sits."""

    partition: int
    offset: int
    key: str
    value: bytes

    @property
    def version(self) -> int:
        """Monotonic per partition; projections use it as the row version."""
        return self.offset


class EventLog(Protocol):
    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        """Durably append (key, value) records; return each one's (partition, offset).

        Returns only once every record is durable. Concurrent callers are
        group-committed. Raises Unavailable when durability cannot be had.
        """

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        """Records at or after `start`, in order per partition (at most max_records)."""

    def end(self) -> dict[int, int]:
        """The Position just past the last durable record of every partition."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


class BlobStore(Protocol):
    def put_if_absent(self, key: str, source: BinaryIO | bytes) -> bool:
        """Durably store `source` under `key` unless the key exists.

        Returns True when written, False when the key already held a blob (a
        no-op: keys are content addressed). Raises Unavailable on failure.
        """

    def put_file_if_absent(self, key: str, path: Path) -> bool:
        """`put_if_absent` of the complete, closed file at `path`.

        The store may keep the file itself instead of a copy (the folder store
        hard-links it into place when it can), so the caller must not change the
        file afterwards; it still removes its own name for it. Same answers and
        errors as `put_if_absent`.
        """

    def get(self, key: str) -> BinaryIO:
        """A readable, seekable stream of the whole blob. Raises NotFound."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`. Raises NotFound / Invalid (out of range)."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Byte size of the blob. Raises NotFound."""

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under prefix (used by `chronicle check` to find orphans)."""

    def close(self) -> None: ...


class ProjectionStore(Protocol):
    """ClickHouse SQL, over chDB in-process or a server over HTTP.

    All SQL is parameterised with ClickHouse server-side parameters
    ({name:Type}); values never go into the SQL text.
    """

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None: ...

    def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...

    def query_dicts(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]: ...

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None: ...

    def close(self) -> None: ...
