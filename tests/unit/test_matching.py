"""The query engine shared by QIDO-RS and C-FIND, against real chDB tables.

Parsing and value rules are pure; matching runs on a hand-checked corpus
(tests/unit/matching_corpus.py) in one chDB store for the module. The
wildcard and person-name rules are property-tested against ClickHouse itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from starlette.datastructures import QueryParams

from api.matching import parse_qido, query_from_identifier, search, search_page
from api.query_model import MAX_LIMIT, Level, Match, date_range, time_range
from api.query_sql import _COLUMNS, Params, _pn, like_pattern
from api.query_sql import search_sql as build_search_sql
from infra.errors import Invalid
from infra.ports import ProjectionStore
from projections.rows import normalise_name
from projections.stats import ANSWER_ATTRIBUTES
from schemas.names import fold
from tests.unit.matching_corpus import CT, S1, S2, S3, S4, S6, S7, S8, SR, open_corpus_store

ALL_STUDIES = [S8, S2, S1, S4, S3, S6, S7]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    yield from open_corpus_store(Path(tmp_path_factory.mktemp("index")))


def values(obj: dict[str, Any], tag: str) -> list[Any]:
    return list(obj.get(tag, {}).get("Value", []))


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [values(r, tag)[0] for r in results]


def studies(store: ProjectionStore, *params: tuple[str, str]) -> list[str]:
    return uids(search(store, parse_qido(Level.STUDY, list(params))))


def identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# ------------------------------------------------------------------ QIDO parsing


def test_url_encoded_person_name_arrives_decoded() -> None:
    params = QueryParams("PatientName=Zeta%5E%2A&StudyDate=20200101-").multi_items()
    query = parse_qido("STUDY", params)
    assert query.matches == (Match("PatientName", "Zeta^*"), Match("StudyDate", "20200101-"))


def test_keys_by_keyword_or_tag_are_the_same_query() -> None:
    assert parse_qido("STUDY", [("PatientName", "A*")]) == parse_qido("STUDY", [("00100010", "A*")])


def test_includefield_repeats_commas_tags_keywords_and_all() -> None:
    query = parse_qido(
        Level.STUDY, [("includefield", "PatientAge, 00080080"), ("includefield", "all")]
    )
    assert query.include == ("00101010", "00080080")
    assert query.include_all


def test_empty_key_is_a_return_key() -> None:
    query = parse_qido(Level.STUDY, [("PatientAge", ""), ("PatientName", "")])
    assert query.matches == ()
    assert query.include == ("00101010", "00100010")


def test_limit_offset_fuzzy() -> None:
    query = parse_qido(Level.STUDY, [("limit", "5"), ("offset", "10"), ("fuzzymatching", "TRUE")])
    assert (query.limit, query.offset, query.fuzzy) == (5, 10, True)
    assert parse_qido(Level.STUDY, [("limit", "99999")]).limit == MAX_LIMIT
    assert parse_qido(Level.STUDY, []).limit == MAX_LIMIT


def test_sequence_keys_by_dotted_path() -> None:
    query = parse_qido(
        Level.SERIES,
        [
            ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1"),
            ("00400275.00401001", "R*"),
        ],
    )
    assert query.matches == (
        Match(
            "RequestAttributesSequence",
            items=(("ScheduledProcedureStepID", "SPS1"), ("RequestedProcedureID", "R*")),
        ),
    )


@pytest.mark.parametrize(
    "params",
    [
        [("foo", "1")],
        [("InstitutionName", "X")],  # a DICOM keyword, but not matchable
        [("SOPInstanceUID", "1.2")],  # below the study level
        [("NumberOfStudyRelatedSeries", "2")],  # returned, never matched
        [("PatientName", "A"), ("00100010", "B")],
        [("limit", "0")],
        [("limit", "ten")],
        [("offset", "-1")],
        [("limit", "1"), ("limit", "2")],
        [("fuzzymatching", "maybe")],
        [("includefield", "NoSuchKeyword")],
        [("StudyDate", "2020-01-01")],
        [("StudyDate", "20201301")],
        [("StudyDate", "-")],
        [("StudyTime", "2500")],
        [("StudyTime", "10.5")],
        [("StudyInstanceUID", "1.2.abc")],
        [("StudyInstanceUID", "1.2.*")],
        [("RequestAttributesSequence", "x")],
        [("PatientName.FamilyName", "x")],
    ],
)
def test_bad_queries_are_invalid(params: list[tuple[str, str]]) -> None:
    with pytest.raises(Invalid):
        parse_qido(Level.STUDY, params)


def test_bad_series_keys_are_invalid() -> None:
    for params in (
        [("SeriesNumber", "two")],
        [("RequestAttributesSequence.PatientID", "x")],
    ):
        with pytest.raises(Invalid):
            parse_qido(Level.SERIES, params)


# ------------------------------------------------------------------ value rules


def test_date_ranges() -> None:
    assert date_range("StudyDate", "20200101") == ("20200101", "20200101")
    assert date_range("StudyDate", "20200101-20200131") == ("20200101", "20200131")
    assert date_range("StudyDate", "-20200131") == (None, "20200131")
    assert date_range("StudyDate", "20200101-") == ("20200101", None)


def test_time_values_cover_their_precision() -> None:
    assert time_range("StudyTime", "1010") == ("101000.000000", "101059.999999")
    assert time_range("StudyTime", "10") == ("100000.000000", "105959.999999")
    assert time_range("StudyTime", "-12:00") == (None, "120059.999999")
    assert time_range("StudyTime", "101010.5-") == ("101010.500000", None)


def test_fold_strips_accents_and_case() -> None:
    assert fold("Zéta^ÉCOLE=Ωmega") == "zeta^ecole=ωmega"


@given(st.text(max_size=20))
def test_fold_is_the_projectors_normalisation(name: str) -> None:
    # Fuzzy matching compares fold(query) with the *_norm columns the projector writes.
    assert fold(name) == normalise_name(name)


def test_values_never_enter_the_sql_text() -> None:
    hostile = "x' OR 1=1 --"
    sql, params = build_search_sql(parse_qido(Level.STUDY, [("AccessionNumber", hostile)]))
    assert hostile not in sql and hostile in params.values()


def test_a_study_answer_packs_every_attribute_it_returns() -> None:
    assert set(_COLUMNS["st"][1]) <= set(ANSWER_ATTRIBUTES)


class _Counting:
    """The store, counting statements (and without the read cache's memo)."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store, self.statements = store, 0

    def query_dicts(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        self.statements += 1
        return self.store.query_dicts(sql, params)


def test_a_study_search_is_one_statement(store: ProjectionStore) -> None:
    counting = _Counting(store)
    query = parse_qido(Level.STUDY, [("ModalitiesInStudy", "CT"), ("PatientName", "*")])
    page = search_page(counting, query)  # type: ignore[arg-type]
    assert page.results and counting.statements == 1
    assert page.results == search(store, query)
    # includefield needs the representative's stored metadata: a second statement.
    search_page(counting, parse_qido(Level.STUDY, [("includefield", "00101010")]))  # type: ignore[arg-type]
    assert counting.statements == 3


def test_a_kept_study_answer_gives_way_to_a_newer_statistics_row(store: ProjectionStore) -> None:
    query = parse_qido(Level.STUDY, [("StudyInstanceUID", S1)])
    (before,) = search(store, query)
    old = before["00080050"]["Value"][0]
    before["0020000D"] = {}  # a caller's change to its answer stays its own
    assert search(store, query)[0]["0020000D"] == {"vr": "UI", "Value": [S1]}
    # Above every version in the table, as the projector's next batch would be:
    # versions grow with the log (the study memory reads what is newer).
    rewrite = (
        "INSERT INTO study_stats SELECT * REPLACE ((SELECT max(version) FROM study_stats)"
        " + {step:UInt64} AS version,"
        " {new:String} AS accession_number, replaceOne(answer, {old:String}, {new:String})"
        " AS answer) FROM study_stats FINAL WHERE study_instance_uid = {uid:String}"
    )
    store.command(rewrite, {"step": 1, "old": old, "new": "NEW-ACC", "uid": S1})
    try:
        (after,) = search(store, query)
        assert after["00080050"] == {"vr": "SH", "Value": ["NEW-ACC"]}
        assert after["0020000D"] == {"vr": "UI", "Value": [S1]}
    finally:  # the module's other tests see S1 as it was
        store.command(rewrite, {"step": 1, "old": "NEW-ACC", "new": old, "uid": S1})
    assert search(store, query)[0]["00080050"] == {"vr": "SH", "Value": [old]}


# ------------------------------------------------------------------ properties


def wildcard_reference(pattern: str, text: str, *, fold_case: bool = False) -> bool:
    """PS3.4 C.2.2.2.4: '*' any run (also empty), '?' one character, all else literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.DOTALL | (re.IGNORECASE if fold_case else 0)
    if fold_case:
        pattern, text = pattern.lower(), text.lower()
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, flags) is not None


CHARS = st.sampled_from(list("ab%_\\*?é山 "))
TEXT = st.text(st.sampled_from(list("ab%_\\é山 ")), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.text(CHARS, max_size=6), texts=st.lists(TEXT, min_size=1, max_size=8))
def test_wildcards_translate_to_like_exactly(
    store: ProjectionStore, pattern: str, texts: list[str]
) -> None:
    [(got,)] = store.query(
        "SELECT arrayMap(t -> t LIKE {p:String}, {texts:Array(String)})",
        {"p": like_pattern(pattern), "texts": texts},
    )
    assert [bool(g) for g in got] == [wildcard_reference(pattern, t) for t in texts]


def pn_reference(stored: str, query: str, fuzzy: bool) -> bool:
    """The documented person-name rule, in Python."""
    groups = (fold(stored) if fuzzy else stored).split("=")

    def group_matches(q: str, g: str) -> bool:
        if not fuzzy:
            return wildcard_reference(q.rstrip("^"), g.rstrip("^"), fold_case=True)
        comps = g.split("^")
        return all(
            wildcard_reference(c + "*", comps[k] if k < len(comps) else "")
            for k, c in enumerate(fold(q).split("^"))
            if c
        )

    if "=" not in query:
        return any(group_matches(query, g) for g in groups)
    return all(
        group_matches(q, groups[n] if n < len(groups) else "")
        for n, q in enumerate(query.split("="))
        if q
    )


NAME = st.text(st.sampled_from(list("aBéÉ山^=")), max_size=8)
PN_QUERY = st.text(st.sampled_from(list("abÉ山^=*?")), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=PN_QUERY, names=st.lists(NAME, min_size=1, max_size=8), fuzzy=st.booleans())
def test_person_name_matching_follows_the_rule(
    store: ProjectionStore, query: str, names: list[str], fuzzy: bool
) -> None:
    if set(query) == {"*"}:
        return  # universal matching: no condition at all
    params = Params()
    cond = _pn("n", query, params, fuzzy)
    names_param = params.add(names, "Array(String)")
    norms_param = params.add([fold(n) for n in names], "Array(String)")
    # n_norm is what the projector stores beside n for fuzzy matching.
    [(got,)] = store.query(
        f"SELECT arrayMap((n, n_norm) -> {cond}, {names_param}, {norms_param})", params.values
    )
    assert [bool(g) for g in got] == [pn_reference(n, query, fuzzy) for n in names]


# ------------------------------------------------------------------ study matching


def test_every_live_study_in_the_documented_order(store: ProjectionStore) -> None:
    # Newest first; a study without a date last; S5 (all hidden) never.
    assert studies(store) == ALL_STUDIES


def test_person_name_wildcard_and_case(store: ProjectionStore) -> None:
    assert studies(store, ("PatientName", "Zeta^*")) == [S8, S2, S1]
    assert studies(store, ("PatientName", "ZETA^alpha")) == [S8, S1]
    assert studies(store, ("PatientName", "Zeta")) == []  # single value: exact
    assert studies(store, ("PatientName", "?eta^B*")) == [S2]


def test_person_name_every_component_group(store: ProjectionStore) -> None:
    assert studies(store, ("PatientName", "山田^太郎")) == [S3]
    assert studies(store, ("PatientName", "やまだ*")) == [S3]
    assert studies(store, ("PatientName", "Yamada^Tarou=山田^*")) == [S3]
    assert studies(store, ("PatientName", "Yamada^Tarou=佐藤*")) == []
    assert studies(store, ("ReferringPhysicianName", "佐藤^花子")) == [S3]


def test_fuzzy_matching_folds_accents_and_matches_prefixes(store: ProjectionStore) -> None:
    fuzzy = ("fuzzymatching", "true")
    assert studies(store, ("PatientName", "zeta"), fuzzy) == [S8, S2, S1, S4]
    assert studies(store, ("PatientName", "ZE^g"), fuzzy) == [S4]
    assert studies(store, ("ReferringPhysicianName", "sato"), fuzzy) == [S3]
    assert studies(store, ("PatientName", "zeta")) == []


def test_date_ranges_single_and_open(store: ProjectionStore) -> None:
    assert studies(store, ("StudyDate", "20200101-20200110")) == [S2, S1, S4]
    assert studies(store, ("StudyDate", "-20191231")) == [S3, S6]  # S7 has no date
    assert studies(store, ("StudyDate", "20200110-")) == [S8, S2]
    assert studies(store, ("StudyDate", "20200105")) == [S1, S4]


def test_qido_combines_date_and_time_into_one_range(store: ProjectionStore) -> None:
    both = (("StudyDate", "20200101-20200110"), ("StudyTime", "0900-1100"))
    # 2020-01-01 09:00 to 2020-01-10 11:00: S2 (01-10 08:30) and S4 (01-05 08:00) are inside.
    assert studies(store, *both) == [S2, S1, S4]
    assert studies(store, ("StudyDate", "20200105"), ("StudyTime", "0900-")) == [S1]


def test_cfind_matches_date_and_time_independently(store: ProjectionStore) -> None:
    keys = identifier(
        QueryRetrieveLevel="STUDY", StudyDate="20200101-20200110", StudyTime="0900-1100"
    )
    independent = query_from_identifier(keys, model="STUDY")
    assert uids(search(store, independent)) == [S1]
    combined = query_from_identifier(keys, model="STUDY", combined_datetime=True)
    assert uids(search(store, combined)) == [S2, S1, S4]


def test_text_wildcards_keep_like_specials_literal(store: ProjectionStore) -> None:
    assert studies(store, ("AccessionNumber", "ACC_3%")) == [S3]
    assert studies(store, ("AccessionNumber", "ACC?")) == [S2, S1, S4]
    assert studies(store, ("AccessionNumber", "ACC*")) == [S2, S1, S4, S3]
    assert studies(store, ("AccessionNumber", "ACC_*")) == [S3]
    assert studies(store, ("AccessionNumber", "ACC%")) == []
    assert studies(store, ("AccessionNumber", "*")) == ALL_STUDIES  # universal, empty too
    assert studies(store, ("StudyID", "S1")) == [S1]
    assert studies(store, ("StudyDescription", "ÉCHO")) == [S4]


def test_modalities_and_sop_classes_in_study(store: ProjectionStore) -> None:
    # S8's first row version said CT; only its newest (MR) may match.
    assert studies(store, ("ModalitiesInStudy", "CT")) == [S1, S3, S6]
    assert studies(store, ("ModalitiesInStudy", "SR")) == [S1]
    assert studies(store, ("ModalitiesInStudy", "US,MR")) == [S8, S2, S4]
    assert studies(store, ("ModalitiesInStudy", "M?")) == [S8, S2]
    assert studies(store, ("SOPClassesInStudy", SR)) == [S1]


def test_study_uid_lists_and_hidden_studies(store: ProjectionStore) -> None:
    assert studies(store, ("StudyInstanceUID", f"{S3},{S1}")) == [S1, S3]
    assert studies(store, ("StudyInstanceUID", f"{S3}\\{S1}")) == [S1, S3]
    assert studies(store, ("StudyInstanceUID", "1.2.826.0.1.5")) == []  # every instance hidden


def test_study_answer_attributes(store: ProjectionStore) -> None:
    [s1] = search(store, parse_qido(Level.STUDY, [("StudyInstanceUID", S1)]))
    assert values(s1, "00100010") == [{"Alphabetic": "Zeta^Alpha"}]
    assert values(s1, "00201206") == [2] and values(s1, "00201208") == [5]
    assert values(s1, "00080061") == ["CT", "SR"]
    assert values(s1, "00080062") == [CT, SR]
    assert values(s1, "00080056") == ["ONLINE"]
    assert values(s1, "00081190") == [f"studies/{S1}"]
    assert values(s1, "00080005") == ["ISO_IR 192"]  # the JSON itself is UTF-8
    assert s1["00100030"] == {"vr": "DA", "Value": ["19750312"]}
    assert "00101010" not in s1  # not asked for
    [s3] = search(store, parse_qido(Level.STUDY, [("StudyInstanceUID", S3)]))
    assert values(s3, "00100010") == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert s3["00200010"] == {"vr": "SH"}  # empty: no Value
    [s6] = search(store, parse_qido(Level.STUDY, [("StudyInstanceUID", S6)]))
    assert values(s6, "00100010") == [{"Alphabetic": "Older^Version"}]  # newest version


def test_includefield_reads_the_newest_instances_metadata(store: ProjectionStore) -> None:
    query = parse_qido(Level.STUDY, [("StudyInstanceUID", S1), ("includefield", "PatientAge")])
    [s1] = search(store, query)
    assert values(s1, "00101010") == ["045Y"]
    query = parse_qido(Level.STUDY, [("StudyInstanceUID", S1), ("includefield", "all")])
    [s1] = search(store, query)
    assert values(s1, "00101010") == ["045Y"]
    assert "00080080" not in s1 and "7FE00010" not in s1  # series / instance attributes


def test_paging_is_stable_and_says_when_more_follow(store: ProjectionStore) -> None:
    pages = [
        search_page(store, parse_qido(Level.STUDY, [("limit", "3"), ("offset", str(offset))]))
        for offset in (0, 3, 6)
    ]
    assert [p.more for p in pages] == [True, True, False]
    assert [u for p in pages for u in uids(p.results)] == ALL_STUDIES


# ------------------------------------------------------------------ series and instances


def test_series_of_a_study(store: ProjectionStore) -> None:
    found = search(store, parse_qido(Level.SERIES, [], study_uid=S1))
    assert uids(found, "0020000E") == ["1.2.826.0.1.1.1", "1.2.826.0.1.1.2"]
    ct, sr = found
    assert values(ct, "00201209") == [4] and values(sr, "00201209") == [1]
    assert values(ct, "00200011") == [1] and values(ct, "00080060") == ["CT"]
    assert values(ct, "00400275") == [
        {"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}}
    ]
    assert sr["00400275"] == {"vr": "SQ"}
    assert values(ct, "00081190") == [f"studies/{S1}/series/1.2.826.0.1.1.1"]
    assert "00100010" not in ct  # study attributes only for "all series"


def test_series_matching(store: ProjectionStore) -> None:
    def series(*params: tuple[str, str]) -> list[str]:
        return uids(search(store, parse_qido(Level.SERIES, list(params), study_uid=S1)), "0020000E")

    assert series(("Modality", "SR")) == ["1.2.826.0.1.1.2"]
    assert series(("SeriesNumber", "2")) == ["1.2.826.0.1.1.2"]
    assert series(("SeriesNumber", "*")) == ["1.2.826.0.1.1.1", "1.2.826.0.1.1.2"]
    assert series(("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1")) == [
        "1.2.826.0.1.1.1"
    ]
    assert series(("RequestAttributesSequence.RequestedProcedureID", "RP*")) == ["1.2.826.0.1.1.1"]
    assert series(("RequestAttributesSequence.RequestedProcedureID", "X")) == []
    assert series(("PerformedProcedureStepStartDate", "20200101-")) == ["1.2.826.0.1.1.1"]
    assert series(("PerformedProcedureStepStartTime", "1014")) == ["1.2.826.0.1.1.1"]


def test_all_series_match_and_return_study_attributes(store: ProjectionStore) -> None:
    found = search(store, parse_qido(Level.SERIES, [("PatientID", "P2")]))
    assert uids(found, "0020000E") == ["1.2.826.0.1.2.1", "1.2.826.0.1.2.2"]
    assert values(found[0], "00100010") == [{"Alphabetic": "Zeta^Beta"}]
    assert values(found[0], "0020000D") == [S2]


def test_study_keys_in_series_and_instance_queries(store: ProjectionStore) -> None:
    found = search(store, parse_qido(Level.SERIES, [("ModalitiesInStudy", "SR")]))
    assert uids(found, "0020000E") == ["1.2.826.0.1.1.1", "1.2.826.0.1.1.2"]
    found = search(store, parse_qido(Level.IMAGE, [("PatientName", "zeta^beta")]))
    # Hierarchical order: by study, then series, then instance number.
    assert uids(found, "00080018") == [
        "1.2.826.0.1.2.1.1",
        "1.2.826.0.1.2.1.2",
        "1.2.826.0.1.2.2.1",
    ]
    keys = identifier(QueryRetrieveLevel="SERIES", PatientName="Zeta^Beta", Modality="MR")
    relational = query_from_identifier(keys, model="STUDY", relational=True)
    assert uids(search(store, relational), "0020000E") == ["1.2.826.0.1.2.1", "1.2.826.0.1.2.2"]


def test_instances_in_order_with_typed_values(store: ProjectionStore) -> None:
    query = parse_qido(Level.IMAGE, [], study_uid=S1, series_uid="1.2.826.0.1.1.1")
    found = search(store, query)
    assert uids(found, "00080018") == [f"1.2.826.0.1.1.1.{n}" for n in (1, 2, 3, 9)]
    second = found[1]
    assert values(second, "00280010") == [512] and values(second, "00280008") == [2]
    assert values(second, "00200013") == [2] and found[3]["00200013"] == {"vr": "IS"}
    assert values(second, "00081190") == [
        f"studies/{S1}/series/1.2.826.0.1.1.1/instances/1.2.826.0.1.1.1.2"
    ]


def test_instance_matching(store: ProjectionStore) -> None:
    def instances(*params: tuple[str, str]) -> list[str]:
        return uids(search(store, parse_qido(Level.IMAGE, list(params), study_uid=S1)), "00080018")

    assert len(instances(("SOPClassUID", f"{CT},{SR}"))) == 5
    assert instances(("SOPClassUID", SR)) == ["1.2.826.0.1.1.2.1"]
    assert instances(("InstanceNumber", "2")) == ["1.2.826.0.1.1.1.2"]
    assert instances(("SOPInstanceUID", "1.2.826.0.1.1.1.3")) == ["1.2.826.0.1.1.1.3"]
    assert uids(search(store, parse_qido(Level.IMAGE, [("PatientID", "P5")]))) == []  # hidden


def test_instance_includefield_all_drops_bulk_data(store: ProjectionStore) -> None:
    query = parse_qido(
        Level.IMAGE,
        [("SOPInstanceUID", "1.2.826.0.1.1.1.3"), ("includefield", "all")],
        study_uid=S1,
    )
    [inst] = search(store, query)
    assert values(inst, "00080080") == ["Chronicle Hospital"]
    assert values(inst, "00101010") == ["044Y"]
    assert "7FE00010" not in inst


# ------------------------------------------------------------------ C-FIND


def test_cfind_returns_exactly_the_requested_keys(store: ProjectionStore) -> None:
    keys = identifier(
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=f"{S1}\\{S3}",
        PatientName="",
        NumberOfStudyRelatedInstances="",
        InstitutionName="ignored",  # unsupported optional key: returned, not matched
    )
    found = search(store, query_from_identifier(keys, model="STUDY"))
    assert uids(found) == [S1, S3]
    assert set(found[0]) == {"00080005", "00080052", "0020000D", "00100010", "00201208", "00080080"}
    assert found[0]["00080080"] == {"vr": "LO"}  # S1's newest instance (SR) has none
    assert values(found[1], "00080005") == ["ISO 2022 IR 6", "ISO 2022 IR 87"]  # as stored


def test_cfind_patient_root_patient_level_counts(store: ProjectionStore) -> None:
    keys = identifier(
        QueryRetrieveLevel="PATIENT",
        PatientName="Zeta*",
        PatientID="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
        RetrieveURL="",  # no such thing for a patient: returned empty
    )
    found = search(store, query_from_identifier(keys, model="PATIENT"))
    assert [values(f, "00100020") for f in found] == [["P1"], ["P2"]]
    assert [values(f, "00201200") for f in found] == [[2], [1]]
    assert [values(f, "00201204") for f in found] == [[6], [3]]
    assert values(found[0], "00080052") == ["PATIENT"]
    assert found[0]["00081190"] == {"vr": "UR"}


def test_cfind_hierarchical_and_relational(store: ProjectionStore) -> None:
    series_keys = identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=S2, Modality="")
    found = search(store, query_from_identifier(series_keys, model="STUDY"))
    assert uids(found, "0020000E") == ["1.2.826.0.1.2.1", "1.2.826.0.1.2.2"]
    study_keys = identifier(QueryRetrieveLevel="STUDY", PatientName="Zeta^Beta")
    with pytest.raises(Invalid) as refused:
        query_from_identifier(study_keys, model="PATIENT")
    assert refused.value.status == 0xA900
    relational = query_from_identifier(study_keys, model="PATIENT", relational=True)
    assert uids(search(store, relational)) == [S2]
    study_keys.PatientID = "P2"
    assert uids(search(store, query_from_identifier(study_keys, model="PATIENT"))) == [S2]


@pytest.mark.parametrize(
    ("model", "keys", "status"),
    [
        ("STUDY", {"PatientName": "X"}, 0xA900),  # no QueryRetrieveLevel
        ("STUDY", {"QueryRetrieveLevel": "FRAME"}, 0xA900),
        ("STUDY", {"QueryRetrieveLevel": "PATIENT"}, 0xA900),  # Study Root has none
        ("STUDY", {"QueryRetrieveLevel": "SERIES", "Modality": "CT"}, 0xA900),  # no study UID
        ("STUDY", {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2*"}, 0xA900),
        ("STUDY", {"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": "1.2"}, 0xA900),
        ("STUDY", {"QueryRetrieveLevel": "STUDY", "StudyDate": "2020"}, 0xC000),
        ("WORKLIST", {"QueryRetrieveLevel": "STUDY"}, 0xA900),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom warns; the SCP decides
def test_cfind_refusals(model: str, keys: dict[str, str], status: int) -> None:
    with pytest.raises(Invalid) as refused:
        query_from_identifier(identifier(**keys), model=model)
    assert refused.value.status == status
