"""The translation of the query model (`api.query_model`) to ClickHouse SQL.

A `Query` names a level, match keys and return keys. It runs as two
parameterised statements over the projection tables, read with FINAL:
`search_sql` selects the page (matching entities that have a live instance, in
the documented order), `page_sql` computes the page's aggregates at query time
and fetches stored DICOM JSON for attributes without a column. Values never
enter the SQL text: each becomes a server-side parameter {pN:Type}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from api.query_model import (
    ATTRS,
    DATE_TIME_PAIRS,
    KEYS,
    SEQUENCE_ITEM_KEYS,
    TIME_CEIL,
    TIME_FLOOR,
    Attr,
    Kind,
    Level,
    Match,
    Query,
    date_range,
    has_wildcard,
    split_values,
    time_range,
    uid_list,
    universal,
)
from infra.errors import Invalid
from projections.stats import ANSWER_ATTRIBUTES
from schemas.names import fold

# ---------------------------------------------------------------- value rules in SQL

_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_", "*": "%", "?": "_"})


def like_pattern(value: str) -> str:
    """DICOM wildcards -> ClickHouse LIKE: * -> %, ? -> _, LIKE's own specials escaped."""
    return value.translate(_LIKE)


def _tm_sql(column: str) -> str:
    """A stored TM of any precision (ACR-NEMA colons tolerated) as 'HHMMSS.FFFFFF'."""
    t = f"replaceAll({column}, ':', '')"
    whole, frac = f"substring({t}, 1, 6)", f"substring({t}, 8, 6)"
    return f"concat(rightPad({whole}, 6, '0'), '.', rightPad({frac}, 6, '0'))"


# ---------------------------------------------------------------- conditions


class Params:
    """Collects server-side parameters and hands out their placeholders."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def add(self, value: object, ch_type: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{ch_type}}}"


def _any(conds: Iterable[str]) -> str:
    items = list(conds)
    return items[0] if len(items) == 1 else "(" + " OR ".join(items) + ")"


def _text(col: str, value: str, params: Params) -> str | None:
    values = split_values(value, commas=False)
    if universal(values):
        return None
    return _any(
        f"{col} LIKE {params.add(like_pattern(v), 'String')}"
        if has_wildcard(v)
        else f"{col} = {params.add(v, 'String')}"
        for v in values
    )


def _number(keyword: str, col: str, value: str, params: Params) -> str | None:
    values = split_values(value, commas=False)
    if universal(values):
        return None
    conds = []
    for v in values:
        if has_wildcard(v):
            conds.append(f"toString({col}) LIKE {params.add(like_pattern(v), 'String')}")
        elif re.fullmatch(r"[+-]?\d{1,18}", v):
            conds.append(f"{col} = {params.add(int(v), 'Int64')}")
        else:
            raise Invalid(f"{keyword} {v!r} is not an integer")
    return _any(conds)


def _bounds(expr: str, lo: str | None, hi: str | None, params: Params, col: str) -> str:
    """Range matching; an empty stored value never matches a date or time key."""
    if lo is not None and lo == hi:
        return f"{expr} = {params.add(lo, 'String')}"
    conds = [f"{col} != ''"]
    if lo is not None:
        conds.append(f"{expr} >= {params.add(lo, 'String')}")
    if hi is not None:
        conds.append(f"{expr} <= {params.add(hi, 'String')}")
    return "(" + " AND ".join(conds) + ")"


def _pn(col: str, value: str, params: Params, fuzzy: bool) -> str | None:
    names = split_values(value, commas=False)
    if universal(names):
        return None

    def literal(g_sql: str, text: str) -> str:
        pattern = params.add(like_pattern(text.rstrip("^")), "String")
        return f"lowerUTF8(trimRight({g_sql}, '^')) LIKE lowerUTF8({pattern})"

    def prefixes(g_sql: str, text: str) -> str:
        comps = [
            f"splitByChar('^', {g_sql})[{n + 1}] LIKE {params.add(like_pattern(c) + '%', 'String')}"
            for n, c in enumerate(fold(text).split("^"))
            if c
        ]
        return "(" + " AND ".join(comps or ["1"]) + ")"

    if fuzzy:
        return _any(_per_group(col + "_norm", name, prefixes) for name in names)
    return _any(_per_group(col, name, literal) for name in names)


def _per_group(col: str, name: str, group_cond: Callable[[str, str], str]) -> str:
    """A query of one group may match any stored component group (alphabetic,
    ideographic, phonetic); a query with '=' is matched group by group."""
    groups = name.split("=")
    if len(groups) == 1:
        return f"arrayExists(g -> {group_cond('g', name)}, splitByChar('=', {col}))"
    conds = [group_cond(f"splitByChar('=', {col})[{n + 1}]", g) for n, g in enumerate(groups) if g]
    return "(" + " AND ".join(conds or ["1"]) + ")"


def _any_of(attr: Attr, value: str, params: Params) -> str | None:
    """'Any of the study's live instances has one of these values', on the
    study's statistics row (projections.stats): its sorted array of them."""
    array = attr.column  # study_stats.modalities / study_stats.sop_classes
    if attr.kind is Kind.UID_ANY_OF:
        uids = uid_list(attr.keyword, value, commas=True)
        return f"hasAny({array}, {params.add(uids, 'Array(String)')})" if uids else None
    found = _text("x", value.replace(",", "\\"), params)
    return f"arrayExists(x -> {found}, {array})" if found else None


