"""Study answers: a study search's page rows and each study's answer, kept.

`study_rows` takes a study search's rows from the process's study memory, or
by SQL. Each study's answer (DICOM JSON, per return keys and version of its
statistics row) is kept per store as JSON text (`kept_answers`), for C-FIND and
QIDO-RS's multipart XML (`study_answers`, parsed back per caller) and for
QIDO-RS's JSON pages (api.study_json, joined as they are).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar, cast

import orjson

from api.query_model import Query
from api.query_sql import search_sql, unpack_answer
from api.study_memory import memory_for
from api.study_snapshot import Snapshot
from infra.ports import ProjectionStore

#: How an answered attribute is read from a page row (api.matching).
Getter = Callable[[dict[str, Any]], dict[str, Any]]


def study_rows(
    index: ProjectionStore, query: Query, snapshot: Snapshot | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """A study search's page rows (packed answer, version, aggregates) and whether
    more follow: from the process's study memory (`snapshot` when given), or by
    SQL (api.study_memory)."""
    memory = memory_for(index)
    found = memory.search(query, snapshot) if memory is not None else None
    if found is not None:
        return found
    return sql_study_rows(index, query)


def sql_study_rows(index: ProjectionStore, query: Query) -> tuple[list[dict[str, Any]], bool]:
    """`study_rows` by SQL."""
    sql, params = search_sql(query)
    rows = index.query_dicts(sql, params)
    return rows[: query.limit], len(rows) > query.limit


def study_answers(
    index: ProjectionStore,
    rows: list[dict[str, Any]],
    columns: list[str],
    getters: list[tuple[str, Getter]],
    dimse: bool,
) -> list[dict[str, Any]]:
    """Study answers, each built once per version of its statistics row.

    Building a study's DICOM JSON costs ~40 us in Python, under the interpreter
    lock every search thread shares: at a million instances a name or date
    search matches hundreds of studies. A study's row (attributes and
    aggregates) changes only with a new statistics version, so its answer for
    the same return keys is kept, as JSON text: a bytes object the cycle
    collector never walks, ~1 KB against ~6 KB of dicts, and parsed back in
    ~4 us (each caller gets its own objects). The packed attributes (which
    begin with the Study Instance UID) key it, so a kept answer is found
    without unpacking them."""
    shape = (tuple(columns), dimse)

    def make(n: int) -> bytes:
        unpack_answer(rows[n])
        return kept_json(dict(sorted((tag, get(rows[n])) for tag, get in getters)))

    keys = [(shape, row["st__answer"], row["st__version"]) for row in rows]
    return [orjson.loads(text) for text in kept_answers(index, keys, make)]


def kept_json(obj: Any) -> bytes:
    """`orjson.dumps(obj)` in a bytes object of its own length, for keeping:
    orjson's own holds at least 4 KB (a kept 900-byte study answer cost 8 KB,
    ~160 MiB per process for 20,000 of them)."""
    return bytes(memoryview(orjson.dumps(obj)))


def kept_answers(
    index: ProjectionStore, keys: list[tuple[Any, ...]], make: Callable[[int], T]
) -> list[T]:
    """The store's kept study answers under `keys`; `make(n)` makes the n-th
    where none is kept (and it is kept). One lock for the page's lookups."""
    kept = _rendered(index)
    with _RENDERED_LOCK:
        found = [kept.get(key) for key in keys]
        for key, answer in zip(keys, found, strict=True):
            if answer is not None:
                kept.move_to_end(key)
    missing = {n: make(n) for n, answer in enumerate(found) if answer is None}
    if missing:
        with _RENDERED_LOCK:
            for n, answer in missing.items():
                kept[keys[n]] = found[n] = answer
            while len(kept) > RENDERED_MAX:
                kept.popitem(last=False)
    return cast(list[T], found)


T = TypeVar("T")
Rendered = OrderedDict[tuple[Any, ...], Any]


def _rendered(index: ProjectionStore) -> Rendered:
    """The store's kept answers (a fresh dict, kept nowhere, for an unhashable store)."""
    try:
        return _RENDERED.setdefault(index, OrderedDict())
    except TypeError:
        return OrderedDict()


#: Per store, least recently used first: rendered study answers by (return
#: keys, DIMSE? or the base of JSON text, packed attributes, version of the
#: study's statistics row), as JSON text of ~1 KB: 10,000 of each kind (every
#: study of a 1M-instance archive, for C-FIND and for QIDO-RS) hold ~20 MiB.
_RENDERED: weakref.WeakKeyDictionary[Any, Rendered] = weakref.WeakKeyDictionary()
RENDERED_MAX = 20_000
_RENDERED_LOCK = threading.Lock()
