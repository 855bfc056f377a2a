"""The level rows a projector wrote last, so an unchanged one is not written again;
and, within a batch, only the newest row per key (`newest_per_key`).

Every instance of a study carries its patient, study and series attributes, so
each projector batch wrote those three rows again with a newer version: under
steady ingest into a few studies, three of a batch's ten inserts repeated what
the table already held (each insert a chDB statement of milliseconds, and
readers waiting for read-your-writes wait for the whole batch). A row whose
attributes equal those of the row this projector last wrote for the same key
is left out: the table's newest row for that key already says the same, and
ReplacingMergeTree would only have replaced it with an equal one.

Only rows known written are remembered (after the batch's inserts succeeded),
and the memory is dropped whenever the tables may have changed under the
projector (replay's swap, a new partition assignment).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from projections.rows import Row

#: Keys remembered per table; least recently written out first.
WRITTEN_MAX = 10_000

#: Tables whose rows replace each other by key (ReplacingMergeTree ORDER BY).
REPLACING_KEYS: dict[str, tuple[str, ...]] = {
    "patient": ("patient_id", "issuer_of_patient_id"),
    "study": ("study_instance_uid",),
    "series": ("series_instance_uid",),
    "instance": ("sop_instance_uid",),
}

#: Tables whose rows repeat from batch to batch (every instance carries its
#: patient, study and series): an unchanged row is not written again.
LEVEL_TABLES = ("patient", "study", "series")


def newest_per_key(table: str, rows: list[Row]) -> list[Row]:
    """One row per key within a batch: the one ReplacingMergeTree would keep.

    Every instance of a study writes the study's row again; inserting 100 rows
    where the table keeps one made each part 100 times larger than needed and
    left FINAL that much more to merge at query time."""
    key = REPLACING_KEYS.get(table)
    if key is None or len(rows) < 2:
        return rows
    newest: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        k = tuple(row[c] for c in key)
        kept = newest.get(k)
        if kept is None or row["version"] >= kept["version"]:
            newest[k] = row
    return list(newest.values())


class LastWritten:
    def __init__(self, keys: Mapping[str, Sequence[str]], bound: int = WRITTEN_MAX) -> None:
        self._keys = dict(keys)
        self._bound = bound
        self._rows: dict[str, OrderedDict[tuple[Any, ...], tuple[Any, ...]]] = {
            table: OrderedDict() for table in self._keys
        }

    def changed(self, table: str, rows: list[Row]) -> list[Row]:
        """The rows of `table` that say something new (every row for other tables)."""
        kept = self._rows.get(table)
        if kept is None:
            return rows
        key = self._keys[table]
        return [row for row in rows if kept.get(_key(row, key)) != _content(row)]

    def remember(self, table: str, rows: list[Row]) -> None:
        """These rows of `table` are now in the table (their inserts succeeded)."""
        kept = self._rows.get(table)
        if kept is None:
            return
        key = self._keys[table]
        for row in rows:
            k = _key(row, key)
            kept[k] = _content(row)
            kept.move_to_end(k)
        while len(kept) > self._bound:
            kept.popitem(last=False)

    def forget(self) -> None:
        for kept in self._rows.values():
            kept.clear()


def _key(row: Row, columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in columns)


def _content(row: Row) -> tuple[Any, ...]:
    # Every value but the version; lists (e.g. request attributes) compare by value.
    return tuple(value for column, value in row.items() if column != "version")