def _live(level: Level, conds: list[str]) -> str:
    """The keys of `level` with a live instance (and `conds`), from the statistics
    tables: a primary-key-ordered table of one row per entity, not the instances."""
    if level is Level.SERIES:
        where = _where(["n_instances > 0", *conds])
        return f"SELECT series_instance_uid FROM series_stats FINAL WHERE {where}"
    where = _where(["n_instances > 0", *conds])
    studies = f"SELECT study_instance_uid FROM study_stats FINAL WHERE {where}"
    if level is Level.STUDY:
        return studies
    return (
        "SELECT patient_id, issuer_of_patient_id FROM study FINAL"
        f" WHERE study_instance_uid IN ({studies})"
    )


def _sequence(match: Match, col: str, params: Params) -> str | None:
    """Sequence matching: one item must match every given item key."""
    conds = []
    for key, value in match.items:
        if key not in SEQUENCE_ITEM_KEYS[match.keyword]:
            raise Invalid(f"{match.keyword}.{key} is not supported for sequence matching")
        if cond := _text(f"JSONExtractString(x, {params.add(key, 'String')})", value, params):
            conds.append(cond)
    if not conds:
        return None
    return f"arrayExists(x -> ({' AND '.join(conds)}), JSONExtractArrayRaw({col}))"


def condition(query: Query, match: Match, params: Params) -> tuple[str, str] | None:
    """(table alias, SQL) for one match key."""
    attr = ATTRS[match.keyword]
    alias = source_alias(attr.level, query.level)
    if attr.aggregate:
        cond = _any_of(attr, match.value, params)
        if cond and query.level is not Level.STUDY:  # a study search reads study_stats itself
            live = _live(Level.STUDY, [*_study_scope(query, params), cond])
            cond = f"study_instance_uid IN ({live})"
        return (alias, cond) if cond else None
    col, kind, value = attr.column, attr.kind, match.value
    cond = None
    if kind is Kind.UID:
        uids = uid_list(match.keyword, value, commas=not query.dimse)
        cond = f"{col} IN {params.add(uids, 'Array(String)')}" if uids else None
    elif kind is Kind.TEXT:
        cond = _text(col, value, params)
    elif kind is Kind.PN:
        cond = _pn(col, value, params, query.fuzzy)
    elif kind is Kind.DATE:
        cond = _bounds(col, *date_range(match.keyword, value), params, col)
    elif kind is Kind.TIME:
        cond = _bounds(_tm_sql(col), *time_range(match.keyword, value), params, col)
    elif kind is Kind.NUMBER:
        cond = _number(match.keyword, col, value, params)
    elif kind is Kind.SEQUENCE:
        cond = _sequence(match, col, params)
    else:
        raise Invalid(f"{match.keyword} is returned, not matched")
    return (alias, cond) if cond else None


def combined_datetime(query: Query, day: Match, time: Match, params: Params) -> tuple[str, str]:
    """Date and time as one DT range: '20200101-20200102' with '2200-0600' is one night.

    A missing time bound widens to the day's start or end; an open date bound
    leaves the range open on that side. A stored empty time counts as 000000.
    """
    d_attr, t_attr = ATTRS[day.keyword], ATTRS[time.keyword]
    d_lo, d_hi = date_range(day.keyword, day.value)
    t_lo, t_hi = time_range(time.keyword, time.value)
    d_col, t_col = d_attr.column, t_attr.column
    expr = f"concat({d_col}, if({t_col} = '', '{TIME_FLOOR}', {_tm_sql(t_col)}))"
    lo = d_lo + (t_lo or TIME_FLOOR) if d_lo else None
    hi = d_hi + (t_hi or TIME_CEIL) if d_hi else None
    return source_alias(d_attr.level, query.level), _bounds(expr, lo, hi, params, d_col)


def source_alias(attr_level: Level, query_level: Level) -> str:
    """The table alias holding an attribute: patient columns are copied into study."""
    if attr_level is Level.PATIENT:
        return "p" if query_level is Level.PATIENT else "st"
    return {Level.STUDY: "st", Level.SERIES: "se", Level.IMAGE: "i"}[attr_level]


