"""`chronicle send` and `chronicle echo`: Chronicle as Storage SCU and Verification SCU.

    chronicle send UID... --to TITLE@HOST:PORT [--url http://host:port] [--ae-title T]
    chronicle echo TITLE@HOST:PORT [--ae-title T]

`send` finds what each UID names (a study, else a series, else an instance),
then C-STOREs every instance over one association (`api.dimse.peer`), with
the contexts and the as-stored/decoded choice C-MOVE uses
(`retrieve.storage_contexts`, `retrieve.choose_delivery`). It reads the
embedded store directly when no server holds it (catching the projection up
first), or, given `--url`, a running server's DICOMweb API: QIDO-RS to list
the instances, WADO-RS with transfer-syntax=* to fetch each as stored (to a
temporary folder first: the contexts need every stored syntax up front).
A progress bar runs on stderr; the summary goes to stdout; the exit status is
1 when any instance failed or any UID named nothing. `echo` prints the C-ECHO
status and round-trip time.

`stage`/`finish` (one instance made ready, then sent), `SubOutcome` and
`Tally` are the per-instance C-STORE and its accounting, shared with the
C-MOVE and C-GET SCPs (api/dimse/move.py, api/dimse/get.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydicom import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import build_context
from tqdm import tqdm

from api.dimse.peer import VERIFICATION, DimseError, PeerAssociation, StoreRequest
from api.dimse.retrieve import (
    EXPLICIT,
    IMPLICIT,
    Delivery,
    Outgoing,
    SubOperationFailed,
    choose_delivery,
    part10_file,
    resolve,
    storage_contexts,
)
from infra.errors import Invalid, NotFound, Unavailable
from infra.ports import ProjectionStore
from infra.settings import RemoteAE, Settings
from schemas.uids import check_uid

#: Listed reasons in the summary; the rest are counted.
MAX_LISTED = 20
QIDO_PAGE = 1000
WADO_AS_STORED = "application/dicom; transfer-syntax=*"
#: How a UID is looked for, in order: the level and its unique key.
LEVELS = (
    ("STUDY", "StudyInstanceUID"),
    ("SERIES", "SeriesInstanceUID"),
    ("IMAGE", "SOPInstanceUID"),
)

Common = Callable[[argparse.ArgumentParser], None]


# -- one instance ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubOutcome:
    """How one C-STORE went: its status (None when it never went out) and why."""

    item: Outgoing
    status: int | None
    delivery: Delivery | None = None
    reason: str = ""

    @property
    def completed(self) -> bool:
        return self.status == 0x0000

    @property
    def warning(self) -> bool:
        return self.status is not None and 0xB000 <= self.status <= 0xBFFF

    @property
    def failed(self) -> bool:
        return not (self.completed or self.warning)


@dataclass
class Staged:
    """An instance ready to go (its file open, its request encoded), or the
    failure found while getting it ready. `close()` releases the file."""

    item: Outgoing
    delivery: Delivery | None = None
    request: StoreRequest | None = None
    failure: SubOutcome | None = None
    _files: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        self._files.close()


def stage(
    assoc: PeerAssociation,
    item: Outgoing,
    spool: Path,
    *,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Staged:
    """Get one instance ready: as stored or decoded (`retrieve.choose_delivery`).
    Touches files only, never the association: a problem fails this instance."""
    delivery = choose_delivery(item.transfer_syntax_uid, assoc.syntaxes(item.sop_class_uid))
    staged = Staged(item, delivery)
    if delivery is None:
        reason = f"{assoc.peer} accepted no context for its SOP class"
        staged.failure = SubOutcome(item, None, None, reason)
        return staged
    try:
        part = staged._files.enter_context(part10_file(item, delivery, spool))
        staged.request = assoc.prepare_store(
            part,
            sop_class=item.sop_class_uid,
            sop_instance=item.sop_instance_uid,
            originator_aet=originator_aet,
            originator_id=originator_id,
        )
    except (SubOperationFailed, NotFound, Unavailable, OSError) as exc:
        staged.close()
        staged.failure = SubOutcome(item, None, delivery, str(exc))
    return staged


def finish(
    assoc: PeerAssociation, staged: Staged, while_waiting: Callable[[], object] | None = None
) -> SubOutcome:
    """Send a staged instance and read its status (`while_waiting` as in
    `PeerAssociation.send_store`). A broken association raises DimseError or
    OSError: nothing more can go over it."""
    try:
        if staged.request is None:
            return staged.failure or SubOutcome(staged.item, None, None, "not staged")
        status, comment = assoc.send_store(staged.request, while_waiting)
    finally:
        staged.close()
    reason = f"0x{status:04X}{': ' + comment if comment else ''}" if status else ""
    return SubOutcome(staged.item, status, staged.delivery, reason)


def store_item(assoc: PeerAssociation, item: Outgoing, spool: Path) -> SubOutcome:
    """C-STORE one instance, as stored or decoded."""
    return finish(assoc, stage(assoc, item, spool))


@dataclass
class Tally:
    """Sub-operation accounting for one C-MOVE or `chronicle send`."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    #: Sent decoded rather than as stored.
    decoded: int = 0
    failed_uids: list[str] = field(default_factory=list)
    #: SOP Instance UID -> why it failed or warned.
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.warning

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def add(self, outcome: SubOutcome) -> None:
        uid = outcome.item.sop_instance_uid
        if outcome.delivery not in (None, Delivery.AS_STORED) and not outcome.failed:
            self.decoded += 1
        if outcome.completed:
            self.completed += 1
        elif outcome.warning:
            self.warning += 1
            self.reasons[uid] = outcome.reason
        else:
            self.failed += 1
            self.failed_uids.append(uid)
            self.reasons[uid] = outcome.reason

    def fail_all(self, items: Sequence[Outgoing], reason: str) -> None:
        for item in items:
            self.add(SubOutcome(item, None, None, reason))


