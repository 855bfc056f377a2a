"""ClickHouseStore beyond the port contract: URLs, error mapping, locks, the client pool."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from infra.clickhouse import ClickHouseStore, http_client_args, translate_error
from infra.errors import Invalid, Unavailable

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from infra.clickhouse import ClickHouseStore
store = ClickHouseStore(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
store.close()
"""

CONTENDER = """
import sys
from infra.clickhouse import ClickHouseStore
from infra.errors import Unavailable
try:
    ClickHouseStore(sys.argv[1]).close()
    print("opened")
except Unavailable as exc:
    print(exc)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    opened = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('index')}", pool_size=2)
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DatabaseError("Code: 62. DB::Exception: Syntax error", code=62), Invalid),
        (DatabaseError("Code: 53. DB::Exception: Type mismatch", code=53), Invalid),
        (DatabaseError("Code: 457. Value abc cannot be parsed", code=457), Invalid),
        (DataError("cannot convert"), Invalid),
        (ProgrammingError("Unrecognized column 'x' in table t"), Invalid),
        (DatabaseError("Code: 241. Memory limit exceeded", code=241), Unavailable),
        (DatabaseError("Code: 243. Not enough space", code=243), Unavailable),
        (OperationalError("Connection refused"), Unavailable),
        (DatabaseError("something odd"), Unavailable),
    ],
)
def test_driver_errors_map_onto_the_error_tree(
    error: DatabaseError, expected: type[Exception]
) -> None:
    assert type(translate_error(error, "/data/index")) is expected


def test_a_held_lock_names_the_likely_cause() -> None:
    error = ProgrammingError(
        "Unable to open the chdb engine at '/d/index': Failed to create connection: "
        "Code: 36. DB::Exception: Error initializing EmbeddedServer: . (BAD_ARGUMENTS)"
    )
    translated = translate_error(error, "/d/index")
    assert isinstance(translated, Unavailable)
    assert "held by another process" in str(translated) and "--url" in str(translated)


def test_http_urls_become_client_arguments() -> None:
    args = http_client_args("https://reader:p%40ss@ch.example/analytics")
    assert args["host"] == "ch.example" and args["port"] == 8443 and args["secure"] is True
    assert (args["username"], args["password"]) == ("reader", "p@ss")
    assert args["database"] == "analytics" and args["interface"] == "https"
    plain = http_client_args("http://127.0.0.1:9123")
    assert (plain["port"], plain["database"], plain["secure"]) == (9123, "chronicle", False)
    assert plain["username"] is None and plain["password"] == ""


@pytest.mark.parametrize(
    "url",
    ["http:///nohost", "http://h:99999/db", "http://h/bad-db-name", "chdb://relative/path", "x://"],
)
def test_bad_urls_are_invalid(url: str) -> None:
    with pytest.raises(Invalid):
        ClickHouseStore(url)


def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(Unavailable):
        ClickHouseStore(f"http://127.0.0.1:{port}/chronicle")


def test_the_pool_never_exceeds_its_size(store: ClickHouseStore) -> None:
    barrier = threading.Barrier(6)
    answers: list[object] = []

    def ask(n: int) -> None:
        barrier.wait()
        answers.append(store.query("SELECT {n:UInt8} + sleep(0.02)", {"n": n}))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [[(n,)] for n in range(6)]  # type: ignore[type-var]
    assert len(store._clients) <= 2


def test_tables_live_in_an_atomic_chronicle_database(store: ClickHouseStore) -> None:
    assert store.database == "chronicle"
    assert store.query("SELECT currentDatabase()") == [("chronicle",)]
    assert store.query(
        "SELECT engine FROM system.databases WHERE name = {db:String}", {"db": "chronicle"}
    ) == [("Atomic",)]


def test_a_second_index_path_in_one_process_is_unavailable(
    store: ClickHouseStore, tmp_path: Path
) -> None:
    with pytest.raises(Unavailable, match="one data directory per process"):
        ClickHouseStore(f"chdb://{tmp_path / 'other'}")


def test_a_closed_store_is_unavailable(store: ClickHouseStore) -> None:
    second = ClickHouseStore(store.url)  # same path: shares the engine
    second.close()
    with pytest.raises(Unavailable, match="closed"):
        second.query("SELECT 1")
    assert store.query("SELECT 1") == [(1,)], "closing one store leaves the other working"


def python(script: str, *args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # chDB prints the lock failure there too
    )


def test_an_index_held_by_another_process_is_unavailable(tmp_path: Path) -> None:
    # Both sides run in child processes: this one may hold chDB elsewhere.
    url = f"chdb://{tmp_path / 'held'}"
    holder = python(HOLDER, url, stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        refused = python(CONTENDER, url).communicate(timeout=60)[0]
        assert b"held by another process" in refused and b"--url" in refused, refused
    finally:
        holder.communicate(b"\n", timeout=60)
    # The lock goes with the process that held it.
    opened = python(CONTENDER, url).communicate(timeout=60)[0]
    assert opened == b"opened\n"


def test_inserting_rows_never_imports_pandas(tmp_path: Path) -> None:
    """clickhouse-connect would import pandas (0.4-1 s, ~60 MB) at the first insert
    to ask whether the rows are a DataFrame; the projector's never are."""
    script = (
        "import sys\n"
        "from infra.factory import open_projection_store\n"
        f"store = open_projection_store('chdb://{tmp_path / 'index'}')\n"
        "store.command('CREATE TABLE t (x UInt32, y String) ENGINE = MergeTree ORDER BY x')\n"
        "store.insert('t', [[1, 'a'], [2, 'b']], ['x', 'y'])\n"
        "assert store.query('SELECT count() FROM t') == [(2,)]\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == "False"