def _study_scope(query: Query, params: Params) -> list[str]:
    return (
        [f"study_instance_uid = {params.add(query.study_uid, 'String')}"] if query.study_uid else []
    )


def conditions(query: Query, params: Params) -> dict[str, list[str]]:
    """Conditions by table alias (p, st, se, i) and 'inst' (live-instance semi-joins)."""
    conds: dict[str, list[str]] = {k: [] for k in ("p", "st", "se", "i", "inst")}
    if query.study_uid:
        ph = params.add(query.study_uid, "String")
        for alias in ("st", "se", "i", "inst"):
            conds[alias].append(f"study_instance_uid = {ph}")
    if query.series_uid:
        ph = params.add(query.series_uid, "String")
        for alias in ("se", "i", "inst"):
            conds[alias].append(f"series_instance_uid = {ph}")
    given = {m.keyword: m for m in query.matches}
    paired = {
        d: t for d, t in DATE_TIME_PAIRS.items() if query.combined_datetime and {d, t} <= set(given)
    }
    for m in query.matches:
        if m.keyword in paired.values():
            continue
        found: tuple[str, str] | None
        if m.keyword in paired:
            found = combined_datetime(query, m, given[paired[m.keyword]], params)
        else:
            found = condition(query, m, params)
        if found:
            conds[found[0]].append(found[1])
    return conds


# ---------------------------------------------------------------- statements


def _columns(*levels: Level) -> list[str]:
    return [a.column for a in ATTRS.values() if a.level in levels and not a.aggregate]


_COLUMNS: dict[str, tuple[str, list[str]]] = {
    "p": ("patient", _columns(Level.PATIENT)),
    "st": ("study", _columns(Level.PATIENT, Level.STUDY)),
    "se": ("series", ["study_instance_uid", *_columns(Level.SERIES)]),
    "i": ("instance", ["series_instance_uid", "study_instance_uid", *_columns(Level.IMAGE)]),
}
_SOURCES = {
    Level.PATIENT: ("p",),
    Level.STUDY: ("st",),
    Level.SERIES: ("se", "st"),
    Level.IMAGE: ("i", "se", "st"),
}
_ON = {
    "st": "st.study_instance_uid = {0}.study_instance_uid",
    "se": "se.series_instance_uid = i.series_instance_uid",
}
# Deterministic aggregates only (never any()): answers must not depend on merge order.
AGGREGATES: dict[Level, dict[str, str]] = {
    Level.PATIENT: {
        "n_studies": "uniqExact(study_instance_uid)",
        "n_series": "uniqExact(series_instance_uid)",
        "n_instances": "count()",
    },
    Level.STUDY: {
        "n_series": "uniqExact(series_instance_uid)",
        "n_instances": "count()",
        "modalities": "arraySort(groupUniqArray(modality))",
        "sop_classes": "arraySort(groupUniqArray(sop_class_uid))",
    },
    Level.SERIES: {"n_instances": "count()"},
}
#: The documented paging order: hierarchical, so a level's answers group by their
#: study (newest first) and series; ties broken by the unique keys.
_STUDY_ORDER = "st.study_date DESC, st.study_time DESC, st.study_instance_uid"
_SERIES_ORDER = "se.series_number ASC NULLS LAST, se.series_instance_uid"
ORDER = {
    Level.PATIENT: "p.patient_name, p.patient_id, p.issuer_of_patient_id",
    Level.STUDY: _STUDY_ORDER,
    Level.SERIES: f"{_STUDY_ORDER}, {_SERIES_ORDER}",
    Level.IMAGE: f"{_STUDY_ORDER}, {_SERIES_ORDER}, i.instance_number ASC NULLS LAST, "
    "i.sop_instance_uid",
}


def _where(conds: Iterable[str]) -> str:
    return " AND ".join(conds) or "1"


#: Studies and series left without a live instance (0 = every one has one). Counted
#: without FINAL, so an older zero row also counts: never a false "all live".
EMPTY_ENTITIES_SQL = (
    "SELECT (SELECT count() FROM study_stats WHERE n_instances = 0)"
    " + (SELECT count() FROM series_stats WHERE n_instances = 0) AS n"
)


