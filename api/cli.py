"""The `chronicle` command: serve, import, replay, check."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from api import commands, conflicts_cli, print_cli, scu
from infra.errors import ChronicleError
from infra.settings import Settings, load_settings

_COMMON_URLS = (
    ("--log-url", "event log URL (sqlite:///abs/path or kafka://broker:9092/topic)"),
    ("--blob-url", "blob store URL (file:///abs/path or s3://bucket/prefix?endpoint_url=...)"),
    ("--index-url", "projection store URL (chdb:///abs/path or http://host:8123/db)"),
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data folder; derives the three URLs (default ./data)")
    parser.add_argument("--config", help="TOML config file (flags > CHRONICLE_* env > file)")
    for flag, text in _COMMON_URLS:
        parser.add_argument(flag, help=text)
    parser.add_argument("--site", help="ingest site id recorded in every event")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


#: More subcommands, each from its own module: `add_parser(subparsers, common)`
#: adds a parser (calling `common(parser)` for the shared options) and sets
#: `run=function(settings, args) -> int` as its default.
SUBCOMMANDS: list[Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]] = [
    print_cli.add_parser,
    scu.add_parsers,
    conflicts_cli.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chronicle",
        description="Chronicle: an event-sourced DICOM archive (DIMSE + DICOMweb).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run DIMSE + DICOMweb + projector in one process")
    _common(serve)
    serve.add_argument("--http-host", help="DICOMweb bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="DICOMweb port (default 8080)")
    serve.add_argument("--dimse-host", help="DIMSE bind address (default 127.0.0.1)")
    serve.add_argument("--dimse-port", type=int, help="DIMSE port (default 11112)")
    serve.add_argument("--ae-title", help="our AE title (default CHRONICLE)")
    serve.add_argument(
        "--remote-ae",
        action="append",
        dest="remote_aes",
        metavar="TITLE@HOST:PORT",
        help="a known remote AE (repeatable); when any is set only they may associate",
    )
    serve.add_argument(
        "--accept-any-caller",
        action="store_true",
        default=None,
        help="accept associations from any calling AE title",
    )
    serve.add_argument("--public-url", help="base URL used in RetrieveURL behind a proxy")
    serve.add_argument(
        "--workers",
        type=int,
        help="front-end processes sharing the DIMSE and HTTP ports (default 0: one per "
        "core, at most 8; 1: a single process)",
    )
    serve.add_argument(
        "--role",
        action="append",
        dest="roles",
        metavar="ROLE[,ROLE]",
        help="what this process runs: ingest, projector, api, comma-separated or repeated "
        "(default all three; env CHRONICLE_ROLES)",
    )

    imp = sub.add_parser("import", help="bulk-load DICOM files and folders")
    _common(imp)
    imp.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    imp.add_argument("--url", help="send through STOW-RS to a running server at this base URL")

    rep = sub.add_parser("replay", help="rebuild every projection from the event log")
    _common(rep)

    chk = sub.add_parser("check", help="verify every event's blob; list orphan blobs")
    _common(chk)
    chk.add_argument("--quick", action="store_true", help="check existence and size, not hashes")
    for add_parser in SUBCOMMANDS:
        add_parser(sub, _common)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return load_settings(flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    if not args.verbose:
        # pynetdicom logs several lines per request at INFO: ~5-10% of C-STORE time.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _fewer_malloc_arenas()
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"chronicle: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        handler = getattr(args, "run", None) or getattr(commands, f"cmd_{args.command}")
        code: int = handler(settings, args)
        return code
    except ChronicleError as exc:
        print(f"chronicle {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates concurrently its own heap arena (up
    to 8 per core), and freed memory stays spread over them: with a dozen
    threads (associations, projector, inserts, web) two arenas held a 1M-instance
    soak's resident memory ~25-40 MiB lower at the same throughput. The usual
    MALLOC_ARENA_MAX=2, set from inside: an environment variable would have to
    be set before the interpreter starts. Not glibc: nothing to do."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # the operator's choice
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # malloc.h


if __name__ == "__main__":
    sys.exit(main())
