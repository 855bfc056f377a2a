"""The ProjectionStore contract: chDB in-process and (when configured) a ClickHouse server.

One store per module (see conftest.projection_store); each test makes its own
tables from `table_name`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.clickhouse import ClickHouseStore
from infra.errors import Invalid
from infra.ports import ProjectionStore

LEVEL_TABLES = {
    "patient",
    "study",
    "series",
    "instance",
    "receipt",
    "receipt_by_sop",
    "study_stats",
    "series_stats",
    "checkpoint",
}

# Strings that would break naively spliced SQL; parameters must carry them inert.
HOSTILE = [
    "O'Brien",
    "back\\slash",
    "quote\\'",
    "x' OR '1'='1",
    "'; DROP TABLE {table}; --",
    "{other:String}",
    "tab\tnew\nline",
    "\u00e9\u6f22\u5b57",
    "%s %(name)s ?",
]


def make_versioned(store: ProjectionStore, table: str) -> None:
    store.command(
        f"CREATE TABLE {table} (uid String, value String, n Nullable(Int64), version UInt64)"
        " ENGINE = ReplacingMergeTree(version) ORDER BY uid"
    )


def as_store(store: ProjectionStore) -> ClickHouseStore:
    # Every ProjectionStore adapter is ClickHouse SQL over clickhouse-connect.
    assert isinstance(store, ClickHouseStore)
    return store


class TestProjectionStoreContract:
    def test_opening_applies_the_migrations(self, projection_store: ProjectionStore) -> None:
        tables = {row[0] for row in projection_store.query("SHOW TABLES")}
        assert tables >= LEVEL_TABLES
        assert "schema_migrations" in tables

    def test_insert_then_query_rows_and_dicts(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        projection_store.insert(
            table_name,
            [["1.2.1", "a", 7, 1], ["1.2.2", "b", None, 1]],
            ["uid", "value", "n", "version"],
        )
        assert projection_store.query(f"SELECT uid, value, n FROM {table_name} ORDER BY uid") == [
            ("1.2.1", "a", 7),
            ("1.2.2", "b", None),
        ]
        assert projection_store.query_dicts(
            f"SELECT uid, n FROM {table_name} WHERE uid = {{uid:String}}", {"uid": "1.2.2"}
        ) == [{"uid": "1.2.2", "n": None}]

    def test_an_empty_insert_is_a_no_op(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        projection_store.insert(table_name, [], ["uid", "value", "n", "version"])
        assert projection_store.query(f"SELECT count() FROM {table_name}") == [(0,)]

    def test_inserting_the_same_rows_twice_leaves_one_under_final(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        rows = [["1.2.1", "a", 1, 5], ["1.2.2", "b", 2, 6]]
        columns = ["uid", "value", "n", "version"]
        projection_store.insert(table_name, rows, columns)
        projection_store.insert(table_name, rows, columns)
        assert projection_store.query(
            f"SELECT uid, value, version FROM {table_name} FINAL ORDER BY uid"
        ) == [("1.2.1", "a", 5), ("1.2.2", "b", 6)]

    def test_the_highest_version_wins_whatever_the_insert_order(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        columns = ["uid", "value", "n", "version"]
        projection_store.insert(table_name, [["1.2.1", "newer", None, 9]], columns)
        projection_store.insert(table_name, [["1.2.1", "older", None, 3]], columns)
        projection_store.command(f"OPTIMIZE TABLE {table_name} FINAL")
        assert projection_store.query(f"SELECT value FROM {table_name} FINAL") == [("newer",)]
        assert projection_store.query(f"SELECT value FROM {table_name}") == [("newer",)]

    def test_types_round_trip(self, projection_store: ProjectionStore, table_name: str) -> None:
        projection_store.command(
            f"CREATE TABLE {table_name} (big UInt64, at DateTime64(6, 'UTC'), flag UInt8,"
            " rows Nullable(UInt32)) ENGINE = MergeTree ORDER BY big"
        )
        at = dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC)
        projection_store.insert(
            table_name, [[2**64 - 1, at, 1, None]], ["big", "at", "flag", "rows"]
        )
        [(big, stored_at, flag, rows)] = projection_store.query(f"SELECT * FROM {table_name}")
        assert (big, flag, rows) == (2**64 - 1, 1, None)
        assert stored_at.replace(tzinfo=dt.UTC) == at

    @settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(text=st.text(max_size=40) | st.sampled_from(HOSTILE))
    def test_parameters_carry_any_text_inert(
        self, projection_store: ProjectionStore, table_name: str, text: str
    ) -> None:
        text = text.replace("{table}", table_name)
        if not projection_store.query(
            "SELECT count() FROM system.tables WHERE database = currentDatabase()"
            " AND name = {t:String}",
            {"t": table_name},
        )[0][0]:
            make_versioned(projection_store, table_name)
            projection_store.insert(
                table_name, [["1.2.1", "safe", None, 1]], ["uid", "value", "n", "version"]
            )
        assert projection_store.query("SELECT {v:String}", {"v": text}) == [(text,)]
        # An injection attempt matches nothing and drops nothing.
        assert projection_store.query(
            f"SELECT uid FROM {table_name} WHERE value = {{v:String}}", {"v": text}
        ) == ([("1.2.1",)] if text == "safe" else [])
        uid = f"2.25.{uuid.uuid4().int}"
        projection_store.command(
            f"INSERT INTO {table_name} (uid, value, version)"
            " VALUES ({u:String}, {v:String}, 2)",
            {"u": uid, "v": text},
        )
        assert projection_store.query(
            f"SELECT value FROM {table_name} FINAL WHERE uid = {{u:String}}", {"u": uid}
        ) == [(text,)]

    @pytest.mark.parametrize(
        ("sql", "parameters"),
        [
            ("SELEC 1", None),
            ("SELECT * FROM no_such_table_anywhere", None),
            ("SELECT {n:UInt8}", {"n": "not a number"}),
            ("SELECT {missing:String}", None),
        ],
    )
    def test_bad_sql_and_bad_values_are_invalid(
        self, projection_store: ProjectionStore, sql: str, parameters: dict[str, str] | None
    ) -> None:
        with pytest.raises(Invalid):
            projection_store.query(sql, parameters)

    def test_rows_that_do_not_fit_the_columns_are_invalid(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        with pytest.raises(Invalid):
            projection_store.insert(
                table_name, [["1.2.1", "v", None, "x"]], ["uid", "value", "n", "version"]
            )
        with pytest.raises(Invalid):
            projection_store.insert(table_name, [["1.2.1"]], ["no_such_column"])
        with pytest.raises(Invalid):
            projection_store.insert("bad name; DROP", [["1"]], ["uid"])

    def test_queries_run_from_many_threads(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        make_versioned(projection_store, table_name)
        projection_store.insert(
            table_name,
            [[f"1.2.{i}", str(i), i, 1] for i in range(200)],
            ["uid", "value", "n", "version"],
        )

        def lookup(i: int) -> list[tuple[object, ...]]:
            return projection_store.query(
                f"SELECT n FROM {table_name} FINAL WHERE uid = {{u:String}}", {"u": f"1.2.{i}"}
            )

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lookup, range(200)))
        assert answers == [[(i,)] for i in range(200)]

    def test_table_helpers_exchange_and_drop(
        self, projection_store: ProjectionStore, table_name: str
    ) -> None:
        store = as_store(projection_store)
        fresh = f"{table_name}_new"
        assert not store.table_exists(table_name)
        for name, value in [(table_name, "live"), (fresh, "rebuilt")]:
            make_versioned(store, name)
            store.insert(name, [["1.2.1", value, None, 1]], ["uid", "value", "n", "version"])
        assert store.table_exists(table_name) and store.table_exists(fresh)
        store.exchange_tables(table_name, fresh)
        assert store.query(f"SELECT value FROM {table_name}") == [("rebuilt",)]
        assert store.query(f"SELECT value FROM {fresh}") == [("live",)]
        store.drop_table(fresh)
        assert not store.table_exists(fresh)
        store.drop_table(fresh)  # dropping what is gone is fine

    def test_table_helpers_refuse_odd_names(self, projection_store: ProjectionStore) -> None:
        store = as_store(projection_store)
        for name in ["a b", "x; DROP TABLE instance", "`q`", "", "1abc"]:
            with pytest.raises(Invalid):
                store.drop_table(name)
            with pytest.raises(Invalid):
                store.table_exists(name)
        assert store.table_exists("instance")
