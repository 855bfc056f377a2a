"""The ProjectionStore: ClickHouse SQL over chDB in-process or a ClickHouse server.

Both transports go through clickhouse-connect, so the same SQL and the same
server-side parameters ({name:Type}) run on either. Tables live in one
database (`chronicle` by default) with the Atomic engine, which EXCHANGE
TABLES needs for `chronicle replay`.

Concurrency: a chDB client serialises its calls on one engine handle, but
several clients on the same path share the engine and run queries in
parallel (measured on 2 cores: 4 threads on 4 clients answered 1.1x to 2.2x
more queries per second than 4 threads on one client, depending on how much
of the CPU one query already uses). So the store leases clients from a small
bounded pool, created lazily, one per concurrent caller; a bound rather than
one client per thread, so a 40-thread web worker pool does not open 40
engine handles.

Driver errors stop here: lock and connection trouble become Unavailable,
malformed SQL and bad values become Invalid, anything else Unavailable.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from infra import priority
from infra.errors import Invalid, Unavailable
from infra.owner_state import OwnerState
from infra.read_cache import READ_CACHE_ENV, CachedReads, ReadCache

DEFAULT_DATABASE = "chronicle"
#: How often inserts look for chDB merge threads not yet lowered (`_lower_merges`).
LOWER_MERGES_EVERY_S = 10.0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: Statements that may change a table's columns (the kept insert column types).
_DDL = re.compile(r"\s*(ALTER|CREATE|DROP|EXCHANGE|RENAME|TRUNCATE|ATTACH|DETACH)\b", re.I)

#: ClickHouse error codes that mean "the statement or its values are wrong",
#: i.e. retrying cannot help. Everything else is treated as Unavailable.
_INVALID_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        10,  # NOT_FOUND_COLUMN_IN_BLOCK
        16,  # NO_SUCH_COLUMN_IN_TABLE
        20,  # NUMBER_OF_COLUMNS_DOESNT_MATCH
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        36,  # BAD_ARGUMENTS
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        42,  # NUMBER_OF_ARGUMENTS_DOESNT_MATCH
        43,  # ILLEGAL_TYPE_OF_ARGUMENT
        44,  # ILLEGAL_COLUMN
        46,  # UNKNOWN_FUNCTION
        47,  # UNKNOWN_IDENTIFIER
        50,  # UNKNOWN_TYPE
        53,  # TYPE_MISMATCH
        57,  # TABLE_ALREADY_EXISTS
        60,  # UNKNOWN_TABLE
        62,  # SYNTAX_ERROR
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        81,  # UNKNOWN_DATABASE
        117,  # INCORRECT_DATA
        184,  # ILLEGAL_AGGREGATION
        215,  # NOT_AN_AGGREGATE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        352,  # AMBIGUOUS_COLUMN_NAME
        386,  # NO_COMMON_TYPE
        456,  # UNKNOWN_QUERY_PARAMETER
        457,  # BAD_QUERY_PARAMETER
    }
)


def _without_pandas() -> None:
    """Tell clickhouse-connect there is no pandas to check inserts against.

    It imports pandas lazily on the first insert, to ask whether the rows are a
    DataFrame (ours never are): 0.4-1 s of import inside the projector's first
    batch, while the first stores of a fresh server were being received (seen
    in a py-spy profile of C-STORE at 100k), and ~60 MB more per process.
    Only for a process that has not imported pandas for its own use."""
    from clickhouse_connect.driver import options

    if "pandas" not in sys.modules:
        options.__dict__.setdefault("pd", None)
        options.__dict__.setdefault("pd_time_test", None)


def check_identifier(name: str, what: str = "table") -> str:
    """Table and database names are spliced into SQL, so they must be plain."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise Invalid(f"{what} name {name!r} is not a plain identifier")
    return name


#: The table the study memory follows (`study_generation`).
STUDY_TABLE = "study_stats"


