"""Numbered ClickHouse migrations: schemas/ddl/NNN_name.sql, applied in order.

Each file may hold several statements separated by ';'. `{suffix}` in a file
is replaced by the suffix: '' for the live tables, e.g. '_new' while
`chronicle replay` builds fresh tables beside them. Only the live set is
recorded in `schema_migrations`, so a rebuild applies every file to its fresh
tables, and a restart applies only what the live tables lack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from infra.errors import Invalid
from infra.ports import ProjectionStore

_FILE_NAME = re.compile(r"(\d+)_[A-Za-z0-9_]+\.sql")
_SUFFIX = re.compile(r"[A-Za-z0-9_]*")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name without .sql, e.g. "001_levels"
    sql: str

    def statements(self, suffix: str = "") -> list[str]:
        return split_statements(self.sql.replace("{suffix}", suffix))


def available(package: str = "schemas") -> list[Migration]:
    """The migrations shipped as package data, in version order."""
    found: dict[int, Migration] = {}
    for entry in (resources.files(package) / "ddl").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise Invalid(f"two migrations share version {version}: {entry.name}")
        found[version] = Migration(version, entry.name[:-4], entry.read_text("utf-8"))
    return [found[version] for version in sorted(found)]


def migrate(store: ProjectionStore, suffix: str = "", *, package: str = "schemas") -> list[str]:
    """Apply what is missing; return the names applied (e.g. ["001_levels"])."""
    if not _SUFFIX.fullmatch(suffix):
        raise Invalid(f"table suffix {suffix!r} must be letters, digits and '_'")
    migrations = available(package)
    done: set[int] = set()
    if suffix == "":
        store.command(_LEDGER)
        done = {int(row[0]) for row in store.query("SELECT version FROM schema_migrations FINAL")}
    applied: list[str] = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements(suffix):
            store.command(statement)
        if suffix == "":
            store.insert(
                "schema_migrations", [[migration.version, migration.name]], ["version", "name"]
            )
        applied.append(migration.name)
    return applied


def split_statements(sql: str) -> list[str]:
    """Split on ';' outside quotes and comments; drop comments that lead a statement.

    A ';' inside a '-- comment', a /* block */ or a quoted string or
    identifier does not end a statement.
    """
    statements: list[str] = []
    start: int | None = None  # where the current statement's first token begins
    i, n = 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            i = _skip_to(sql, "\n", i + 2)
        elif sql.startswith("/*", i):
            i = _skip_to(sql, "*/", i + 2)
        elif sql[i] == ";":
            if start is not None:
                statements.append(sql[start:i].strip())
            start, i = None, i + 1
        elif sql[i].isspace():
            i += 1
        else:
            start = i if start is None else start
            i = _skip_quoted(sql, i) if sql[i] in "'\"`" else i + 1
    if start is not None:
        statements.append(sql[start:].strip())
    return statements


def _skip_to(sql: str, end: str, i: int) -> int:
    found = sql.find(end, i)
    return len(sql) if found < 0 else found + len(end)


def _skip_quoted(sql: str, i: int) -> int:
    quote, i = sql[i], i + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql.startswith(quote * 2, i):  # a doubled quote is an escaped quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise Invalid("unterminated quoted text in a migration")
