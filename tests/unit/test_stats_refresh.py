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
