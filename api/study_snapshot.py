"""The study memory's rows: one study_stats row each, sorted in the answer order.

`Snapshot` holds every row at one write generation with the indexes searches
ask for (built on first use); `api.study_memory_match` matches queries on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

T = TypeVar("T")
_FIELDS = (
    "study_instance_uid", "version", "answer", "n_series", "n_instances", "modalities",
    "sop_classes", "patient_id", "issuer_of_patient_id", "patient_birth_date",
    "patient_birth_time", "patient_sex", "study_date", "study_time", "accession_number",
    "study_id", "study_description", "patient_name_lower", "patient_name_norm",
    "referring_physician_name_lower", "referring_physician_name_norm",
    "patient_birth_time_tm", "study_time_tm",
)  # fmt: skip


class StudyRow:
    """One study_stats row, as the refresh statement returns it."""

    __slots__ = _FIELDS
    study_instance_uid: str
    version: int
    answer: str
    n_series: int
    n_instances: int
    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    study_date: str
    study_time: str
    accession_number: str
    patient_id: str
    patient_name_lower: str

    def __init__(self, row: dict[str, Any]) -> None:
        for name in _FIELDS:
            setattr(self, name, row[name])
        self.version, self.n_instances = int(row["version"]), int(row["n_instances"])
        # Tuples of strings: objects the cycle collector stops tracking.
        self.modalities, self.sop_classes = tuple(row["modalities"]), tuple(row["sop_classes"])

    def answer_row(self) -> dict[str, Any]:
        """What query_sql's study search returns for this row."""
        return {
            "st__answer": self.answer,
            "st__version": self.version,
            "a__n_series": self.n_series,
            "a__n_instances": self.n_instances,
            "a__modalities": list(self.modalities),
            "a__sop_classes": list(self.sop_classes),
        }


def _indexed(row: StudyRow) -> tuple[Any, ...]:
    """What a row's place in the order and in the snapshot's indexes depend on."""
    return (row.study_date, row.study_time, row.accession_number, row.patient_id,
            row.modalities, row.patient_name_lower)  # fmt: skip


def _order(rows: Iterable[StudyRow]) -> list[StudyRow]:
    """query_sql._STUDY_ORDER: study_date DESC, study_time DESC, study_instance_uid."""
    ordered = sorted(rows, key=lambda r: r.study_instance_uid)
    ordered.sort(key=lambda r: (r.study_date, r.study_time), reverse=True)  # stable
    return ordered


#: Rows held beside the sorted ones before everything is sorted again.
EXTRA_MAX = 64
#: The generation of a snapshot made for one search (`Snapshot.patched`).
PATCHED = -1


