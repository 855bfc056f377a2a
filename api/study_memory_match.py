"""The study memory's rows and matching: `api.query_sql`'s study rules, in Python.

Each rule here is the SQL one read literally (comments name the SQL); values
that SQL derives (lowered names, normal-form times) arrive precomputed, so
nothing depends on Python and ClickHouse agreeing about Unicode.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from api.query_model import (
    ATTRS,
    DATE_TIME_PAIRS,
    TIME_CEIL,
    TIME_FLOOR,
    Kind,
    Match,
    Query,
    date_range,
    has_wildcard,
    split_values,
    time_range,
    uid_list,
    universal,
)
from api.query_sql import source_alias
from schemas.names import fold

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


# ------------------------------------------------------------------ predicates

Check = Callable[[StudyRow], bool]


def _like(value: str, any_char: str = ".") -> str:
    """query_sql.like_pattern as a regular expression: * -> any run, ? -> one character."""
    return "".join(
        f"(?:{any_char})*" if c == "*" else any_char if c == "?" else re.escape(c) for c in value
    )


def _matcher(value: str, suffix: str = "") -> Callable[[str], bool]:
    """`col = v` or `col LIKE v` (case-sensitive; % and _ match newlines too)."""
    if not has_wildcard(value) and not suffix:
        return value.__eq__
    return re.compile(_like(value) + suffix, re.DOTALL).fullmatch  # type: ignore[return-value]


def _text(value: str) -> Callable[[str], bool] | None:
    """query_sql._text: any of the backslash-separated values."""
    values = split_values(value, commas=False)
    if universal(values):
        return None
    if not any(has_wildcard(v) for v in values):
        return set(values).__contains__
    tests = [_matcher(v) for v in values]
    return lambda text: any(test(text) for test in tests)


def _column(name: str) -> Callable[[StudyRow], Any]:
    return lambda row: getattr(row, name)


def _bounds(expr: Callable[[StudyRow], str], lo: str | None, hi: str | None, col: str) -> Check:
    """query_sql._bounds: a single value is equality; a range excludes empty stored values."""
    if lo is not None and lo == hi:
        return lambda row: expr(row) == lo
    empty = _column(col)
    return lambda row: (
        empty(row) != "" and (lo is None or expr(row) >= lo) and (hi is None or expr(row) <= hi)
    )


def _pn(col: str, value: str, fuzzy: bool) -> Check | None:
    """query_sql._pn and _per_group, on the lowered (literal) or folded (fuzzy) column.
    None when a literal value is not ASCII: ClickHouse lowers it (lowerUTF8)."""
    names = split_values(value, commas=False)
    if universal(names):
        return None
    if not fuzzy and not all(n.isascii() for n in names):
        raise _ForSql
    stored = _column(f"{col}_norm" if fuzzy else f"{col}_lower")

    def literal(text: str) -> Callable[[str], bool]:
        test = _matcher(text.rstrip("^").lower())
        return lambda group: test(group.rstrip("^"))

    def prefixes(text: str) -> Callable[[str], bool]:
        comps = [(n, _matcher(c, ".*")) for n, c in enumerate(fold(text).split("^")) if c]

        def check(group: str) -> bool:
            parts = group.split("^")
            return all(test(parts[n] if n < len(parts) else "") for n, test in comps)

        return check

    group_test = prefixes if fuzzy else literal
    tests = [_per_group(name, group_test) for name in names]
    return lambda row: any(test(stored(row)) for test in tests)


def _per_group(
    name: str, group_test: Callable[[str], Callable[[str], bool]]
) -> Callable[[str], bool]:
    groups = name.split("=")
    if len(groups) == 1:
        one = group_test(name)
        return lambda text: any(one(g) for g in text.split("="))
    tests = [(n, group_test(g)) for n, g in enumerate(groups) if g]

    def check(text: str) -> bool:
        stored = text.split("=")
        return all(test(stored[n] if n < len(stored) else "") for n, test in tests)

    return check


class _ForSql(Exception):
    """This query is one SQL answers."""


def _condition(query: Query, match: Match) -> Check | None:
    """query_sql.condition for a study search's own table (None: no condition)."""
    attr = ATTRS[match.keyword]
    if source_alias(attr.level, query.level) != "st":
        return None  # the study search reads study_stats' conditions only
    if attr.kind is Kind.UID_ANY_OF:
        wanted = set(uid_list(attr.keyword, match.value, commas=True))
        return (lambda row: not wanted.isdisjoint(row.sop_classes)) if wanted else None
    if attr.kind is Kind.ANY_OF:
        found = _text(match.value.replace(",", "\\"))
        return None if found is None else (lambda row: any(found(x) for x in row.modalities))
    col, kind, value = attr.column, attr.kind, match.value
    if kind is Kind.UID:
        uids = set(uid_list(match.keyword, value, commas=not query.dimse))
        return (lambda row: getattr(row, col) in uids) if uids else None
    if kind is Kind.TEXT:
        test = _text(value)
        return None if test is None else (lambda row: test(getattr(row, col)))
    if kind is Kind.PN:
        return _pn(col, value, query.fuzzy)
    if kind is Kind.DATE:
        return _bounds(_column(col), *date_range(match.keyword, value), col)
    if kind is Kind.TIME:
        return _bounds(_column(f"{col}_tm"), *time_range(match.keyword, value), col)
    raise _ForSql


