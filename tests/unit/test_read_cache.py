"""The embedded index's read cache never answers with rows older than a write."""

from __future__ import annotations

import threading
from pathlib import Path

from infra.factory import open_projection_store
from infra.owner_state import OwnerState
from infra.read_cache import ReadCache


def test_a_repeated_read_is_answered_from_the_cache_with_fresh_dicts() -> None:
    cache = ReadCache()
    calls: list[int] = []

    def run() -> list[dict[str, object]]:
        calls.append(1)
        return [{"a": 1}]

    first = cache.read("q", run)
    first[0]["a"] = 99  # callers annotate rows in place
    assert cache.read("q", run) == [{"a": 1}]
    assert len(calls) == 1 and cache.hits == 1


def test_a_write_invalidates_and_a_read_during_a_write_is_not_kept() -> None:
    cache = ReadCache()
    cache.read("q", lambda: [{"n": 1}])
    cache.write_started()
    assert cache.read("q", lambda: [{"n": 2}]) == [{"n": 2}]
    assert cache.read("q", lambda: [{"n": 3}]) == [{"n": 3}]  # not kept mid-write
    cache.write_finished()
    assert cache.read("q", lambda: [{"n": 4}]) == [{"n": 4}]
    assert cache.read("q", lambda: [{"n": 5}]) == [{"n": 4}]


def test_a_read_that_overlaps_a_write_is_not_kept() -> None:
    cache = ReadCache()
    started, release = threading.Event(), threading.Event()

    def slow() -> list[dict[str, object]]:
        started.set()
        release.wait(5)
        return [{"n": "old"}]

    reader = threading.Thread(target=cache.read, args=("q", slow))
    reader.start()
    started.wait(5)
    cache.write_started()
    cache.write_finished()
    release.set()
    reader.join(5)
    assert cache.read("q", lambda: [{"n": "new"}]) == [{"n": "new"}]


def test_bounds_evict_the_oldest_and_skip_large_answers() -> None:
    cache = ReadCache(max_entries=2, max_rows=3)
    for key in ("a", "b", "c"):
        cache.read(key, lambda key=key: [{"k": key}])
    assert cache.read("a", lambda: [{"k": "again"}]) == [{"k": "again"}]
    big = [{"i": i} for i in range(4)]
    cache.read("big", lambda: big)
    assert cache.read("big", lambda: []) == []


def test_chdb_store_reads_see_every_insert(tmp_path: Path) -> None:
    store = open_projection_store(f"chdb://{tmp_path / 'index'}")
    try:
        store.command("CREATE TABLE t (x UInt32) ENGINE = MergeTree ORDER BY x")
        assert store.query_dicts("SELECT count() AS n FROM t") == [{"n": 0}]
        store.insert("t", [[1], [2]], ["x"])
        assert store.query_dicts("SELECT count() AS n FROM t") == [{"n": 2}]
        store.command("INSERT INTO t SELECT 3")
        assert store.query_dicts("SELECT count() AS n FROM t") == [{"n": 3}]
    finally:
        store.close()


def test_a_cache_following_the_owners_writes_drops_what_it_kept_when_they_change() -> None:
    """A worker's cache (infra.proxy_index) follows the owner's counter in shared memory."""
    state = OwnerState.create()
    cache = ReadCache(follow=state.writes)
    calls: list[int] = []

    def run() -> list[dict[str, object]]:
        calls.append(1)
        return [{"n": len(calls)}]

    assert cache.read("k", run) == [{"n": 1}]
    assert cache.read("k", run) == [{"n": 1}]  # kept
    state.publish_writes(1, 1)  # the owner started a write
    assert cache.read("k", run) == [{"n": 2}]
    assert cache.read("k", run) == [{"n": 3}]  # not kept while it is in progress
    state.publish_writes(2, 0)
    assert cache.read("k", run) == [{"n": 4}]
    assert cache.read("k", run) == [{"n": 4}]


def test_an_answer_read_while_the_owner_wrote_is_not_kept() -> None:
    state = OwnerState.create()
    cache = ReadCache(follow=state.writes)

    def run_across_a_write() -> list[dict[str, object]]:
        state.publish_writes(2, 0)  # a whole write happened meanwhile
        return [{"stale": True}]

    cache.read("k", run_across_a_write)
    assert cache.read("k", lambda: [{"stale": False}]) == [{"stale": False}]