@dataclass
class Snapshot:
    """Every study row at one write generation, in the answer order.

    `ordered` and its indexes change only when sorted afresh. A row written
    since with a new place in the order or new indexed values (a new study,
    a renamed one) is held in `extra` instead, sorted, and its old row, if
    any, named in `moved`: a search merges both. Under steady ingest a new
    study arrives every few seconds, and sorting and indexing ten thousand
    rows again each time cost every search waiting for it 20-150 ms."""

    generation: int
    by_uid: dict[str, StudyRow]
    ordered: list[StudyRow]
    newest_version: int
    _lazy: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    extra: list[StudyRow] = field(default_factory=list)
    moved: frozenset[str] = frozenset()
    #: The projector position these rows cover at least (None: not known).
    position: dict[int, int] | None = None

    @classmethod
    def updated(
        cls, old: Snapshot | None, rows: Sequence[dict[str, Any]], generation: int
    ) -> Snapshot:
        """`old` with `rows` (newer versions of some studies, or new studies).

        A row whose place in the order and indexed values are unchanged
        replaces the old one where it stands (the indexes still hold); others
        go to `extra`; past EXTRA_MAX of those everything is sorted afresh."""
        by_uid = dict(old.by_uid) if old is not None else {}
        newest = old.newest_version if old is not None else 0
        fresh = [StudyRow(raw) for raw in rows]
        for row in fresh:
            by_uid[row.study_instance_uid] = row
            newest = max(newest, row.version)
        if old is None:
            return cls(generation, by_uid, _order(by_uid.values()), newest)
        extra = {row.study_instance_uid: row for row in old.extra}
        moved = set(old.moved)
        ordered = list(old.ordered) if fresh else old.ordered
        where = old.positions()
        for row in fresh:
            uid = row.study_instance_uid
            place = where.get(uid)
            if uid in extra or place is None or _indexed(ordered[place]) != _indexed(row):
                extra[uid] = row
                if place is not None:
                    moved.add(uid)
            else:
                ordered[place] = row
        if len(extra) > EXTRA_MAX:
            return cls(generation, by_uid, _order(by_uid.values()), newest)
        return cls(
            generation, by_uid, ordered, newest, old._lazy, extra=_order(extra.values()),
            moved=frozenset(moved),
        )  # fmt: skip

    def patched(self, rows: Sequence[dict[str, Any]]) -> Snapshot:
        """These rows with `rows` in place of theirs, for one search
        (api.pending_patch): at generation PATCHED, which nothing keeps."""
        found = Snapshot.updated(self, rows, PATCHED)
        found.position = self.position
        return found

    def with_extra(self, found: Iterator[StudyRow]) -> Iterator[StudyRow]:
        """Candidates from the sorted rows, less those moved, merged in the answer
        order with every row held beside them (each one a candidate)."""
        if not self.extra:
            return found
        moved = self.moved
        return _merged((row for row in found if row.study_instance_uid not in moved), self.extra)

    def __len__(self) -> int:
        return len(self.by_uid)

    def positions(self) -> dict[str, int]:
        return self._built(
            "positions", lambda: {r.study_instance_uid: n for n, r in enumerate(self.ordered)}
        )

    def exact(self, column: str) -> dict[str, list[int]]:
        """Positions of the rows by the exact value of a text column."""

        def build() -> dict[str, list[int]]:
            found: dict[str, list[int]] = {}
            for n, row in enumerate(self.ordered):
                found.setdefault(getattr(row, column), []).append(n)
            return found

        return self._built(f"exact:{column}", build)

    def members(self, column: str) -> dict[str, list[int]]:
        """Positions (ascending) of the rows by each value of an array column."""

        def build() -> dict[str, list[int]]:
            found: dict[str, list[int]] = {}
            for n, row in enumerate(self.ordered):
                for value in getattr(row, column):
                    found.setdefault(value, []).append(n)
            return found

        return self._built(f"members:{column}", build)

    def names(self, column: str) -> tuple[str, list[int], list[int]] | None:
        """Every stored group of a lowered PN column, trimmed of trailing '^', joined
        by NUL (which no stored group holds, else None): (text, each group's start,
        its row's position)."""

        def build() -> tuple[str, list[int], list[int]] | None:
            parts: list[str] = []
            starts: list[int] = []
            owners: list[int] = []
            at = 1
            for n, row in enumerate(self.ordered):
                for group in getattr(row, column).split("="):
                    text = group.rstrip("^")
                    if "\0" in text:
                        return None
                    parts.append(text)
                    starts.append(at)
                    owners.append(n)
                    at += len(text) + 1
            return "\0" + "\0".join(parts) + "\0", starts, owners

        return self._built(f"names:{column}", build)

    def build_indexes(self) -> None:
        """Every index a search may ask for."""
        self.positions()
        self.exact("accession_number")
        self.exact("patient_id")
        self.members("modalities")
        self.names("patient_name_lower")

    def _built(self, key: str, build: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._lazy:
                self._lazy[key] = build()
            return cast(T, self._lazy[key])


def _merged(base: Iterator[StudyRow], extra: list[StudyRow]) -> Iterator[StudyRow]:
    """Two row sequences in the answer order, as one (every extra row a candidate)."""
    pending = iter(extra)
    waiting = next(pending, None)
    for row in base:
        while waiting is not None and _before(waiting, row):
            yield waiting
            waiting = next(pending, None)
        yield row
    while waiting is not None:
        yield waiting
        waiting = next(pending, None)


def _before(a: StudyRow, b: StudyRow) -> bool:
    """`a` comes first in _order's answer order."""
    if (a.study_date, a.study_time) != (b.study_date, b.study_time):
        return (a.study_date, a.study_time) > (b.study_date, b.study_time)
    return a.study_instance_uid < b.study_instance_uid
