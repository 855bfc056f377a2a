"""The owner's index state, shared with its workers (infra.owner_state)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.clickhouse import ClickHouseStore
from infra.migrations import migrate
from infra.owner_state import OwnerState


def test_the_checkpoint_covers_targets_on_the_one_partition_it_tracks() -> None:
    state = OwnerState.create()
    assert not state.covers({0: 1})  # nothing projected yet
    assert state.covers({})
    state.publish_checkpoint({0: 10})
    assert state.covers({0: 10}) and not state.covers({0: 11})
    # Several partitions (Kafka): the shared cell cannot say; ask the owner.
    state.publish_checkpoint({0: 20, 1: 5})
    assert not state.covers({0: 1, 1: 1})
    assert state.covers({0: 10})


def test_a_worker_process_reads_what_the_owner_publishes() -> None:
    state = OwnerState.create()
    state.publish_writes(7, 1)
    state.publish_checkpoint({0: 42})
    state.publish_study_writes(3)
    child = (
        "from infra.owner_state import OwnerState\n"
        "state = OwnerState.from_env()\n"
        "print(state.writes(), state.covers({0: 42}), state.covers({0: 43}),"
        " state.checkpoint(), state.study_writes())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        env={**os.environ, **state.env()},
        pass_fds=(state.fd,),
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.stdout.split("\n")[0] == "(7, 1) True False {0: 42} 3"


def test_without_the_owners_variable_there_is_no_state() -> None:
    assert OwnerState.from_env({}) is None


def test_study_writes_count_inserts_into_study_stats_and_any_statement(tmp_path: Path) -> None:
    """The study memory's clock: what may change study_stats moves it, at a
    write's start and end (like the write counter); other inserts do not."""
    store = ClickHouseStore(f"chdb://{tmp_path / 'index'}")
    state = OwnerState.create()
    try:
        migrate(store)
        store.published = state
        start = store.study_generation
        assert start is not None
        store.insert("checkpoint", [["levels", 0, 1, 1]], CHECKPOINT)
        assert store.study_generation == start
        assert state.study_writes() == 0  # nothing published yet
        store.insert("study_stats", [["1.2", 1]], ["study_instance_uid", "version"])
        assert store.study_generation == start + 2 == state.study_writes()
        store.command("TRUNCATE TABLE study_stats")
        assert store.study_generation == start + 4 == state.study_writes()
    finally:
        store.close()


CHECKPOINT = ["projector", "partition", "next_offset", "version"]
