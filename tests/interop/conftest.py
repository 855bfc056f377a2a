"""Fixtures that run a real `chronicle serve` (defined once in tests/chronicle_server.py)."""

from tests.chronicle_server import (  # noqa: F401  (pytest finds fixtures by name here)
    chronicle_server,
    chronicle_server_module,
    start_chronicle,
    start_chronicle_module,
)
