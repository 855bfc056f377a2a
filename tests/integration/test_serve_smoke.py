"""`chronicle serve` as an operator meets it: it starts, reports health, answers C-ECHO."""

from __future__ import annotations

import httpx

from tests.chronicle_server import ChronicleServer, StartChronicle, c_echo


def test_healthz_reports_projection_lag(chronicle_server: ChronicleServer) -> None:
    response = httpx.get(f"{chronicle_server.base_url}/healthz", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["projection_lag"] == 0


def test_metrics_expose_projection_lag(chronicle_server: ChronicleServer) -> None:
    response = httpx.get(f"{chronicle_server.base_url}/metrics", timeout=10)

    assert response.status_code == 200
    assert "chronicle_projection_lag_events" in response.text


def test_c_echo_from_configured_caller_succeeds(chronicle_server: ChronicleServer) -> None:
    for caller in ("HARNESS", "ECHOSCU"):
        assert chronicle_server.echo(caller) == 0x0000


def test_unknown_calling_ae_is_rejected(chronicle_server: ChronicleServer) -> None:
    assert chronicle_server.echo("INTRUDER") is None
    # The server keeps serving the callers it knows after a rejection.
    assert chronicle_server.echo("HARNESS") == 0x0000


def test_accept_any_caller_lets_unknown_titles_in(start_chronicle: StartChronicle) -> None:
    server = start_chronicle(["--accept-any-caller"])

    assert server.echo("ANYONE") == 0x0000


def test_ae_title_flag_sets_the_called_title(start_chronicle: StartChronicle) -> None:
    server = start_chronicle(ae_title="ARCHIVE2")

    assert c_echo(server.dimse_port, "ARCHIVE2", "HARNESS") == 0x0000


def test_sigterm_stops_the_server_cleanly(chronicle_server: ChronicleServer) -> None:
    assert chronicle_server.stop() == 0
