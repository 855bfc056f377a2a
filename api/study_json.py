"""QIDO-RS study answers written as JSON text, a study at a time.

A million-instance archive answers a date or modality search with hundreds
of studies. Built as dicts, each answer was copied, given its absolute
RetrieveURL, serialised for the read cache and serialised again for the
response, all under the interpreter lock the search threads share. Here each
study's answer is kept as the JSON text the response carries (per return
keys, public base URL and version of the study's statistics row) and a page
is those texts joined: the same bytes `orjson.dumps` makes of the list.
C-FIND and the multipart XML answer still take `api.matching.search_page`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api.matching import answer_getters
from api.query_model import Level, Query, return_keys
from api.query_sql import unpack_answer
from api.study_answers import kept_answers, kept_json, sql_study_rows
from api.study_memory import memory_for
from api.study_snapshot import PATCHED, Snapshot
from infra.ports import ProjectionStore

RETRIEVE_URL = "00081190"


@dataclass(frozen=True, slots=True)
class JsonPage:
    body: bytes  # a DICOM JSON array
    matches: int
    more: bool


def answered_as_json(query: Query) -> bool:
    """Whether `search_studies_json` answers this query (its answers need no
    stored metadata: no includefield of an attribute without a column)."""
    _, tags = return_keys(query)
    return query.level is Level.STUDY and not query.dimse and not tags and not query.include_all


def search_studies_json(
    index: ProjectionStore, query: Query, base: str, snapshot: Snapshot | None = None
) -> JsonPage | None:
    """A study search's page as JSON text, or None when not `answered_as_json`.
    From the study memory's `snapshot` when given (kept under its generation:
    other searches may need newer rows), else from the rows at the current
    write generation."""
    if not answered_as_json(query):
        return None
    columns, _ = return_keys(query)

    def build() -> list[dict[str, Any]]:
        getters = answer_getters(query, columns)
        shape = ("json", tuple(columns), base)
        keys, row_of, more = _page(index, query, snapshot, shape)

        def make(n: int) -> bytes:
            row = row_of(n)
            unpack_answer(row)
            obj = dict(sorted((tag, get(row)) for tag, get in getters))
            return kept_json(absolute_retrieve_url(obj, base))

        parts = kept_answers(index, keys, make)
        return [{"body": b"[" + b",".join(parts) + b"]", "matches": len(parts), "more": more}]

    memo = getattr(index, "memo", None)
    if snapshot is not None and snapshot.generation == PATCHED:
        memo = None  # rows made for this search alone
    key = ("studies_json", query, base, None if snapshot is None else snapshot.generation)
    kept = memo(key, build, _weigh) if memo is not None else build()
    return JsonPage(kept[0]["body"], int(kept[0]["matches"]), bool(kept[0]["more"]))


def _page(
    index: ProjectionStore, query: Query, snapshot: Snapshot | None, shape: tuple[Any, ...]
) -> tuple[list[tuple[Any, ...]], Callable[[int], dict[str, Any]], bool]:
    """The page's kept-answer keys, its n-th row as the SQL search returns it
    (asked only for answers not kept), and whether more follow. From the
    memory's own rows when it answers: no dict per row."""
    memory = memory_for(index)
    found = memory.search_rows(query, snapshot) if memory is not None else None
    if found is not None:
        page, more = found
        return [(shape, r.answer, r.version) for r in page], lambda n: page[n].answer_row(), more
    rows, more = sql_study_rows(index, query)
    return [(shape, r["st__answer"], r["st__version"]) for r in rows], rows.__getitem__, more


def _weigh(rows: list[dict[str, Any]]) -> int:
    return sum(len(row["body"]) + 64 for row in rows)


def absolute_retrieve_url(obj: dict[str, Any], base: str) -> dict[str, Any]:
    """The answer's RetrieveURL (a path below the DICOMweb root) made absolute."""
    url = obj.get(RETRIEVE_URL)
    if url and url.get("Value"):
        obj[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/{url['Value'][0]}"]}
    return obj
