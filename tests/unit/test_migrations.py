"""Migrations: statement splitting, ordering, the ledger, suffixes, on chDB for real."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.clickhouse import ClickHouseStore
from infra.errors import Invalid
from infra.migrations import available, migrate, split_statements
from projections import stats


class RecordingStore:
    """A ProjectionStore that only remembers what it was asked to do."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.ledger: list[Sequence[Any]] = []

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.commands.append(sql)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        assert "schema_migrations" in sql
        return [(row[0],) for row in self.ledger]

    def query_dicts(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        raise AssertionError("not used by migrations")

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        assert table == "schema_migrations"
        self.ledger.extend(rows)

    def close(self) -> None:
        pass


@pytest.fixture
def ddl_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable package with its own ddl/ folder, to write migrations into."""
    name = f"ddl_pkg_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name / "ddl"
    folder.mkdir(parents=True)
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, folder


def test_statements_split_on_semicolons_outside_comments_and_quotes() -> None:
    sql = """
    -- a comment; with a semicolon;
    CREATE TABLE a{suffix} (x String DEFAULT ';') ENGINE = Memory; /* block; */
    CREATE TABLE `b;c` (s String DEFAULT 'it''s; fine', t String DEFAULT 'a\\';b')
        ENGINE = Memory;
    -- trailing comment only;
    """
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[0].endswith("ENGINE = Memory")
    assert statements[0].startswith("CREATE TABLE a{suffix}")
    assert statements[1].startswith("CREATE TABLE `b;c`")
    assert "'it''s; fine'" in statements[1]


def test_a_last_statement_needs_no_semicolon() -> None:
    assert split_statements("SELECT 1;\nSELECT 2") == ["SELECT 1", "SELECT 2"]


def test_unterminated_quotes_are_invalid() -> None:
    with pytest.raises(Invalid):
        split_statements("SELECT 'oops;")


@given(st.lists(st.text(alphabet="ab; -", max_size=10).map("SELECT '{}'".format), max_size=6))
def test_splitting_joined_statements_gives_them_back(statements: list[str]) -> None:
    assert split_statements(";\n-- note;\n".join(statements)) == statements


def test_the_shipped_migrations_create_every_level_table() -> None:
    [first, *_] = available()
    assert first.name == "001_levels" and first.version == 1
    statements = first.statements("_new")
    tables = {s.split("IF NOT EXISTS ")[1].split(" ")[0] for s in statements}
    assert tables == {
        f"{t}_new" for t in ["patient", "study", "series", "instance", "receipt", "checkpoint"]
    }
    assert all("{suffix}" not in s for s in statements)


def test_files_apply_in_numeric_order_once(ddl_package: tuple[str, Path]) -> None:
    package, folder = ddl_package
    (folder / "010_c.sql").write_text("CREATE TABLE c{suffix} (x UInt8) ENGINE = Memory;")
    (folder / "002_b.sql").write_text("CREATE TABLE b{suffix} (x UInt8) ENGINE = Memory;")
    (folder / "001_a.sql").write_text("CREATE TABLE a1{suffix};\nCREATE TABLE a2{suffix};")
    (folder / "README.md").write_text("not a migration")
    store = RecordingStore()
    assert migrate(store, package=package) == ["001_a", "002_b", "010_c"]
    assert [c.split()[2] for c in store.commands[1:]] == ["a1", "a2", "b", "c"]
    assert migrate(store, package=package) == []
    assert sorted(row[0] for row in store.ledger) == [1, 2, 10]
    (folder / "011_d.sql").write_text("CREATE TABLE d{suffix};")
    assert migrate(store, package=package) == ["011_d"]


def test_a_suffix_applies_everything_and_records_nothing(ddl_package: tuple[str, Path]) -> None:
    package, folder = ddl_package
    (folder / "001_a.sql").write_text("CREATE TABLE a{suffix} (x UInt8) ENGINE = Memory;")
    store = RecordingStore()
    migrate(store, package=package)
    assert migrate(store, "_new", package=package) == ["001_a"]
    assert store.commands[-1].startswith("CREATE TABLE a_new ")
    assert len(store.ledger) == 1


def test_two_files_with_one_version_are_invalid(ddl_package: tuple[str, Path]) -> None:
    package, folder = ddl_package
    (folder / "001_a.sql").write_text("SELECT 1;")
    (folder / "1_b.sql").write_text("SELECT 2;")
    with pytest.raises(Invalid, match="version 1"):
        migrate(RecordingStore(), package=package)


@pytest.mark.parametrize("suffix", ["_new; DROP TABLE x", "-new", "new table"])
def test_odd_suffixes_are_invalid(suffix: str) -> None:
    with pytest.raises(Invalid):
        migrate(RecordingStore(), suffix)


def test_migrate_on_chdb_is_idempotent_and_builds_fresh_tables(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path / 'index'}")
    shipped = [m.name for m in available()]
    try:
        assert shipped[:2] == ["001_levels", "002_commitment"]
        assert migrate(store) == shipped
        assert migrate(store) == []
        assert migrate(store, "_new") == shipped
        assert store.table_exists("instance_new") and store.table_exists("instance")
        assert store.query(
            "SELECT version, name FROM schema_migrations FINAL ORDER BY version"
        ) == [(m.version, m.name) for m in available()]
    finally:
        store.close()


def test_an_older_index_gets_its_study_answers_filled_in(
    tmp_path: Path, ddl_package: tuple[str, Path]
) -> None:
    """Migration 006 on an index made before it: every statistics row gains its
    study's attributes and packed answer, the text the projector would write."""
    name, folder = ddl_package
    shipped = {m.version: m for m in available()}
    for version in range(1, 6):
        (folder / f"{shipped[version].name}.sql").write_text(shipped[version].sql)
    store = ClickHouseStore(f"chdb://{tmp_path / 'index'}")
    try:
        migrate(store, package=name)
        store.insert(
            "study",
            [["1.2.3", "P/1", "Ärzte^Anna", "20240102", "A-7", 5]],
            ["study_instance_uid", "patient_id", "patient_name", "study_date",
             "accession_number", "version"],
        )  # fmt: skip
        store.insert(
            "study_stats",
            [["1.2.3", 1, 2, ["CT"], ["1.2"], "9.9", 5]],
            ["study_instance_uid", "n_series", "n_instances", "modalities", "sop_classes",
             "representative", "version"],
        )  # fmt: skip
        (folder / f"{shipped[6].name}.sql").write_text(shipped[6].sql)
        assert migrate(store, package=name) == [shipped[6].name]
        (row,) = store.query_dicts("SELECT * FROM study_stats FINAL")
        assert (row["n_instances"], row["accession_number"], row["patient_name"]) == (
            2, "A-7", "Ärzte^Anna",
        )  # fmt: skip
        values = {c: row[c] for c in stats.STUDY_ATTRIBUTES}
        assert row["answer"] == stats._with_answer("1.2.3", list(values.values()))[-1]
    finally:
        store.close()


def test_an_older_index_gets_its_members_metadata_and_tombstones(
    ddl_package: tuple[str, Path], tmp_path: Path
) -> None:
    """Migration 007 on an index made before it: instance_member's live rows
    become the live instances with their metadata; an instance that moved
    (two versions still unmerged) shows at its new place only."""
    name, folder = ddl_package
    shipped = {m.version: m for m in available()}
    for version in range(1, 7):
        (folder / f"{shipped[version].name}.sql").write_text(shipped[version].sql)
    store = ClickHouseStore(f"chdb://{tmp_path / 'index'}")
    columns = ["sop_instance_uid", "series_instance_uid", "study_instance_uid",
               "instance_number", "metadata", "hidden", "version"]  # fmt: skip
    try:
        migrate(store, package=name)
        instances = [
            ["9.1", "2.1", "1.1", 1, '{"a":1}', 0, 1],
            ["9.2", "2.1", "1.1", 2, '{"a":2}', 0, 2],
            ["9.2", "2.2", "1.1", 2, '{"a":3}', 0, 3],  # moved to series 2.2
        ]
        store.insert("instance", instances, columns)
        store.insert(
            "instance_member",
            [[r[2], r[1], r[0], r[6]] for r in instances],
            ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "version"],
        )
        (folder / f"{shipped[7].name}.sql").write_text(shipped[7].sql)
        assert migrate(store, package=name) == [shipped[7].name]
        live = store.query(
            "SELECT series_instance_uid, sop_instance_uid, instance_number, metadata"
            " FROM instance_member FINAL WHERE hidden = 0 ORDER BY sop_instance_uid"
        )
        assert live == [("2.1", "9.1", 1, '{"a":1}'), ("2.2", "9.2", 2, '{"a":3}')]
    finally:
        store.close()


def test_an_older_index_keeps_every_row_in_its_finer_grained_tables(
    ddl_package: tuple[str, Path], tmp_path: Path
) -> None:
    """Migration 009 on an index made before it: series_metadata, instance_member
    and instance are made again with smaller granules and hold the same rows,
    every version (ReplacingMergeTree merges them later, as before)."""
    name, folder = ddl_package
    shipped = {m.version: m for m in available()}
    for version in range(1, 9):
        (folder / f"{shipped[version].name}.sql").write_text(shipped[version].sql)
    store = ClickHouseStore(f"chdb://{tmp_path / 'index'}")
    tables = ("series_metadata", "instance_member", "instance")
    try:
        migrate(store, package=name)
        store.insert(
            "series_metadata",
            [["1.1", "2.1", 1, "[]"], ["1.1", "2.1", 2, ""], ["1.1", "2.2", 1, '[{"a":1}]']],
            ["study_instance_uid", "series_instance_uid", "version", "document"],
        )
        instances = [["9.1", "2.1", "1.1", 1, '{"a":1}', 1], ["9.1", "2.2", "1.1", 1, "{}", 2]]
        store.insert(
            "instance",
            instances,
            ["sop_instance_uid", "series_instance_uid", "study_instance_uid",
             "instance_number", "metadata", "version"],
        )  # fmt: skip
        store.insert(
            "instance_member",
            [[r[2], r[1], r[0], r[3], r[4], r[5]] for r in instances],
            ["study_instance_uid", "series_instance_uid", "sop_instance_uid",
             "instance_number", "metadata", "version"],
        )  # fmt: skip
        before = {t: sorted(store.query(f"SELECT * FROM {t}")) for t in tables}
        (folder / f"{shipped[9].name}.sql").write_text(shipped[9].sql)
        assert migrate(store, package=name) == [shipped[9].name]
        assert {t: sorted(store.query(f"SELECT * FROM {t}")) for t in tables} == before
        for table in tables:
            (ddl,) = store.query(
                "SELECT create_table_query FROM system.tables"
                " WHERE database = {db:String} AND name = {t:String}",
                {"db": store.database, "t": table},
            )[0]
            assert "index_granularity_bytes" in ddl
            assert not store.table_exists(f"{table}_009")
        documents = "SELECT document FROM series_metadata FINAL ORDER BY series_instance_uid"
        assert store.query(documents) == [("",), ('[{"a":1}]',)]
    finally:
        store.close()
