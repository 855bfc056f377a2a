"""Measuring Chronicle and Orthanc side by side, measurement by measurement.

At a size both archives hold, both serve at once and every measurement runs
on one and then the other (the first to go alternating), so a slow spell of
the host falls on both: until the tenth session the suite measured all of
Chronicle's phases and then all of Orthanc's, and the same code missed and
met the same ratio in two runs an hour apart (series /metadata 1.62x and
4.06x, C-STORE 0.84x and 1.42x). Each archive keeps its own `QueryKeys` (the
same seed), so both are asked the same keys in the same order; the figures
land in the same shape as `bench.scale.measure_archive`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import scale_store, scale_viewer
from bench.scale_queries import (
    KINDS,
    Opener,
    QueryKeys,
    c_find_opener,
    plans,
    qido_opener,
    run_clients,
)

CLIENTS = (1, 8)


def measure_pair(
    archives: dict[str, Any],
    keys: dict[str, QueryKeys],
    size: int,
    plan: Any,
    viewer: scale_viewer.ViewerCorpus,
) -> dict[str, dict[str, Any]]:
    """{archive name: figures} for `bench.scale.Archive`s keyed by name."""
    names = list(archives)
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    turn = [0]

    def each(step: Callable[[str], None]) -> None:
        """One measurement on every archive, the first to go alternating."""
        order = names if turn[0] % 2 == 0 else names[::-1]
        turn[0] += 1
        for name in order:
            step(name)

    if size == plan.viewer_size:
        print("storing the viewer corpus", flush=True)
        each(lambda n: out[n].__setitem__("load", scale_viewer.load(archives[n].peer, viewer)))
    print(f"@{size:,}: QIDO-RS and C-FIND study searches, interleaved", flush=True)
    openers: dict[str, dict[str, Opener]] = {
        "qido": {n: qido_opener(archives[n].dicomweb) for n in names},
        "cfind": {
            n: c_find_opener(archives[n].peer.dimse_port, archives[n].peer.ae_title) for n in names
        },
    }
    for service, opener in openers.items():
        for name in names:
            out[name].setdefault("queries", {})[service] = {k: {} for k in KINDS}
        for kind in KINDS:
            for mode in ("distinct", "repeated"):
                for clients in CLIENTS:
                    each(_search_step(out, service, opener, keys, (kind, mode, clients), plan))
    if size >= plan.viewer_size:
        print(f"@{size:,}: /metadata and WADO-RS, interleaved", flush=True)
        studies = viewer.metadata_studies
        each(
            lambda n: out[n].__setitem__(
                "metadata", scale_viewer.measure_metadata(archives[n].dicomweb, studies)
            )
        )
        each(
            lambda n: out[n].__setitem__(
                "wado", scale_viewer.measure_wado(archives[n].dicomweb, viewer)
            )
        )
    if size == plan.viewer_size:
        print(f"@{size:,}: C-STORE throughput, alternating rounds", flush=True)
        peers = {name: archives[name].peer for name in names}
        for name, figures in scale_store.measure(peers, scale_store.corpus()).items():
            out[name]["cstore"] = figures
    return out


def _search_step(
    out: dict[str, dict[str, Any]],
    service: str,
    opener: dict[str, Opener],
    keys: dict[str, QueryKeys],
    case: tuple[str, str, int],
    plan: Any,
) -> Callable[[str], None]:
    """One (kind, mode, clients) measurement of `service`, for the archive named."""
    kind, mode, clients = case

    def search(name: str) -> None:
        count = plan.requests if service == "qido" else plan.cfind_requests
        drawn = plans(keys[name], kind, mode, clients, -(-count // clients))
        figures = run_clients(opener[name], drawn)
        out[name]["queries"][service][kind].setdefault(mode, {})[str(clients)] = figures

    return search
