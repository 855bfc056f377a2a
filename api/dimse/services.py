"""DIMSE services beyond Verification, Storage and Find, each in its own module.

Each entry is `register(ae, archive) -> list[(event, handler)]`: it adds the
presentation contexts (and SCP/SCU role selection) its service needs to the
AE and returns the event handlers to bind. `server.start_dimse` calls them
all. To add a service: write api/dimse/<name>.py with a `register` function
and append it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom import AE

from . import commitment, get, move

Register = Callable[[AE, Any], list[tuple[Any, Any]]]

REGISTRY: list[Register] = [move.register, get.register, commitment.register]
