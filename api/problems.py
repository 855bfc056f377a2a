"""HTTP problem responses (RFC 9457) for every DICOMweb error."""

from __future__ import annotations

import orjson
from fastapi import Response

LAGGING_WARNING = '299 chronicle "projection lagging"'


def problem(
    status: int, title: str, detail: str = "", headers: dict[str, str] | None = None
) -> Response:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def lagging_headers(fresh: bool) -> dict[str, str]:
    """The Warning header DESIGN.md asks for when read-your-writes timed out."""
    return {} if fresh else {"Warning": LAGGING_WARNING}
