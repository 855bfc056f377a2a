"""UID validation: digits and dots, at most 64 characters (PS3.5 9.1).

Every UID is checked here before it becomes part of a key, a path or a query.
"""

from __future__ import annotations

import re

from infra.errors import Invalid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Some modalities send components with leading zeros; PS3.5 forbids them but
# refusing such instances helps no one, so storage accepts them (lenient) while
# the shape (digits and dots only, <= 64) is always enforced.
_UID_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str, *, strict: bool = False) -> bool:
    pattern = _UID if strict else _UID_LENIENT
    return 0 < len(value) <= 64 and pattern.match(value) is not None


def check_uid(value: object, what: str = "UID") -> str:
    """Return the UID with padding removed, or raise Invalid saying why."""
    if not isinstance(value, str):
        raise Invalid(f"{what} is missing")
    uid = value.strip().rstrip("\x00").strip()
    if not uid:
        raise Invalid(f"{what} is missing")
    if len(uid) > 64:
        raise Invalid(f"{what} is longer than 64 characters")
    if not _UID_LENIENT.match(uid):
        raise Invalid(f"{what} {uid[:70]!r} is not digits and dots")
    return uid