# -- chronicle send ----------------------------------------------------------------


def send_items(settings: Settings, peer: RemoteAE, items: list[Outgoing], spool: Path) -> Tally:
    """C-STORE `items` to `peer` over one association, with a progress bar."""
    tally = Tally(len(items))
    if not items:
        return tally
    try:
        assoc = PeerAssociation.request(
            peer.host,
            peer.port,
            calling=settings.ae_title,
            called=peer.title,
            contexts=storage_contexts(items),
            timeout=settings.acse_timeout,
            max_pdu=settings.max_pdu_size,
        )
    except (OSError, DimseError) as exc:
        raise Unavailable(f"cannot associate with {peer}: {exc}") from exc
    assoc.sock.settimeout(settings.dimse_timeout)
    with tqdm(total=len(items), unit="instance", desc="send") as bar:
        for index, item in enumerate(items):
            try:
                tally.add(store_item(assoc, item, spool))
            except (OSError, DimseError) as exc:
                tally.fail_all(items[index:], f"association lost: {exc}")
                assoc.abort()
                return tally
            except BaseException:
                assoc.abort()
                raise
            bar.update()
    assoc.release()
    return tally


def named_by(index: ProjectionStore, uid: str) -> list[Any]:
    """The instance rows a UID names: a study's, else a series', else one instance."""
    for level, keyword in LEVELS:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        setattr(identifier, keyword, uid)
        rows = resolve(index, identifier, model="STUDY", relational=True)
        if rows:
            return rows
    return []


@contextmanager
def embedded_items(
    settings: Settings, uids: list[str]
) -> Iterator[tuple[list[Outgoing], list[str]]]:
    """The instances from the store itself (no server may hold it), open while in use."""
    from api.wiring import open_archive  # the composition root; only this command needs it

    archive = open_archive(settings, start_projector=False)
    try:
        # Read-your-writes without a server: project what the log holds first.
        archive.projector.run_until(archive.log.end())
        items: dict[str, Outgoing] = {}
        missing = []
        for uid in uids:
            rows = named_by(archive.index, uid)
            if not rows:
                missing.append(uid)
            for row in rows:
                items.setdefault(row.sop_instance_uid, Outgoing.from_row(row, archive.blobs))
        yield list(items.values()), missing
    finally:
        archive.close()


def dicomweb_items(url: str, uids: list[str], folder: Path) -> tuple[list[Outgoing], list[str]]:
    """The instances through a running server: QIDO-RS lists them, WADO-RS fetches them."""
    base = url.rstrip("/") + "/dicomweb"
    found: dict[str, dict[str, Any]] = {}
    missing = []
    with httpx.Client(timeout=300) as client:
        for uid in uids:
            listed = _qido_named_by(client, base, uid)
            if not listed:
                missing.append(uid)
            for match in listed:
                found.setdefault(_value(match, "00080018"), match)
        items = []
        for sop, match in tqdm(found.items(), unit="instance", desc="fetch"):
            path = folder / f"{sop}.dcm"
            instance = f"studies/{_value(match, '0020000D')}/series/{_value(match, '0020000E')}"
            _download(client, f"{base}/{instance}/instances/{sop}", path)
            syntax = str(read_file_meta_info(path).TransferSyntaxUID)
            items.append(Outgoing(_value(match, "00080016"), sop, syntax, _opener(path)))
    return items, missing


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        return path.open("rb")

    return open_file


