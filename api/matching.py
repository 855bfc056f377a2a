"""One query engine for QIDO-RS and C-FIND (PS3.4 C.2.2.2, PS3.18 8.3.4 and 10.6).

`parse_qido` and `query_from_identifier` turn a request into a `Query`;
`search` runs it against the projection tables and answers DICOM JSON, one
object per match. The query model (attributes, return keys, value rules) lives
in `api.query_model` and the SQL and paging order in `api.query_sql`; this
module reads requests and renders what each answer contains.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydicom import DataElement, Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword

from api.query_model import (
    ATTRS,
    CFIND_MAX_MATCHES,
    KEYS,
    LEVEL_TAGS,
    MAX_LIMIT,
    SEQUENCE_ITEM_KEYS,
    SPECIAL_KEYS,
    Kind,
    Level,
    Match,
    Query,
    has_wildcard,
    keyword_of,
    return_keys,
    tag_of,
)
from api.query_sql import (
    EMPTY_ENTITIES_SQL,
    Params,
    conditions,
    page_sql,
    search_sql,
    source_alias,
    unpack_answer,
)
from api.study_answers import Getter, kept_json, study_answers, study_rows
from infra.errors import Invalid
from infra.ports import ProjectionStore

__all__ = [
    "CFIND_MAX_MATCHES",
    "MAX_LIMIT",
    "Level",
    "Match",
    "Page",
    "Query",
    "parse_qido",
    "query_from_identifier",
    "search",
    "search_page",
]

#: Mismatch between the identifier and the Query/Retrieve information model.
IDENTIFIER_MISMATCH = 0xA900
_CONTROLS = {"limit", "offset", "fuzzymatching", "includefield"}
_TAG = {k: f"{tag_for_keyword(k):08X}" for k in [*ATTRS, *SPECIAL_KEYS]}
_VR = {k: str(dictionary_VR(k)) for k in [*ATTRS, *SPECIAL_KEYS]}


@dataclass(frozen=True, slots=True)
class Page:
    results: list[dict[str, Any]]
    #: More matches follow this page (QIDO-RS says so in a Warning header).
    more: bool


# ---------------------------------------------------------------- requests


def parse_qido(
    level: Level | str,
    params: Iterable[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Query:
    """A QIDO-RS query string (values already URL-decoded) as a Query; Invalid = 400."""
    level = Level(level)
    matches: dict[str, Match] = {}
    include: list[str] = []
    controls: dict[str, str] = {}
    include_all = False
    for name, raw in params:
        value = raw.strip()
        if name == "includefield":
            for part in filter(None, (p.strip() for p in value.split(","))):
                include_all |= part.lower() == "all"
                include += [] if part.lower() == "all" else [tag_of(part)]
        elif name in _CONTROLS:
            if name in controls:
                raise Invalid(f"{name} is given twice")
            controls[name] = value
        else:
            _add_key(level, matches, include, name, value)
    fuzzy = controls.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise Invalid("fuzzymatching must be true or false")
    query = Query(
        level,
        tuple(matches.values()),
        study_uid=study_uid,
        series_uid=series_uid,
        include=tuple(dict.fromkeys(include)),
        include_all=include_all,
        limit=min(_count(controls, "limit", MAX_LIMIT, 1), MAX_LIMIT),
        offset=_count(controls, "offset", 0, 0),
        fuzzy=fuzzy == "true",
    )
    conditions(query, Params())  # refuse bad values (dates, UIDs) before any I/O
    return query


def _count(controls: dict[str, str], name: str, default: int, least: int) -> int:
    text = controls.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < least:
        raise Invalid(f"{name} must be an integer of at least {least}")
    return int(text)


def _add_key(
    level: Level, matches: dict[str, Match], include: list[str], name: str, value: str
) -> None:
    path = [keyword_of(part) for part in name.split(".")]
    keyword = path[0]
    include.append(tag_of(keyword))
    if not value:
        return  # universal matching: a return key, like includefield
    attr = ATTRS.get(keyword)
    if attr is None or attr.kind is Kind.RETURN or attr.level.rank > level.rank:
        raise Invalid(f"{name} cannot be matched in a {level.value.lower()} query")
    if len(path) > 2 or (len(path) == 2) != (attr.kind is Kind.SEQUENCE):
        raise Invalid(f"{name} is not a supported key (sequences match by their item keys)")
    old = matches.get(keyword)
    if len(path) == 1:
        if old is not None:
            raise Invalid(f"{name} is given twice")
        matches[keyword] = Match(keyword, value)
    else:
        items = (old.items if old else ()) + ((path[1], value),)
        matches[keyword] = Match(keyword, items=items)


def query_from_identifier(
    identifier: Dataset,
    *,
    model: str,
    relational: bool = False,
    combined_datetime: bool = False,
    fuzzy: bool = False,
) -> Query:
    """A C-FIND identifier as a Query. Every key present is returned; a non-empty
    one is matched when supported, and an unsupported optional key is returned
    unmatched (PS3.4 C.2.2.1). Invalid.status: 0xA900 when the identifier does not
    fit the model, 0xC000 for a malformed value."""
    model = model.upper()
    level_text = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if model not in ("PATIENT", "STUDY") or level_text not in Level.__members__:
        raise Invalid(f"QueryRetrieveLevel {level_text!r} is not valid", IDENTIFIER_MISMATCH)
    level = Level(level_text)
    if model == "STUDY" and level is Level.PATIENT:
        raise Invalid("Study Root has no PATIENT level", IDENTIFIER_MISMATCH)
    matches: list[Match] = []
    include: list[str] = []
    for elem in identifier:
        if elem.tag.is_private or elem.tag.group < 0x0008 or elem.keyword == "QueryRetrieveLevel":
            continue
        include.append(f"{int(elem.tag):08X}")
        attr = ATTRS.get(elem.keyword)
        value, items = _identifier_value(elem)
        if attr is None or attr.kind is Kind.RETURN or not (value or items):
            continue
        if attr.level.rank > level.rank:
            raise Invalid(f"{elem.keyword} is below the {level} level", IDENTIFIER_MISMATCH)
        matches.append(Match(elem.keyword, value, items))
    if not relational:
        _check_unique_keys(model, level, matches)
    query = Query(
        level,
        tuple(matches),
        include=tuple(include),
        limit=CFIND_MAX_MATCHES,
        fuzzy=fuzzy,
        model=model,
        relational=relational,
        combined_datetime=combined_datetime,
        dimse=True,
    )
    conditions(query, Params())
    return query


def _identifier_value(elem: DataElement) -> tuple[str, tuple[tuple[str, str], ...]]:
    if elem.VR == "SQ":
        if elem.keyword not in SEQUENCE_ITEM_KEYS or not elem.value:
            return "", ()
        item = elem.value[0]
        pairs = ((e.keyword, _text_of(e.value)) for e in item if e.keyword)
        return "", tuple((k, v) for k, v in pairs if v)
    return _text_of(elem.value), ()


def _text_of(value: Any) -> str:
    if value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _check_unique_keys(model: str, level: Level, matches: list[Match]) -> None:
    """Hierarchical query: every level above carries its unique key, single-valued."""
    needed = [("PatientID", Level.STUDY)] if model == "PATIENT" else []
    needed += [("StudyInstanceUID", Level.SERIES), ("SeriesInstanceUID", Level.IMAGE)]
    given = {m.keyword: m.value for m in matches}
    for keyword, from_level in needed:
        value = given.get(keyword, "")
        if level.rank >= from_level.rank and (not value or "\\" in value or has_wildcard(value)):
            raise Invalid(
                f"a hierarchical {level} query needs a single {keyword}", IDENTIFIER_MISMATCH
            )


# ---------------------------------------------------------------- answers


def search(index: ProjectionStore, query: Query) -> list[dict[str, Any]]:
    """DICOM JSON for each match of `query`, in the level's documented order."""
    return search_page(index, query).results


