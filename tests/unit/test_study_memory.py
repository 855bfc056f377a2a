"""The study memory answers every study search exactly as the SQL does.

Random study_stats rows (odd names, dates and times, empty values, non-ASCII
letters, LIKE's own specials) and random study queries, answered both ways
on one chDB store: the same rows in the same order, the same "more", the same
refusals. Plus the memory's freshness: a newer statistics row is seen at the
next search, and nothing is read again while the store is not written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import study_snapshot
from api.query_model import Level, Match, Query
from api.query_sql import search_sql
from api.study_memory import StudyMemory, memory_for
from api.study_snapshot import EXTRA_MAX
from infra.errors import Invalid
from infra.factory import open_projection_store
from infra.ports import ProjectionStore
from projections.rows import normalise_name
from projections.stats import ANSWER_ATTRIBUTES, STUDY_COLUMNS

EXAMPLES = int(os.environ.get("STUDY_MEMORY_EXAMPLES", "150"))
UIDS = [f"1.2.3.{n}" for n in range(12)]
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    index = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    yield index
    index.close()


letters = st.sampled_from(list("abAB^= é\u0130_%\\\n"))
# Random text, and names shaped like real ones (components, trailing '^', groups).
name = st.one_of(
    st.text(letters, max_size=8),
    st.sampled_from(["ab^", "AB^^", "Ab^cd=ef^", "a%b", "A_B^", "ab=", "=ab", "ab^cd", "\u0130b"]),
)
day = st.sampled_from(["", "20200101", "20200102", "20211231", "2020", "abc", "20200101 "])
hour = st.sampled_from(["", "10", "1020", "10:20", "102030.5", "235959.999999", "1x", "000000"])
short = st.sampled_from(["", "A1", "a1", "A%", "A_1", "é", "A\\B"])


@st.composite
def study_row(draw: st.DrawFn, uid: str, version: int) -> dict[str, Any]:
    patient, referring = draw(name), draw(name)
    row: dict[str, Any] = {
        "study_instance_uid": uid,
        "n_series": draw(st.integers(0, 3)),
        "n_instances": draw(st.sampled_from([0, 1, 5])),
        "modalities": sorted(draw(st.sets(st.sampled_from(["CT", "MR", "SR", "c%"]), max_size=3))),
        "sop_classes": sorted(draw(st.sets(st.sampled_from([CT, MR]), max_size=2))),
        "representative": "",
        "version": version,
        "patient_id": draw(short),
        "issuer_of_patient_id": draw(short),
        "patient_name": patient,
        "patient_name_norm": normalise_name(patient),
        "patient_birth_date": draw(day),
        "patient_birth_time": draw(hour),
        "patient_sex": draw(st.sampled_from(["", "F", "M"])),
        "study_date": draw(day),
        "study_time": draw(hour),
        "accession_number": draw(short),
        "study_id": draw(short),
        "referring_physician_name": referring,
        "referring_physician_name_norm": normalise_name(referring),
        "study_description": draw(short),
        "specific_character_set": "ISO_IR 192",
    }
    row["answer"] = orjson.dumps([row[c] for c in ANSWER_ATTRIBUTES]).decode()
    return row


pattern = st.one_of(
    st.text(st.sampled_from(list("abAB^=*? é\u0130%_\\")), max_size=6),
    st.sampled_from(["ab", "AB", "ab^", "a*", "*b", "ab=ef", "=ab", "A?B", "ab^cd", "ab\\a*"]),
)
KEYS: dict[str, st.SearchStrategy[str]] = {
    "PatientName": pattern,
    "ReferringPhysicianName": pattern,
    "PatientID": st.one_of(short, pattern),
    "IssuerOfPatientID": short,
    "AccessionNumber": st.one_of(short, pattern, st.just("A1\\a1")),
    "StudyID": pattern,
    "StudyDescription": pattern,
    "PatientSex": st.sampled_from(["F", "M", "*", "?"]),
    "StudyDate": st.sampled_from(
        ["20200101", "20200101-", "-20200102", "20200101-20211231", "20200102-20200101", "2020"]
    ),  # fmt: skip
    "PatientBirthDate": st.sampled_from(["20200101", "-20211231", "20200102-"]),
    "StudyTime": st.sampled_from(["10", "1020-", "-1021", "102030.5", "1000-1100", "25"]),
    "PatientBirthTime": st.sampled_from(["10", "-1020", "000000"]),
    "StudyInstanceUID": st.sampled_from(
        [UIDS[0], f"{UIDS[1]},{UIDS[2]}", f"{UIDS[3]}\\{UIDS[4]}", "1.*", " ", ","]
    ),
    "ModalitiesInStudy": st.sampled_from(["CT", "MR,SR", "C*", "c%", "c_", "*", "CT\\MR"]),
    "SOPClassesInStudy": st.sampled_from([CT, f"{CT},{MR}", MR, " "]),
    "Modality": st.sampled_from(["CT"]),  # a series key: a study search ignores it
    "SeriesNumber": st.sampled_from(["1", "x"]),  # refused ("x") though ignored
}


#: Every key, the ones with the richest rules three times over.
COMMON_KEYS = sorted(KEYS) + 2 * ["PatientName", "ReferringPhysicianName", "StudyDate", "StudyTime"]


@st.composite
def study_query(draw: st.DrawFn) -> Query:
    keywords = draw(st.lists(st.sampled_from(COMMON_KEYS), max_size=3, unique=True))
    return Query(
        Level.STUDY,
        matches=tuple(Match(k, draw(KEYS[k])) for k in keywords),
        study_uid=draw(st.sampled_from([None, None, None, UIDS[5]])),
        limit=draw(st.sampled_from([1, 3, 1000])),
        offset=draw(st.sampled_from([0, 0, 2])),
        fuzzy=draw(st.booleans()),
        combined_datetime=draw(st.booleans()),
        dimse=draw(st.booleans()),
    )


def fill(store: ProjectionStore, rows: list[dict[str, Any]]) -> None:
    store.command("TRUNCATE TABLE study_stats")
    # Two inserts: FINAL has to pick the newer row of a study written twice.
    for part in (rows[::2], rows[1::2]):
        if part:
            store.insert(
                "study_stats", [[r[c] for c in STUDY_COLUMNS] for r in part], STUDY_COLUMNS
            )


def by_sql(store: ProjectionStore, query: Query) -> tuple[list[tuple[Any, ...]], bool] | str:
    try:
        sql, params = search_sql(query)
        rows = store.query_dicts(sql, params)
    except Invalid as exc:
        return f"Invalid: {exc}"
    return [_key(r) for r in rows[: query.limit]], len(rows) > query.limit


def by_memory(memory: StudyMemory, query: Query) -> tuple[list[tuple[Any, ...]], bool] | str | None:
    try:
        found = memory.search(query)
    except Invalid as exc:
        return f"Invalid: {exc}"
    return None if found is None else ([_key(r) for r in found[0]], found[1])


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    counts = (int(row["st__version"]), int(row["a__n_series"]), int(row["a__n_instances"]))
    return (row["st__answer"], *counts, list(row["a__modalities"]), list(row["a__sop_classes"]))


@st.composite
def corpus(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, len(UIDS)))
    rows = [draw(study_row(UIDS[n], version=10 + n)) for n in range(count)]
    rewritten = draw(st.lists(st.sampled_from(range(count)), max_size=3)) if count else []
    return rows + [draw(study_row(UIDS[n], version=100 + n)) for n in set(rewritten)]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=corpus(), queries=st.lists(study_query(), min_size=1, max_size=8))
def test_memory_answers_as_sql_does(
    store: ProjectionStore, rows: list[dict[str, Any]], queries: list[Query]
) -> None:
    fill(store, rows)
    memory = StudyMemory(store)
    for query in queries:
        expected, found = by_sql(store, query), by_memory(memory, query)
        if found is not None:  # None: SQL answers this one (a non-ASCII literal name)
            assert found == expected, query


def test_non_ascii_literal_names_go_to_sql(store: ProjectionStore) -> None:
    memory = StudyMemory(store)
    assert memory.search(Query(Level.STUDY, (Match("PatientName", "é*"),))) is None
    fuzzy = Query(Level.STUDY, (Match("PatientName", "é*"),), fuzzy=True)
    assert memory.search(fuzzy) is not None


def test_a_newer_row_is_seen_and_an_unwritten_store_is_not_read_again(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{**_plain(UIDS[0], 5), "accession_number": "OLD"}]
    fill(store, rows)
    memory = StudyMemory(store)
    query = Query(Level.STUDY, (Match("AccessionNumber", "NEW"),))
    assert memory.search(query) == ([], False)
    store.insert("study_stats", [[{**rows[0], "accession_number": "NEW", "version": 6}[c]
                                  for c in STUDY_COLUMNS]], STUDY_COLUMNS)  # fmt: skip
    found = memory.search(query)
    assert found is not None and [r["st__version"] for r in found[0]] == [6]
    statements: list[str] = []
    original = store.query_dicts

    def counted(sql: str, parameters: Any = None) -> Any:
        statements.append(sql)
        return original(sql, parameters)

    monkeypatch.setattr(store, "query_dicts", counted)
    assert memory.search(query) == found
    assert statements == []


def test_memory_needs_a_store_that_counts_its_writes(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert memory_for(store) is memory_for(store) is not None
    monkeypatch.setenv("CHRONICLE_STUDY_MEMORY", "0")
    assert memory_for(store) is None

    class Remote:  # a ClickHouse server: others write too
        generation = None

    monkeypatch.delenv("CHRONICLE_STUDY_MEMORY")
    assert memory_for(Remote()) is None  # type: ignore[arg-type]


def _plain(uid: str, version: int) -> dict[str, Any]:
    row = {c: "" for c in STUDY_COLUMNS}
    row.update(study_instance_uid=uid, version=version, n_series=1, n_instances=1,
               modalities=["CT"], sop_classes=[CT])  # fmt: skip
    row["answer"] = orjson.dumps([row[c] for c in ANSWER_ATTRIBUTES]).decode()
    return row


@st.composite
def later_batches(draw: st.DrawFn) -> list[list[tuple[int, Any]]]:
    """Batches of (study index, change): None, new counts only; a modality, the
    same attributes with that modality added; a row, new attributes."""
    change = st.one_of(st.none(), st.sampled_from(["MR", "MR", "SR"]), study_row("", 0))
    batch = st.tuples(st.integers(0, len(UIDS) - 1), change)
    return draw(st.lists(st.lists(batch, min_size=1, max_size=3), min_size=1, max_size=4))


@pytest.mark.parametrize("extra_max", [EXTRA_MAX, 1])
@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=corpus(), batches=later_batches(), queries=st.lists(study_query(), min_size=1, max_size=4)
)
def test_memory_follows_later_batches(
    store: ProjectionStore,
    extra_max: int,
    rows: list[dict[str, Any]],
    batches: list[list[tuple[int, Any]]],
    queries: list[Query],
) -> None:
    """Newer rows: counts only (replaced where they stand), new attributes or
    new studies (held beside the sorted rows, or sorted again past
    `extra_max` of those); the memory answers as SQL after every batch."""
    held = study_snapshot.EXTRA_MAX
    study_snapshot.EXTRA_MAX = extra_max
    try:
        _follow_batches(store, rows, batches, queries)
    finally:
        study_snapshot.EXTRA_MAX = held


def _follow_batches(
    store: ProjectionStore,
    rows: list[dict[str, Any]],
    batches: list[list[tuple[int, Any]]],
    queries: list[Query],
) -> None:
    fill(store, rows)
    memory = StudyMemory(store)
    for query in INDEXED:  # every index built before the first batch
        memory.search(query)
    newest = {r["study_instance_uid"]: r for r in rows}
    version = 1000
    for batch in batches:
        written = []
        for n, attributes in batch:
            uid = UIDS[n]
            version += 1
            base = newest.get(uid) or _plain(uid, version)
            row = dict(attributes if isinstance(attributes, dict) else base)
            row.update(study_instance_uid=uid, version=version)
            if attributes is None:
                row.update(n_instances=int(base["n_instances"]) + 1, n_series=2)
            elif isinstance(attributes, str):
                row["modalities"] = sorted({*base["modalities"], attributes})
            row["answer"] = orjson.dumps([row[c] for c in ANSWER_ATTRIBUTES]).decode()
            newest[uid] = row
            written.append([row[c] for c in STUDY_COLUMNS])
        store.insert("study_stats", written, STUDY_COLUMNS)
        for query in [*queries, *INDEXED]:
            found = by_memory(memory, query)
            if found is not None:
                assert found == by_sql(store, query), query


#: A query for each of the memory's indexes (built on first use, then kept while
#: batches leave what they index alone).
INDEXED = [
    Query(Level.STUDY, (Match("ModalitiesInStudy", "MR"),)),
    Query(Level.STUDY, (Match("ModalitiesInStudy", "CT,SR"), Match("StudyDate", "20200101-"))),
    Query(Level.STUDY, (Match("AccessionNumber", "A1"),)),
    Query(Level.STUDY, (Match("PatientID", "a1"),)),
    Query(Level.STUDY, (Match("StudyInstanceUID", f"{UIDS[0]},{UIDS[3]}"),)),
    Query(Level.STUDY, (Match("StudyDate", "-20200102"),)),
    Query(Level.STUDY, (Match("PatientName", "ab*"),)),
]


def test_a_new_study_below_the_newest_version_is_seen(store: ProjectionStore) -> None:
    """Versions need not grow across studies (a group member's count of events
    drops when it gives up partitions): the memory counts the table too."""
    fill(store, [_plain(UIDS[0], 50)])
    memory = StudyMemory(store)
    query = Query(Level.STUDY, (Match("StudyInstanceUID", f"{UIDS[0]},{UIDS[1]}"),))
    assert [r["st__version"] for r in by_rows(memory, query)] == [50]
    store.insert("study_stats", [[_plain(UIDS[1], 7)[c] for c in STUDY_COLUMNS]], STUDY_COLUMNS)
    assert sorted(r["st__version"] for r in by_rows(memory, query)) == [7, 50]


def by_rows(memory: StudyMemory, query: Query) -> list[dict[str, Any]]:
    found = memory.search(query)
    assert found is not None
    return found[0]


def test_a_study_written_by_several_batches_since_is_read_at_its_newest(
    store: ProjectionStore,
) -> None:
    """The refresh reads without FINAL: every unmerged row of a study written
    since, of which the newest version is the study's row (as FINAL keeps)."""
    fill(store, [_plain(UIDS[0], 50)])
    memory = StudyMemory(store)
    query = Query(Level.STUDY, (Match("StudyInstanceUID", UIDS[0]),))
    assert [r["st__version"] for r in by_rows(memory, query)] == [50]
    for version, count in ((70, 9), (60, 5)):  # two parts, in either order
        row = {**_plain(UIDS[0], version), "n_instances": count}
        store.insert("study_stats", [[row[c] for c in STUDY_COLUMNS]], STUDY_COLUMNS)
    found = [(r["st__version"], r["a__n_instances"]) for r in by_rows(memory, query)]
    assert found == [(70, 9)]


def test_background_refreshes_share_one_thread(store: ProjectionStore) -> None:
    """`latest` answers at once and asks for a refresh when the store changed:
    one refresher thread for the memory's life, not a thread per refresh (a
    search waited for each new thread's first run)."""
    rows = [_plain(UIDS[0], 5)]
    fill(store, rows)
    memory = StudyMemory(store)
    memory.search(Query(Level.STUDY, ()))
    position = {0: 1}
    threads: set[int] = set()
    for version in (6, 7, 8):
        store.insert("study_stats", [[{**rows[0], "version": version}[c]
                                      for c in STUDY_COLUMNS]], STUDY_COLUMNS)  # fmt: skip
        held = memory.latest(lambda: position)
        assert held is None or held.newest_version < version  # not waited for
        deadline = time.monotonic() + 10
        while (memory._snapshot is None or memory._snapshot.newest_version < version) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert memory._snapshot is not None and memory._snapshot.newest_version == version
        assert memory._refresher is not None and memory._refresher.is_alive()
        threads.add(memory._refresher.ident or 0)
    assert len(threads) == 1
