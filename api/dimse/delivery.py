"""Which presentation contexts a C-STORE sub-operation proposes, and how each
instance goes out over what the peer accepted (C-MOVE, C-GET, `chronicle send`).

Presentation contexts (`storage_contexts`), PS3.4 C.4.2.3 and the seed
statement: per SOP class found, one context offering Explicit VR LE and
Implicit VR LE (the stored one first when it is one of them), one context
per other stored transfer syntax (JPEG-LS, JPEG 2000, RLE, Big Endian,
Deflated...), then, budget permitting, one per SOP class offering the
lossless syntaxes Chronicle can transcode to (`TRANSCODE_TARGETS`), at most
128 in all. Uncompressed contexts come first: every SOP class stays
deliverable when the budget runs out.

Delivery (`choose_delivery`), conservative: as stored when the peer accepted
the stored syntax; else decoded to Explicit VR LE (pixel-exact for lossless
sources); else Implicit VR LE; else transcoded (`api.transcode`) to the
first lossless syntax of `TRANSCODE_TARGETS` the peer accepted (Deflated,
JPEG-LS, JPEG 2000, JPEG lossless SV1, HTJ2K, RLE...); else the
sub-operation fails. DIMSE never adds loss: lossy syntaxes are proposed only
as stored, and a lossy instance transcoded to a lossless syntax keeps Lossy
Image Compression "01".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from api import pixels, transcode
from api.codecs import LOSSLESS_TARGETS

EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT = pixels.IMPLICIT_VR_LITTLE_ENDIAN
MAX_CONTEXTS = 128
#: What an instance may be transcoded to when the peer takes neither its stored
#: syntax nor uncompressed: lossless only, most compact and most decoded first.
TRANSCODE_TARGETS = (transcode.DEFLATED, *LOSSLESS_TARGETS)


class Stored(Protocol):
    """An instance to send, as far as negotiation cares."""

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def transfer_syntax_uid(self) -> str: ...


def storage_contexts(items: Iterable[Stored]) -> list[PresentationContext]:
    """The contexts to propose for `items` (see the module doc), at most 128."""
    per_class: dict[str, Counter[str]] = {}
    for item in items:
        per_class.setdefault(item.sop_class_uid, Counter())[item.transfer_syntax_uid] += 1
    ranked = sorted(per_class.items(), key=lambda entry: -sum(entry[1].values()))
    contexts = [build_context(sop, _uncompressed_order(found)) for sop, found in ranked]
    others = [
        (count, sop, ts)
        for sop, found in ranked
        for ts, count in found.items()
        if ts not in (EXPLICIT, IMPLICIT)
    ]
    for _, sop, ts in sorted(others, key=lambda entry: -entry[0]):
        contexts.append(build_context(sop, [ts]))
    contexts += [build_context(sop, list(TRANSCODE_TARGETS)) for sop, _ in ranked]
    return contexts[:MAX_CONTEXTS]


def _uncompressed_order(found: Counter[str]) -> list[str]:
    return [IMPLICIT, EXPLICIT] if found[IMPLICIT] > found[EXPLICIT] else [EXPLICIT, IMPLICIT]


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an instance goes out: as stored (`target` ''), or converted to `target`."""

    target: str = ""
    AS_STORED: ClassVar[Delivery]
    EXPLICIT_LE: ClassVar[Delivery]
    IMPLICIT_LE: ClassVar[Delivery]

    @property
    def value(self) -> str:
        return f"converted to {self.target}" if self.target else "as stored"


Delivery.AS_STORED = Delivery()
Delivery.EXPLICIT_LE = Delivery(EXPLICIT)
Delivery.IMPLICIT_LE = Delivery(IMPLICIT)


def delivered_syntax(delivery: Delivery, stored: str) -> str:
    """The transfer syntax an instance goes out in."""
    return delivery.target or stored


def choose_delivery(stored: str, accepted: Collection[str]) -> Delivery | None:
    """How to send an instance stored in `stored` when the peer accepted `accepted`."""
    if stored in accepted:
        return Delivery.AS_STORED
    if EXPLICIT in accepted:
        return Delivery.EXPLICIT_LE
    if IMPLICIT in accepted:
        return Delivery.IMPLICIT_LE
    for target in TRANSCODE_TARGETS:
        if target in accepted and not transcode.refusal(stored, target):
            return Delivery(target)
    return None