def _combined(day: Match, time: Match) -> Check:
    """query_sql.combined_datetime: date and time as one range; an empty time is 000000."""
    d_col, t_col = ATTRS[day.keyword].column, ATTRS[time.keyword].column
    d_lo, d_hi = date_range(day.keyword, day.value)
    t_lo, t_hi = time_range(time.keyword, time.value)
    lo = d_lo + (t_lo or TIME_FLOOR) if d_lo else None
    hi = d_hi + (t_hi or TIME_CEIL) if d_hi else None

    def expr(row: StudyRow) -> str:
        stored = getattr(row, t_col)
        return str(getattr(row, d_col)) + (
            TIME_FLOOR if stored == "" else getattr(row, f"{t_col}_tm")
        )

    return _bounds(expr, lo, hi, d_col)


def predicates(query: Query) -> list[Check] | None:
    """Every condition of a study search, or None when SQL should answer it."""
    given = {m.keyword: m for m in query.matches}
    paired = {
        d: t for d, t in DATE_TIME_PAIRS.items() if query.combined_datetime and {d, t} <= set(given)
    }
    checks: list[Check] = []
    if query.study_uid:
        uid = query.study_uid
        checks.append(lambda row: row.study_instance_uid == uid)
    try:
        for m in query.matches:
            if m.keyword in paired.values():
                continue
            found = (
                _combined(m, given[paired[m.keyword]])
                if m.keyword in paired
                else _condition(query, m)
            )
            if found is not None:
                checks.append(found)
    except _ForSql:
        return None
    return checks


# ------------------------------------------------------------------ candidates


def candidates(snapshot: Snapshot, query: Query) -> Iterator[StudyRow]:
    """Rows that may match, in the answer order: a superset of the matches."""
    ordered = snapshot.ordered
    positions = _positions(snapshot, query)
    if positions is None:
        found: Iterator[StudyRow] = iter(ordered)
    elif isinstance(positions, range):
        found = (ordered[n] for n in positions)
    else:
        found = (ordered[n] for n in sorted(set(positions)))
    if not snapshot.extra:
        return found
    moved = snapshot.moved
    return _merged((row for row in found if row.study_instance_uid not in moved), snapshot.extra)


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


def _positions(snapshot: Snapshot, query: Query) -> Iterable[int] | None:
    given = {m.keyword: m for m in query.matches}
    if query.study_uid or "StudyInstanceUID" in given:
        uids = (
            [query.study_uid]
            if query.study_uid
            else _exact_values(given["StudyInstanceUID"].value, commas=not query.dimse)
        )
        if uids is not None:
            where = snapshot.positions()
            return [where[u] for u in uids if u in where]
    for keyword, column in (("AccessionNumber", "accession_number"), ("PatientID", "patient_id")):
        values = _exact_values(given[keyword].value, commas=False) if keyword in given else None
        if values is not None:
            exact = snapshot.exact(column)
            return [n for v in values for n in exact.get(v, ())]
    window = None
    if "StudyDate" in given and not (query.combined_datetime and "StudyTime" in given):
        window = _date_slice(snapshot.ordered, *date_range("StudyDate", given["StudyDate"].value))
    if "ModalitiesInStudy" in given:
        text = given["ModalitiesInStudy"].value.replace(",", "\\")
        values = _exact_values(text, commas=False)
        if values is not None:
            return _within(snapshot.members("modalities"), values, window)
    if window is not None:
        return window
    if "PatientName" in given and not query.fuzzy:
        return _name_positions(snapshot, given["PatientName"].value)
    return None


def _within(index: dict[str, list[int]], values: list[str], window: range | None) -> list[int]:
    """The positions under any of `values`, inside `window` when there is one."""
    found: list[int] = []
    for value in values:
        positions = index.get(value, [])
        if window is not None:
            start = bisect.bisect_left(positions, window.start)
            positions = positions[start : bisect.bisect_left(positions, window.stop)]
        found += positions
    return found


def _exact_values(value: str, *, commas: bool) -> list[str] | None:
    values = split_values(value, commas=commas)
    if not values or any(has_wildcard(v) for v in values):
        return None
    return values


def _date_slice(ordered: list[StudyRow], lo: str | None, hi: str | None) -> range:
    """The rows whose study_date may lie in [lo, hi]: contiguous, dates descending."""
    start = 0 if hi is None else _first(ordered, lambda day: day <= hi)
    stop = len(ordered) if lo is None else _first(ordered, lambda day: day < lo)
    return range(start, max(start, stop))


def _first(ordered: list[StudyRow], test: Callable[[str], bool]) -> int:
    """The first position whose date passes `test` (False, then True, along the rows)."""
    low, high = 0, len(ordered)
    while low < high:
        middle = (low + high) // 2
        if test(ordered[middle].study_date):
            high = middle
        else:
            low = middle + 1
    return low


def _name_positions(snapshot: Snapshot, value: str) -> list[int] | None:
    names = split_values(value, commas=False)
    if universal(names) or any("=" in n or not n.isascii() for n in names):
        return None
    joined = snapshot.names("patient_name_lower")
    if joined is None:
        return None
    text, starts, owners = joined
    found: list[int] = []
    for name in names:
        pattern = re.compile(
            "\0(" + _like(name.rstrip("^").lower(), "[^\0]") + ")(?=\0)", re.DOTALL
        )
        for hit in pattern.finditer(text):
            found.append(owners[bisect.bisect_right(starts, hit.start() + 1) - 1])
    return found
