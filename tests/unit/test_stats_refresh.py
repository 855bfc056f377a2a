"""A projector batch's statistics refresh (Python aggregation over the touched
studies' live instances) agrees with the replay's rebuild (SQL over the whole
instance table), whatever versions, moves and hidden rows the table holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import ProjectionStore
from projections import stats
from projections.written import newest_per_key

REFRESHED, REBUILT = "_refreshed", "_rebuilt"
_COLUMNS = ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "modality",
            "sop_class_uid", "hidden", "version"]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    for suffix in (REFRESHED, REBUILT):
        migrate(opened, suffix=suffix)
    yield opened
    opened.close()


_rows = st.lists(
    st.tuples(
        st.sampled_from(["1.1", "1.2", "1.3"]),  # study
        st.sampled_from(["2.1", "2.2", "2.3", "2.4"]),  # series
        st.sampled_from([f"3.{n}" for n in range(8)]),  # SOP Instance UID
        st.sampled_from(["CT", "MR", ""]),
        st.sampled_from(["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"]),
        st.sampled_from([0, 0, 0, 1]),  # hidden
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_rows)
def test_refresh_agrees_with_rebuild(store: ProjectionStore, rows: list[tuple[Any, ...]]) -> None:
    # Each row a newer version (log order), as the projector writes them.
    versioned = [[*row, version] for version, row in enumerate(rows, start=1)]
    for suffix in (REFRESHED, REBUILT):
        for table in ("instance", "instance_member", "study", "study_stats", "series_stats"):
            store.command(f"TRUNCATE TABLE {table}{suffix}")
        store.insert(f"instance{suffix}", versioned, _COLUMNS)
        # Each event also writes its study's attributes: the newest must be copied,
        # and packed into `answer` as the same text ('/' and non-ASCII included).
        store.insert(
            f"study{suffix}",
            [[r[0], f"NÄME/{r[6]}^Ü", f"A{r[6]}", r[6]] for r in versioned],
            ["study_instance_uid", "patient_name", "accession_number", "version"],
        )
        store.insert(
            f"instance_member{suffix}",
            [[r[0], r[1], r[2], r[6]] for r in versioned],
            ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "version"],
        )
    stats.refresh(store, REFRESHED, {row[0] for row in rows}, version=len(rows))
    stats.rebuild(store, REBUILT, version=len(rows))
    for table in ("study_stats", "series_stats"):
        assert _live(store, table, REFRESHED) == _live(store, table, REBUILT)


def _live(store: ProjectionStore, table: str, suffix: str) -> list[tuple[Any, ...]]:
    # The refresh also writes zero rows for studies and series left empty; the
    # rebuild has no row for them: both mean "no live instance".
    found = store.query(f"SELECT * EXCEPT version FROM {table}{suffix} FINAL WHERE n_instances > 0")
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in found)


def test_a_study_left_empty_gets_a_zero_row(store: ProjectionStore, tmp_path: Path) -> None:
    for table in ("instance", "instance_member", "study_stats", "series_stats"):
        store.command(f"TRUNCATE TABLE {table}{REFRESHED}")
    # 3.1 was in study 1.1, then moved to 1.2 (a newer version).
    store.insert(
        f"instance{REFRESHED}",
        [["1.1", "2.1", "3.1", "CT", "1.2", 0, 1], ["1.2", "2.2", "3.1", "CT", "1.2", 0, 2]],
        _COLUMNS,
    )
    store.insert(
        f"instance_member{REFRESHED}",
        [["1.1", "2.1", "3.1", 1], ["1.2", "2.2", "3.1", 2]],
        ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "version"],
    )
    stats.refresh(store, REFRESHED, {"1.1", "1.2"}, version=2)
    counts = dict(
        store.query(f"SELECT study_instance_uid, n_instances FROM study_stats{REFRESHED} FINAL")
    )
    assert counts == {"1.1": 0, "1.2": 1}


#: Where each series usually is; now and then an instance names another study.
_HOME = {"2.1": "1.1", "2.2": "1.1", "2.3": "1.2", "2.4": "1.2", "2.5": "1.4"}


def _placed(hidden: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.sampled_from(sorted(_HOME)),
        st.sampled_from(["1.1", "1.2", "1.4"]),
        st.integers(0, 9),  # < 1: the stray study above, else the series' home
        st.sampled_from(["CT", "MR", "US"]),
        st.sampled_from(["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"]),
        hidden,
    ).map(lambda t: (t[1] if t[2] < 1 else _HOME[t[0]], t[0], *t[3:]))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(_placed(st.sampled_from([0, 0, 0, 1])), max_size=20),
    batch=st.lists(_placed(st.just(0)), min_size=1, max_size=12),
)
def test_a_fresh_batch_adds_up_to_the_rebuild(
    store: ProjectionStore, stored: list[tuple[Any, ...]], batch: list[tuple[Any, ...]]
) -> None:
    """fresh_rows (current rows + a batch of new live instances) gives what the
    rebuild computes from every instance, or declines and nothing is written."""
    old = [[study, series, f"3.{n}", *rest, n] for n, (study, series, *rest) in enumerate(stored)]
    new = [
        [study, series, f"4.{n}", *rest, len(old) + n]
        for n, (study, series, *rest) in enumerate(batch, start=1)
    ]
    for suffix in (REFRESHED, REBUILT):
        for table in ("instance", "instance_member", "study", "study_stats", "series_stats"):
            store.command(f"TRUNCATE TABLE {table}{suffix}")
    _store_instances(store, REFRESHED, old)
    stats.rebuild(store, REFRESHED, version=len(old))  # the statistics before the batch
    _store_instances(store, REFRESHED, new)
    _store_instances(store, REBUILT, old + new)
    stats.rebuild(store, REBUILT, version=len(old) + len(new))
    before = {t: _live(store, t, REFRESHED) for t in ("study_stats", "series_stats")}
    instances = [dict(zip(_COLUMNS, row, strict=True)) for row in new]
    studies = [
        {**{c: "" for c in stats.STUDY_ATTRIBUTES}, "study_instance_uid": r[0],
         "patient_name": f"NÄME/{r[6]}^Ü", "accession_number": f"A{r[6]}", "version": r[6]}
        for r in new
    ]  # fmt: skip
    found = stats.fresh_rows(
        store, REFRESHED, instances, newest_per_key("study", studies), len(old) + len(new)
    )
    if found is not None:
        stats.write(store, REFRESHED, *found)
    added = found is not None
    for table in ("study_stats", "series_stats"):
        if added:
            assert _live(store, table, REFRESHED) == _live(store, table, REBUILT)
        else:
            assert _live(store, table, REFRESHED) == before[table]
    # Declining is for series found under another study only.
    studies_of = {s: {r[0] for r in stored + batch if r[1] == s} for s in _HOME}
    if all(len(found) <= 1 for found in studies_of.values()):
        assert added


def _store_instances(store: ProjectionStore, suffix: str, rows: list[list[Any]]) -> None:
    """Instances as the projector writes them: instance, membership and study rows."""
    store.insert(f"instance{suffix}", rows, _COLUMNS)
    store.insert(
        f"instance_member{suffix}",
        [[r[0], r[1], r[2], r[6]] for r in rows],
        ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "version"],
    )
    store.insert(
        f"study{suffix}",
        [[r[0], f"NÄME/{r[6]}^Ü", f"A{r[6]}", r[6]] for r in rows],
        ["study_instance_uid", "patient_name", "accession_number", "version"],
    )