def search_page(index: ProjectionStore, query: Query) -> Page:
    """One page of answers, in two statements: the page's rows, then the
    aggregates (and stored metadata if needed) of just those entities.

    The embedded index keeps the whole answer until its next write (the DICOM
    JSON of a 600-study page took ~60 ms to build again from cached rows), as
    its JSON text: a kept page of dicts is thousands of objects that Python's
    cycle collector scans on every full collection (256 kept pages of a
    million-instance archive made each one a pause of ~0.3-1 s); a bytes
    object is one it never looks into. Each call gets its own objects."""
    memo = getattr(index, "memo", None)
    if memo is None:
        return _search_page(index, query)
    built: list[Page] = []

    def build() -> list[dict[str, Any]]:
        page = _search_page(index, query)
        built.append(page)
        return [{"more": page.more, "json": kept_json(page.results)}]

    kept = memo(("search_page", query), build, _weigh)
    if built:
        return built[0]
    return Page(orjson.loads(kept[0]["json"]), bool(kept[0]["more"]))


def _weigh(rows: list[dict[str, Any]]) -> int:
    return sum(len(row["json"]) + 64 for row in rows)


def _search_page(index: ProjectionStore, query: Query) -> Page:
    # Study searches check liveness in their own statement; the other levels
    # skip their live-instance semi-join while no entity is left empty.
    columns, tags = return_keys(query)
    getters = answer_getters(query, columns)
    with_metadata = bool(tags) or query.include_all
    if query.level is Level.STUDY and not with_metadata:
        rows, more = study_rows(index, query)
        return Page(study_answers(index, rows, columns, getters, query.dimse), more)
    all_live = query.level in (Level.PATIENT, Level.SERIES) and _all_live(index)
    sql, params = search_sql(query, all_live=all_live)
    rows = index.query_dicts(sql, params)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    for row in rows:
        unpack_answer(row)
    extra = _page_extra(index, query, rows, with_metadata) if rows else {}
    results = []
    for row in rows:
        found = extra.get(_row_key(query.level, row), {})
        row.update(found)
        obj = {tag: get(row) for tag, get in getters}
        meta = orjson.loads(found.get("a__metadata") or "{}") if with_metadata else {}
        picked = _level_metadata(query, meta) if query.include_all else {}
        picked |= {t: meta[t] if t in meta else _empty(t) for t in tags if t in meta or query.dimse}
        results.append(dict(sorted((picked | obj).items())))
    return Page(results, more)