class ClickHouseStore:
    """`infra.ports.ProjectionStore` for `chdb:///abs/path` or `http(s)://host:port/db`."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        _without_pandas()
        self.url = url
        connect, self.database, self._where = _connector(url)
        self._connect = connect
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, pool_size))
        self._idle: list[Client] = []
        self._clients: list[Client] = []
        self._closed = False
        self._writes = 0
        #: Writes that may change study_stats (its inserts, and any statement).
        self._study_writes = 0
        # Embedded only: there every write goes through this object (read_cache.py).
        # CHRONICLE_READ_CACHE=0 turns it off (benchmarks measure both ways).
        cached = url.startswith("chdb:") and os.environ.get(READ_CACHE_ENV, "1") != "0"
        self._cache = ReadCache() if cached else None
        self._reads = CachedReads(self._cache)
        #: chDB's merge threads lowered so far (`_lower_merges`), and when last looked.
        self._lowered: set[int] = set()
        self._lowered_at = -LOWER_MERGES_EVERY_S
        self._in_progress = 0
        # Column types per (table, columns): clickhouse-connect otherwise runs a
        # DESCRIBE TABLE before every insert, one more statement per table per
        # projector batch (~1 ms each on chDB, plus parsing its answer).
        self._column_types: dict[tuple[str, tuple[str, ...]], Sequence[Any]] = {}
        #: The owner's workers follow its writes here (infra.owner_state).
        self.published: OwnerState | None = None
        first = self._open_client(database=None)
        try:
            self._ensure_database(first)
        except BaseException:
            first.close()
            raise
        first.database = self.database
        self._idle.append(first)

    # -- the port ---------------------------------------------------------------

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        if _DDL.match(sql):
            self._column_types.clear()
        with self._writing(study=True), self._lease() as client:
            client.command(sql, parameters=dict(parameters) if parameters else None)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lease() as client:
            result = client.query(sql, parameters=dict(parameters) if parameters else None)
            return [tuple(row) for row in result.result_rows]

    def query_dicts(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return self._reads.statement(sql, parameters, lambda: self._query_dicts(sql, parameters))

    def memo(
        self,
        key: Hashable,
        build: Callable[[], list[dict[str, Any]]],
        weigh: Callable[[list[dict[str, Any]]], int],
    ) -> list[dict[str, Any]]:
        """`build()`, kept like a statement's rows until the next write when the
        read cache is on (fresh top-level dicts per call); else built every time."""
        return self._reads.memo(key, build, weigh)

    def _query_dicts(self, sql: str, parameters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        with self._lease() as client:
            result = client.query(sql, parameters=dict(parameters) if parameters else None)
            return list(result.named_results())

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        check_identifier(table)
        for column in column_names:
            check_identifier(column, "column")
        if not rows:
            return
        key = (table, tuple(column_names))
        with self._writing(study=table == STUDY_TABLE), self._lease() as client:
            try:
                types = self._column_types.get(key)
                if types is None:
                    context = client.create_insert_context(table, list(column_names))
                    types = self._column_types[key] = context.column_types
                client.insert(
                    table, list(rows), column_names=list(column_names), column_types=types
                )
                self._lower_merges()
            except (TypeError, ValueError, OverflowError) as exc:
                self._column_types.pop(key, None)
                # The native encoder rejects values that do not fit the column type.
                raise Invalid(f"rows for {table} do not fit its columns: {exc}") from exc
            except BaseException:
                # A table changed under us (another process migrated or swapped it):
                # the retry asks for its columns again.
                self._column_types.pop(key, None)
                raise

    def _lower_merges(self) -> None:
        """In-process chDB merges the parts inserts make on threads of its own:
        background work (infra.priority). Looked for after inserts, now and then,
        since the pool starts its threads as merges come."""
        now = time.monotonic()
        if not self.url.startswith("chdb:") or now - self._lowered_at < LOWER_MERGES_EVERY_S:
            return
        self._lowered_at = now
        priority.lower_threads_named(priority.CHDB_BACKGROUND_THREADS, self._lowered)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients, self._idle = self._clients, [], []
        for client in clients:
            client.close()

    # -- helpers for migrations and replay ----------------------------------------

    def table_exists(self, name: str) -> bool:
        rows = self.query(
            "SELECT count() FROM system.tables"
            " WHERE database = {db:String} AND name = {name:String}",
            {"db": self.database, "name": check_identifier(name)},
        )
        return bool(rows[0][0])

    def exchange_tables(self, a: str, b: str) -> None:
        """Atomically swap two tables' contents (replay swaps `x_new` into `x`)."""
        self.command(f"EXCHANGE TABLES {self._qualified(a)} AND {self._qualified(b)}")

    def drop_table(self, name: str) -> None:
        # SYNC frees the data now instead of after the Atomic engine's delay.
        self.command(f"DROP TABLE IF EXISTS {self._qualified(name)} SYNC")

    def _qualified(self, name: str) -> str:
        return f"`{self.database}`.`{check_identifier(name)}`"

    # -- clients -----------------------------------------------------------------

    @property
    def generation(self) -> int | None:
        """A number that changes with every write made through this store, or None
        when others may write too (a ClickHouse server): what may be memoised."""
        return self._writes if self.url.startswith("chdb:") else None

    @property
    def study_generation(self) -> int | None:
        """Like `generation`, counting only the writes that may change study_stats:
        the study memory's clock (api.study_memory). A projector batch makes
        ~10 writes and one of them to study_stats; a search refreshing its
        memory after each of them ran one statement per write instead of per batch."""
        return self._study_writes if self.url.startswith("chdb:") else None

    @contextmanager
    def _writing(self, *, study: bool = False) -> Iterator[None]:
        self._counted(+1, study)
        if self._cache is not None:
            self._cache.write_started()
        try:
            yield
        finally:
            self._counted(-1, study)
            if self._cache is not None:
                self._cache.write_finished()

    def _counted(self, step: int, study: bool) -> None:
        # Counted at a write's start and at its end, like `_writes`: what was
        # read while it ran is older than either count.
        with self._lock:
            self._writes += 1
            self._in_progress += step
            if study:
                self._study_writes += 1
            if self.published is not None:
                self.published.publish_writes(self._writes, self._in_progress)
                if study:
                    self.published.publish_study_writes(self._study_writes)

    @contextmanager
    def _lease(self) -> Iterator[Client]:
        """A client for this thread's call; errors are translated on the way out."""
        with self._slots:
            with self._lock:
                if self._closed:
                    raise Unavailable(f"the index at {self._where} is closed")
                client = self._idle.pop() if self._idle else None
            if client is None:
                client = self._open_client(database=self.database)
            try:
                yield client
            except ClickHouseError as exc:
                self._fail(exc)
            finally:
                with self._lock:
                    if self._closed:
                        client.close()
                    else:
                        self._idle.append(client)

    def _open_client(self, database: str | None) -> Client:
        try:
            client = self._connect(database)
        except ClickHouseError as exc:
            self._fail(exc)
        with self._lock:
            self._clients.append(client)
        return client

    def _ensure_database(self, client: Client) -> None:
        try:
            exists = client.command(
                "SELECT count() FROM system.databases WHERE name = {db:String}",
                parameters={"db": self.database},
            )
            if not int(str(exists)):
                # Atomic: EXCHANGE TABLES needs it (chDB's default engine is not).
                client.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}` ENGINE = Atomic")
        except ClickHouseError as exc:
            self._fail(exc)

    def _fail(self, exc: ClickHouseError) -> NoReturn:
        raise translate_error(exc, self._where) from exc


def translate_error(exc: ClickHouseError, where: str) -> Unavailable | Invalid:
    """Map a clickhouse-connect / chDB exception onto infra.errors."""
    message = str(exc)
    if "Error initializing EmbeddedServer" in message or "Cannot lock file" in message:
        return Unavailable(
            f"the index at {where} is held by another process; "
            "is `chronicle serve` running? stop it or use --url"
        )
    if "EmbeddedServer already initialized with path" in message:
        return Unavailable(
            f"cannot open the index at {where}: this process already has another chDB "
            "index open (chDB serves one data directory per process)"
        )
    if isinstance(exc, OperationalError):
        return Unavailable(f"the index at {where} is unavailable: {message}")
    code = getattr(exc, "code", None)
    if code in _INVALID_CODES or isinstance(exc, DataError):
        return Invalid(message)
    if isinstance(exc, ProgrammingError) and code is None:
        return Invalid(message)
    return Unavailable(f"the index at {where} failed: {message}")


# -- URLs ------------------------------------------------------------------------

Connector = Callable[[str | None], Client]


def _connector(url: str) -> tuple[Connector, str, str]:
    """(make a client for a database or None, database name, where for messages)."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        path = unquote(parts.path)
        if parts.netloc or not os.path.isabs(path):
            raise Invalid(f"index URL {url!r} must be chdb:///absolute/path")

        def chdb_client(database: str | None) -> Client:
            return clickhouse_connect.get_client(dsn=f"chdb://{path}", database=database)

        return chdb_client, DEFAULT_DATABASE, path
    if parts.scheme in ("http", "https"):
        kwargs = http_client_args(url)
        database = str(kwargs.pop("database"))

        def http_client(db: str | None) -> Client:
            return clickhouse_connect.get_client(database=db, **kwargs)

        return http_client, database, f"{parts.hostname}:{kwargs['port']}/{database}"
    raise Invalid(f"index URL {url!r}: expected chdb:///path or http(s)://host:port/db")


def http_client_args(url: str) -> dict[str, Any]:
    """clickhouse-connect arguments for http(s)://[user[:password]@]host[:port][/db]."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise Invalid(f"index URL {url!r} has no host")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError as exc:
        raise Invalid(f"index URL {url!r} has a bad port") from exc
    database = unquote(parts.path.strip("/")) or DEFAULT_DATABASE
    return {
        "host": parts.hostname,
        "port": port,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "secure": secure,
        "interface": parts.scheme,
        "database": check_identifier(database, "database"),
        # Leased clients are used by one thread at a time; a shared server
        # session would make concurrent queries fail with "session is locked".
        "autogenerate_session_id": False,
    }
