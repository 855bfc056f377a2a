"""`chronicle conflicts`: list SOP Instance UIDs kept with different datasets.

Where the report comes from:
- embedded (default): the archive's own stores, opened directly. chDB admits
  one process per data directory, so this fails with a clear message while a
  server holds it; projections are first brought up to the log end, so what
  was stored last is reported too.
- `--url http://server:port`: a running server's `GET /admin/conflicts`.

Both print the same report; `--json` prints it as the endpoint's JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from infra.errors import Invalid, Unavailable
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.settings import Settings
from projections.conflicts import DEFAULT_LIMIT, MAX_LIMIT, check_page, list_conflicts
from projections.runner import Projector

HTTP_TIMEOUT = 60.0


def add_parser(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = subparsers.add_parser(
        "conflicts",
        help="list SOP Instance UIDs kept with different datasets (multi-site conflicts)",
    )
    common(parser)
    parser.add_argument("--url", help="ask the running server at this base URL")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"conflicts per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
    )
    parser.add_argument("--offset", type=int, default=0, help="conflicts to skip (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    check_page(args.limit, args.offset)
    if args.url:
        report = fetch_report(args.url, args.limit, args.offset)
    else:
        report = embedded_report(settings, args.limit, args.offset)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(report))
    return 0


def embedded_report(settings: Settings, limit: int, offset: int) -> dict[str, Any]:
    """The report from the stores themselves, projected up to the log end first."""
    try:
        index = open_projection_store(settings.index_url)
    except Unavailable as exc:
        raise Unavailable(f"{exc} (e.g. --url http://127.0.0.1:8080)") from exc
    try:
        event_log = open_event_log(settings.log_url)
        try:
            blobs = open_blob_store(settings.blob_url)
            try:
                Projector(event_log, index, blobs=blobs).run_until(event_log.end())
            finally:
                blobs.close()
        finally:
            event_log.close()
        return list_conflicts(index, limit=limit, offset=offset).to_json()
    finally:
        index.close()


def fetch_report(base_url: str, limit: int, offset: int) -> dict[str, Any]:
    url = base_url.rstrip("/") + "/admin/conflicts"
    try:
        response = httpx.get(url, params={"limit": limit, "offset": offset}, timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        raise Unavailable(f"GET {url} failed: {exc}") from exc
    if response.status_code == 400:
        raise Invalid(f"{url}: {response.text[:300]}")
    if response.status_code != 200:
        raise Unavailable(f"{url} answered {response.status_code}: {response.text[:300]}")
    if response.headers.get("Warning"):
        # The server answered before its projections caught up: say so, as QIDO does.
        print(f"warning: {response.headers['Warning']}", file=sys.stderr)
    report: dict[str, Any] = response.json()
    return report


def render(report: dict[str, Any]) -> str:
    """The report for a terminal: one block per UID, versions in log order."""
    lines: list[str] = []
    for conflict in report["conflicts"]:
        versions = conflict["versions"]
        lines.append(f"{conflict['sop_instance_uid']}  ({len(versions)} versions)")
        for version in versions:
            lines.append(_version_line(version))
    shown = len(report["conflicts"])
    lines.append(f"conflicts shown: {shown} (from offset {report['offset']})")
    if report["more"]:
        lines.append(f"more follow: --offset {report['offset'] + shown}")
    return "\n".join(lines)


def _version_line(version: dict[str, Any]) -> str:
    state = "current" if version["current"] else "older  "
    again = len(version["receipts"]) - 1
    parts = [
        f"  {state} sha256 {version['dataset_sha256']}",
        f"site {version['site'] or '-'}",
        f"AE {version['calling_ae'] or '-'}",
        f"received {version['received_at']}",
        f"log {version['partition']}:{version['offset']}",
        f"study {version['study_instance_uid']}",
        f"series {version['series_instance_uid']}",
    ]
    if again:
        parts.append(f"(received {again} more time{'s' if again > 1 else ''})")
    return "  ".join(parts)