def _qido_named_by(client: httpx.Client, base: str, uid: str) -> list[dict[str, Any]]:
    for _, keyword in LEVELS:
        matches: list[dict[str, Any]] = []
        while True:
            params = {keyword: uid, "limit": str(QIDO_PAGE), "offset": str(len(matches))}
            response = client.get(f"{base}/instances", params=params)
            if response.status_code == 204:
                break
            _check(response, "QIDO-RS")
            page = response.json()
            matches += page
            if len(page) < QIDO_PAGE:
                break
        if matches:
            return matches
    return []


def _download(client: httpx.Client, url: str, path: Path) -> None:
    with client.stream("GET", url, headers={"Accept": WADO_AS_STORED}) as response:
        _check(response, "WADO-RS")
        with path.open("wb") as out:
            for chunk in response.iter_bytes(1024 * 1024):
                out.write(chunk)


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        response.read()
        raise Unavailable(
            f"{what} {response.url}: HTTP {response.status_code} {response.text[:200]}"
        )


def _value(match: dict[str, Any], tag: str) -> str:
    return str((match.get(tag, {}).get("Value") or [""])[0])


def render(peer: RemoteAE, tally: Tally, missing: list[str]) -> str:
    lines = [f"sent to {peer}: {tally.completed + tally.warning} of {tally.total} instances"]
    if tally.decoded:
        lines.append(f"decoded for the peer (its contexts took no stored syntax): {tally.decoded}")
    lines.append(f"warnings: {tally.warning}")
    lines.append(f"FAILED: {tally.failed}" if tally.failed else "failed: 0")
    for uid, reason in list(tally.reasons.items())[:MAX_LISTED]:
        lines.append(f"  {uid}: {reason}")
    if len(tally.reasons) > MAX_LISTED:
        lines.append(f"  ... and {len(tally.reasons) - MAX_LISTED} more")
    lines += [f"NOT FOUND: {uid}" for uid in missing]
    return "\n".join(lines)


def _peer(text: str) -> RemoteAE:
    try:
        return RemoteAE.parse(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    peer = _peer(args.to)
    uids = [check_uid(uid, "UID") for uid in args.uids]
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chronicle-send-")))
        if args.url:
            items, missing = dicomweb_items(args.url, uids, folder)
        else:
            items, missing = stack.enter_context(embedded_items(settings, uids))
        tally = send_items(settings, peer, items, folder)
    print(render(peer, tally, missing))
    return 1 if tally.failed or missing else 0


# -- chronicle echo ----------------------------------------------------------------


def cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    peer = _peer(args.peer)
    started = time.perf_counter()
    try:
        assoc = PeerAssociation.request(
            peer.host,
            peer.port,
            calling=settings.ae_title,
            called=peer.title,
            contexts=[build_context(VERIFICATION, [IMPLICIT, EXPLICIT])],
            timeout=settings.acse_timeout,
        )
    except (OSError, DimseError) as exc:
        print(f"C-ECHO {peer}: no association: {exc}")
        return 1
    associated = time.perf_counter()
    try:
        status = assoc.echo()
        round_trip = time.perf_counter() - associated
    except (OSError, DimseError) as exc:
        assoc.abort()
        print(f"C-ECHO {peer}: no answer: {exc}")
        return 1
    assoc.release()
    meaning = "Success" if status == 0 else "Failure"
    print(
        f"C-ECHO {peer}: status 0x{status:04X} ({meaning}), round trip {round_trip * 1000:.1f} ms"
        f" (association {(associated - started) * 1000:.1f} ms)"
    )
    return 0 if status == 0 else 1


def add_parsers(subparsers: Any, common: Common) -> None:
    """SUBCOMMANDS entry: `chronicle send` and `chronicle echo`."""
    send = subparsers.add_parser("send", help="C-STORE studies, series or instances to a peer")
    common(send)
    send.add_argument("uids", nargs="+", metavar="UID", help="Study, Series or SOP Instance UIDs")
    send.add_argument("--to", required=True, metavar="TITLE@HOST:PORT", help="the Storage SCP")
    send.add_argument("--url", help="read through a running server at this base URL (DICOMweb)")
    send.add_argument("--ae-title", help="our calling AE title (default CHRONICLE)")
    send.set_defaults(run=cmd_send)

    echo = subparsers.add_parser("echo", help="C-ECHO a peer: status and round-trip time")
    common(echo)
    echo.add_argument("peer", metavar="TITLE@HOST:PORT", help="the peer to verify")
    echo.add_argument("--ae-title", help="our calling AE title (default CHRONICLE)")
    echo.set_defaults(run=cmd_echo)
