"""The study memory's matching: `api.query_sql`'s study rules, in Python, on a Snapshot.

Each rule here is the SQL one read literally (comments name the SQL); values
that SQL derives (lowered names, normal-form times) arrive precomputed, so
nothing depends on Python and ClickHouse agreeing about Unicode.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

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
from api.study_snapshot import Snapshot, StudyRow
from schemas.names import fold

# ------------------------------------------------------------------ predicates

Check = Callable[[StudyRow], bool]


def matches(row: StudyRow, checks: Sequence[Check]) -> bool:
    """A live study that passes every condition."""
    return row.n_instances > 0 and all(check(row) for check in checks)


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
    return snapshot.with_extra(found)


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