def answer_getters(query: Query, columns: list[str]) -> list[tuple[str, Getter]]:
    """(tag, how it is read from a page row) for each attribute answered from columns."""
    return [(_TAG[k], _getter(k, query)) for k in columns]


def _all_live(index: ProjectionStore) -> bool:
    """True when no study or series is left without a live instance (the usual case:
    only a rejection or a move empties one), so queries need no live-instance check."""
    generation = getattr(index, "generation", None)
    memo = _ALL_LIVE.get(id(index))
    if generation is not None and memo is not None and memo[0] == generation:
        return memo[1]
    rows = index.query_dicts(EMPTY_ENTITIES_SQL)
    answer = bool(rows) and int(rows[0]["n"]) == 0
    if generation is not None and getattr(index, "generation", None) == generation:
        _ALL_LIVE[id(index)] = (generation, answer)
    return answer


#: id(store) -> (its write generation, whether every entity was live then).
_ALL_LIVE: dict[int, tuple[int, bool]] = {}


def _page_extra(
    index: ProjectionStore, query: Query, rows: list[dict[str, Any]], with_metadata: bool
) -> dict[tuple[str, ...], dict[str, Any]]:
    """Aggregates and stored metadata per entity of the page, as 'a__' row columns.

    Instances whose metadata went to a sidecar blob have '' here and so add
    nothing: the query engine reads the projection store only.
    """
    if query.level in (Level.STUDY, Level.IMAGE) and not with_metadata:
        return {}  # a study row carries its aggregates already (query_sql._study_search_sql)
    first = sorted({_row_key(query.level, row)[0] for row in rows})
    sql, params = page_sql(query.level, first, metadata=with_metadata)
    width = len(KEYS[query.level])
    found = {}
    for row in index.query_dicts(sql, params):
        values = list(row.items())
        key = tuple(str(v) for _, v in values[:width])
        found[key] = {f"a__{name}": value for name, value in values[width:]}
    return found