def search_sql(query: Query, *, all_live: bool = False) -> tuple[str, dict[str, object]]:
    """Phase 1, the page: the level's rows (joined with the levels above) that match
    and have a live instance, in the documented order. Asks for limit + 1 rows so
    the caller knows whether more follow. `all_live` (EMPTY_ENTITIES_SQL found
    none) drops the live-instance semi-join: every stored entity has one. A
    study search is this one statement whole: its rows carry their aggregates."""
    params = Params()
    conds = conditions(query, params)
    if query.level is Level.STUDY:
        return _study_search_sql(query, conds, params), params.values
    sources = _SOURCES[query.level]
    if query.level is not Level.IMAGE and not all_live:
        keys = ", ".join(KEYS[query.level])
        conds[sources[0]].append(f"({keys}) IN ({_live(query.level, conds['inst'])})")
    selects: list[str] = []
    joins: list[str] = []
    for alias in sources:
        table, cols = _COLUMNS[alias]
        where = _where((["hidden = 0"] if alias == "i" else []) + conds[alias])
        sub = f"(SELECT {', '.join(cols)} FROM {table} FINAL WHERE {where}) AS {alias}"
        joins.append(f"INNER JOIN {sub} ON {_ON[alias].format(sources[0])}" if joins else sub)
        selects += [f"{alias}.{c} AS {alias}__{c}" for c in cols]
    limit = params.add(query.limit + 1, "UInt64")
    offset = params.add(query.offset, "UInt64")
    sql = (
        f"SELECT {', '.join(selects)} FROM {' '.join(joins)} "
        f"ORDER BY {ORDER[query.level]} LIMIT {limit} OFFSET {offset}"
    )
    return sql, params.values


def _study_search_sql(query: Query, conds: dict[str, list[str]], params: Params) -> str:
    """A study search in one statement over study_stats, which carries each study's
    attributes beside its statistics (migration 006): the match, liveness
    (n_instances > 0) and the aggregates a study answer returns, together."""
    # The attributes, packed (see unpack_answer), and the row's version (answers
    # are kept per version: api.study_answers).
    selects = ["st.answer AS st__answer", "st.version AS st__version"]
    selects += [f"st.{c} AS a__{c}" for c in AGGREGATES[Level.STUDY]]
    where = _where(["n_instances > 0", *conds["st"]])
    limit = params.add(query.limit + 1, "UInt64")
    offset = params.add(query.offset, "UInt64")
    return (
        f"SELECT {', '.join(selects)} FROM study_stats AS st FINAL WHERE {where} "
        f"ORDER BY {ORDER[Level.STUDY]} LIMIT {limit} OFFSET {offset}"
    )


def unpack_answer(row: dict[str, Any]) -> None:
    """A study search row's packed attributes (study_stats.answer) as st__ columns."""
    packed = row.pop("st__answer", None)
    if packed is not None:
        row.update(zip(_ANSWER_KEYS, orjson.loads(packed), strict=True))


_ANSWER_KEYS = [f"st__{c}" for c in ANSWER_ATTRIBUTES]


def page_sql(
    level: Level, first_keys: list[str], *, metadata: bool
) -> tuple[str, dict[str, object]]:
    """Phase 2, per entity of the page: its aggregates and, when asked, the stored
    DICOM JSON of its newest live instance. Studies and series read them from
    their statistics rows (projections.stats) by primary key; patients (rarely
    asked) aggregate their live instances (never any(): deterministic whatever
    the merge order)."""
    params = Params()
    keys = ", ".join(KEYS[level])
    wanted = params.add(first_keys, "Array(String)")
    if level is Level.IMAGE:
        where = f"hidden = 0 AND {KEYS[level][0]} IN {wanted}"
        return f"SELECT {keys}, metadata FROM instance FINAL WHERE {where}", params.values
    if level in STATS:
        table, columns = STATS[level]
        picked = ", ".join(f"s.{c} AS {c}" for c in [KEYS[level][0], *columns])
        stats = f"(SELECT * FROM {table} FINAL WHERE {KEYS[level][0]} IN {wanted}) AS s"
        if not metadata:
            return f"SELECT {picked} FROM {stats}", params.values
        newest = (
            "(SELECT sop_instance_uid, metadata FROM instance FINAL WHERE sop_instance_uid IN"
            f" (SELECT representative FROM {table} FINAL WHERE {KEYS[level][0]} IN {wanted})) AS m"
        )
        sql = (
            f"SELECT {picked}, m.metadata AS metadata FROM {stats}"
            f" LEFT JOIN {newest} ON m.sop_instance_uid = s.representative"
        )
        return sql, params.values
    columns = [f"{expr} AS {name}" for name, expr in AGGREGATES[level].items()]
    if metadata:
        columns.append("argMax(metadata, (version, sop_instance_uid)) AS metadata")
    where = f"hidden = 0 AND {KEYS[level][0]} IN {wanted}"
    sql = f"SELECT {keys}, {', '.join(columns)} FROM instance FINAL WHERE {where} GROUP BY {keys}"
    return sql, params.values


#: Levels whose aggregates are kept per entity: table and the AGGREGATES it holds.
STATS: dict[Level, tuple[str, list[str]]] = {
    Level.STUDY: ("study_stats", list(AGGREGATES[Level.STUDY])),
    Level.SERIES: ("series_stats", list(AGGREGATES[Level.SERIES])),
}
