"""Association acceptance: who may talk to us (the A-ASSOCIATE-RQ decision).

The decision is a pure function of the request (calling/called AE titles, the
peer's IP) and the configuration, so it is unit-tested without a network.
`on_association_requested` applies it from pynetdicom's EVT_REQUESTED, before
pynetdicom's own negotiation runs, and sends the A-ASSOCIATE-RJ itself so the
peer gets the right reason:

- called AE title is not ours -> rejected-permanent, service user,
  "called AE title not recognised" (0x01, 0x01, 0x07);
- `remote_aes` is non-empty and `accept_any_caller` is off, and the calling AE
  title is not configured (or is, but bound to another host) -> rejected-
  permanent, service user, "calling AE title not recognised" (0x01, 0x01, 0x03).

Host binding: a configured host that is an IP literal must equal the peer's
address (IPv4-mapped IPv6 peers are compared as IPv4). A host name binds when
it resolves: the peer must be one of its addresses. A name that does not
resolve (DNS down, typo) binds nothing and the title alone decides, with a
warning in the log, so a DNS outage does not lock every modality out. The
hosts "*", "0.0.0.0" and "::" mean any host. Several entries may share a
title (one AE reaching us from two hosts): any matching entry admits.
Resolution runs per association request, only for entries with the calling
title; the system resolver's own cache applies.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.settings import RemoteAE, Settings

log = logging.getLogger("chronicle.dimse")

#: A-ASSOCIATE-RJ (result, source, reason) triples, PS3.8 9.3.4.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNISED = 0x03
REASON_CALLED_AE_NOT_RECOGNISED = 0x07

ANY_HOST = frozenset({"*", "0.0.0.0", "::", ""})

#: host name -> the IP addresses it resolves to (empty: did not resolve).
Resolver = Callable[[str], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Decision:
    """Accept, or reject with an A-ASSOCIATE-RJ (result, source, reason)."""

    accepted: bool
    result: int = 0
    source: int = 0
    reason: int = 0
    detail: str = ""

    @property
    def rejection(self) -> tuple[int, int, int]:
        return (self.result, self.source, self.reason)


ACCEPT = Decision(accepted=True)


def _reject(reason: int, detail: str) -> Decision:
    return Decision(False, REJECTED_PERMANENT, SOURCE_SERVICE_USER, reason, detail)


def resolve_host(host: str) -> frozenset[str]:
    """Every address the system resolver gives for `host`; empty when it fails."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(_normalise_ip(str(info[4][0])) for info in infos)


def _normalise_ip(text: str) -> str:
    """Canonical text of an IP, IPv4-mapped IPv6 as IPv4; other text unchanged."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class AssociationPolicy:
    """The configured acceptance rules; `decide` judges one A-ASSOCIATE-RQ."""

    ae_title: str
    remotes: tuple[RemoteAE, ...] = ()
    accept_any_caller: bool = False
    resolver: Resolver = resolve_host

    @classmethod
    def from_settings(
        cls, settings: Settings, *, resolver: Resolver = resolve_host
    ) -> AssociationPolicy:
        return cls(
            ae_title=settings.ae_title,
            remotes=tuple(settings.remotes),
            accept_any_caller=settings.accept_any_caller,
            resolver=resolver,
        )

    @property
    def restricts_callers(self) -> bool:
        return bool(self.remotes) and not self.accept_any_caller

    def decide(self, *, calling_ae: str, called_ae: str, peer_ip: str) -> Decision:
        called, calling = called_ae.strip(), calling_ae.strip()
        if called != self.ae_title.strip():
            return _reject(
                REASON_CALLED_AE_NOT_RECOGNISED,
                f"called AE title {called!r} is not {self.ae_title!r}",
            )
        if not self.restricts_callers:
            return ACCEPT
        entries = [ae for ae in self.remotes if ae.title.strip() == calling]
        if not entries:
            return _reject(
                REASON_CALLING_AE_NOT_RECOGNISED,
                f"calling AE title {calling!r} is not a configured remote AE",
            )
        if any(self._host_admits(ae.host, peer_ip) for ae in entries):
            return ACCEPT
        hosts = ", ".join(sorted({ae.host for ae in entries}))
        return _reject(
            REASON_CALLING_AE_NOT_RECOGNISED,
            f"calling AE title {calling!r} is configured for {hosts}, not {peer_ip}",
        )

    def _host_admits(self, host: str, peer_ip: str) -> bool:
        host = host.strip()
        if host in ANY_HOST:
            return True
        peer = _normalise_ip(peer_ip)
        if _is_ip(host):
            return _normalise_ip(host) == peer
        addresses = self.resolver(host)
        if not addresses:
            log.warning("remote AE host %r does not resolve; admitting by AE title alone", host)
            return True
        return peer in {_normalise_ip(a) for a in addresses}


def _requested_titles(assoc: Any) -> tuple[str, str]:
    primitive = assoc.requestor.primitive
    return str(primitive.calling_ae_title), str(primitive.called_ae_title)


def apply_decision(assoc: Any, decision: Decision) -> None:
    """Send the A-ASSOCIATE-RJ the way pynetdicom's own negotiation does."""
    from pynetdicom import evt

    assoc.acse.send_reject(*decision.rejection)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    # kill() waits for the DUL to return to Sta1, i.e. for the peer to have
    # read the A-ASSOCIATE-RJ and closed (or the ARTIM timer to expire).
    assoc.kill()


def judge(policy: AssociationPolicy, assoc: Any) -> Decision:
    """The decision for a live association; any failure to judge rejects."""
    try:
        calling, called = _requested_titles(assoc)
        return policy.decide(
            calling_ae=calling, called_ae=called, peer_ip=str(assoc.requestor.address)
        )
    except Exception:
        # EVT_REQUESTED is a notification event: pynetdicom would swallow an
        # exception and negotiate anyway, so a broken check must fail closed.
        log.exception("association policy check failed; rejecting")
        return Decision(
            False, REJECTED_TRANSIENT, SOURCE_SERVICE_USER, REASON_NO_REASON, "policy error"
        )
