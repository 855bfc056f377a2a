"""ProjectionStore over loopback HTTP to the process that owns the index.

chDB locks its data directory to one process. Front-end worker processes
(extra DIMSE and HTTP processes that use every core) read the projections
through the owner's internal endpoint instead: the same SQL, the same
parameters, read-only. URL: `owner+http://127.0.0.1:PORT` with the shared
secret in CHRONICLE_INTERNAL_TOKEN.

With the owner's state in shared memory (infra.owner_state) a worker keeps
statement rows and whole answers (`memo`) like the owner does, until the
owner's next write, and skips the round trip of a read-your-writes wait the
owner's checkpoint already covers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from infra.errors import Invalid, NotFound, Unavailable
from infra.owner_state import OwnerState
from infra.read_cache import READ_CACHE_ENV, CachedReads, ReadCache

TOKEN_HEADER = "X-Chronicle-Token"


class OwnerProjectionStore:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 60.0,
        state: OwnerState | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token if token is not None else os.environ.get("CHRONICLE_INTERNAL_TOKEN", "")
        self._client = httpx.Client(timeout=timeout, headers={TOKEN_HEADER: self._token})
        self._state = state
        cached = state is not None and os.environ.get(READ_CACHE_ENV, "1") != "0"
        self._reads = CachedReads(ReadCache(follow=state.writes) if cached and state else None)

    @property
    def generation(self) -> int | None:
        """The owner's write counter, when shared (see ClickHouseStore.generation)."""
        return self._state.writes()[0] if self._state is not None else None

    @property
    def study_generation(self) -> int | None:
        """The owner's study_stats write counter (see ClickHouseStore.study_generation)."""
        return self._state.study_writes() if self._state is not None else None

    def memo(
        self,
        key: Hashable,
        build: Callable[[], list[dict[str, Any]]],
        weigh: Callable[[list[dict[str, Any]]], int],
    ) -> list[dict[str, Any]]:
        return self._reads.memo(key, build, weigh)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        try:
            try:
                response = self._send(path, content)
            except httpx.TimeoutException:
                raise
            except httpx.TransportError:
                # A pooled connection the owner closed as this request went out
                # (a reset, or no answer at all). Every call here only reads,
                # so it is sent once more, on a new connection.
                response = self._send(path, content)
        except httpx.HTTPError as exc:
            raise Unavailable(f"index owner at {self._base} unreachable: {exc}") from exc
        if response.status_code == 400:
            raise Invalid(response.text)
        if response.status_code == 404:
            raise NotFound(response.text)
        if response.status_code != 200:
            raise Unavailable(f"index owner answered {response.status_code}: {response.text[:300]}")
        return orjson.loads(response.content)

    def _send(self, path: str, content: bytes) -> httpx.Response:
        return self._client.post(
            f"{self._base}{path}", content=content, headers={"Content-Type": "application/json"}
        )

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        rows = self._post("/internal/query", {"sql": sql, "parameters": dict(parameters or {})})
        return [tuple(row) for row in rows["rows"]]

    def query_dicts(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return self._reads.statement(sql, parameters, lambda: self._query_dicts(sql, parameters))

    def _query_dicts(self, sql: str, parameters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        answer = self._post("/internal/query", {"sql": sql, "parameters": dict(parameters or {})})
        names = answer["columns"]
        return [dict(zip(names, row, strict=True)) for row in answer["rows"]]

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        raise Invalid("a front-end worker reads the index; it never writes to it")

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        raise Invalid("a front-end worker reads the index; it never writes to it")

    def wait(self, target: Mapping[int, int], timeout: float) -> bool:
        """Read-your-writes through the owner's projector."""
        if self._state is not None and self._state.covers(target):
            return True
        answer = self._post(
            "/internal/wait", {"target": {str(p): o for p, o in target.items()}, "timeout": timeout}
        )
        return bool(answer["fresh"])

    def checkpoint(self) -> dict[int, int]:
        if self._state is not None:  # published by the owner as it moves
            return self._state.checkpoint()
        answer = self._post("/internal/checkpoint", {})
        return {int(p): int(o) for p, o in answer["checkpoint"].items()}

    def close(self) -> None:
        self._client.close()