def _getter(keyword: str, query: Query) -> Getter:
    """How one returned attribute is read from a page row (decided once per query)."""
    level = query.level
    if keyword in ("InstanceAvailability", "QueryRetrieveLevel"):
        constant = "ONLINE" if keyword == "InstanceAvailability" else level.value
        return lambda row: _element("CS", constant)
    if keyword == "RetrieveURL":
        return lambda row: _element("UR", _retrieve_path(level, row))
    attr = ATTRS[keyword]
    alias = "a" if attr.aggregate else source_alias(attr.level, level)
    column, vr = f"{alias}__{attr.column}", _VR[keyword]
    if keyword == "SpecificCharacterSet" and not query.dimse:
        return lambda row: _element(vr, "ISO_IR 192")  # DICOM JSON and XML are UTF-8
    if keyword == "SpecificCharacterSet":  # C-FIND answers in the stored repertoire
        return lambda row: _element(vr, (row.get(column) or "").split("\\"))
    if attr.kind is Kind.SEQUENCE:
        return lambda row: _element(vr, [_item(i) for i in orjson.loads(row[column] or "[]")])
    # A .get: an entity hidden between the two statements has no aggregates.
    return lambda row: _element(vr, row.get(column))


def _retrieve_path(level: Level, row: dict[str, Any]) -> str:
    prefix = "st" if level is Level.STUDY else ("se" if level is Level.SERIES else "i")
    path = f"studies/{row[f'{prefix}__study_instance_uid']}"
    if level is not Level.STUDY:
        path += f"/series/{row[f'{prefix}__series_instance_uid']}"
    if level is Level.IMAGE:
        path += f"/instances/{row['i__sop_instance_uid']}"
    return path


def _element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute; empty values have no "Value" (PS3.18 F.2.5)."""
    values = [v for v in (value if isinstance(value, list) else [value]) if v not in (None, "")]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        values = [_person_name(str(v)) for v in values]
    return {"vr": vr, "Value": values}


def _empty(tag: str) -> dict[str, Any]:
    """A requested key the archive has no value for: C-FIND still returns it, empty."""
    try:
        return {"vr": str(dictionary_VR(int(tag, 16))).split(" or ")[0]}
    except KeyError:
        return {"vr": "UN"}


def _person_name(text: str) -> dict[str, str]:
    groups = zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False)
    return {name: group for name, group in groups if group}


def _item(item: dict[str, Any]) -> dict[str, Any]:
    """A sequence item stored as {keyword: value} -> DICOM JSON."""
    out = {}
    for keyword, value in item.items():
        tag = tag_for_keyword(keyword)
        if tag is not None:
            out[f"{tag:08X}"] = _element(str(dictionary_VR(tag)), value)
    return dict(sorted(out.items()))


def _row_key(level: Level, row: dict[str, Any]) -> tuple[str, ...]:
    alias = {Level.PATIENT: "p", Level.STUDY: "st", Level.SERIES: "se", Level.IMAGE: "i"}[level]
    return tuple(str(row[f"{alias}__{k}"]) for k in KEYS[level])


def _level_metadata(query: Query, meta: dict[str, Any]) -> dict[str, Any]:
    """includefield=all: the stored attributes that belong to the query's level."""
    level = query.level

    def belongs(tag: str) -> bool:
        patient = tag.startswith("0010")
        study = patient or tag in LEVEL_TAGS[Level.STUDY]
        if level is Level.PATIENT:
            return patient
        if level is Level.STUDY:
            return study
        if level is Level.SERIES:
            return tag in LEVEL_TAGS[Level.SERIES] or (study and not query.study_uid)
        return True

    return {t: e for t, e in meta.items() if belongs(t) and not _has_bulk(e)}


def _has_bulk(elem: Any) -> bool:
    """Bulk data is for WADO-RS; a search answer never carries it."""
    if isinstance(elem, dict):
        return (
            "BulkDataURI" in elem
            or "InlineBinary" in elem
            or any(_has_bulk(v) for v in elem.values() if isinstance(v, dict | list))
        )
    return isinstance(elem, list) and any(_has_bulk(v) for v in elem)
