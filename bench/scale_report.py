"""The scale suite's summary: figures beside issue 6's targets, the table and the plot.

Every target is judged on the distinct-query figures (each request misses
Chronicle's answer cache); repeated-query figures are shown for reference.
A target stated at a size the run did not reach (e.g. 1M in --quick) is
judged at the largest size measured and labelled with that size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scale_queries import KINDS

PROTOCOLS = {"qido": "QIDO-RS", "cfind": "C-FIND"}
#: Resident memory counts as flat when its slope over the soak's last two thirds is below this.
FLAT_MIB_PER_MIN = 1.0


@dataclass(frozen=True)
class Check:
    target: str
    figure: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def _size_label(size: int) -> str:
    return f"{size // 1_000_000}M" if size % 1_000_000 == 0 else f"{size // 1000}k"


def _get(tree: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _largest(sizes: Any) -> str | None:
    return max(sizes, key=int) if isinstance(sizes, dict) and sizes else None


def evaluate(results: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    chronicle, orthanc = results.get("chronicle", {}), results.get("orthanc", {})
    checks += _latency_checks(chronicle)
    checks += _ratio_checks(chronicle, orthanc)
    checks += _viewer_checks(chronicle, orthanc)
    checks += _ingest_checks(chronicle, orthanc)
    checks += _soak_checks(chronicle.get("soak"))
    return checks


def _latency_checks(chronicle: dict[str, Any]) -> Iterator[Check]:
    size = _largest(chronicle.get("queries"))
    for kind in KINDS:
        for stat, limit in (("p50", 20.0), ("p99", 100.0)):
            target = f"QIDO {kind} {stat} <= {limit:.0f} ms @1M, 8 clients"
            value = _get(chronicle, "queries", size or "", "qido", kind, "distinct", "8", stat)
            if value is None:
                yield Check(target, "-", None)
                continue
            yield Check(target, f"{value:.1f} ms @{_size_label(int(size or 0))}", value <= limit)


def _versus(target: str, mine: Any, theirs: Any, floor: float, unit: str, *, lower: bool) -> Check:
    """Chronicle against Orthanc: the speed-up (Orthanc/Chronicle for latencies, Chronicle/Orthanc
    for rates, `lower` saying which) must reach `floor`."""
    if mine is None or theirs is None:
        return Check(target, "-", None)
    ratio = theirs / mine if lower else mine / theirs
    digits = 1 if lower else 0
    figures = f"O {theirs:.{digits}f} / C {mine:.{digits}f} {unit}"
    return Check(target, f"{ratio:.2f}x ({figures})", ratio >= floor)


def _common_size(chronicle: dict[str, Any], orthanc: dict[str, Any], part: str) -> str:
    common = set(chronicle.get(part, {})) & set(orthanc.get(part, {}))
    return max(common, key=int) if common else ""


def _ratio_checks(chronicle: dict[str, Any], orthanc: dict[str, Any]) -> Iterator[Check]:
    size = _common_size(chronicle, orthanc, "queries")
    at = f" @{_size_label(int(size))}" if size else ""
    for kind in KINDS:
        for clients in ("1", "8"):
            target = f"QIDO {kind} >= 2x Orthanc @100k, {clients} client(s), p50"
            path = ("queries", size, "qido", kind, "distinct", clients, "p50")
            check = _versus(
                target, _get(chronicle, *path), _get(orthanc, *path), 2.0, "ms", lower=True
            )
            yield Check(
                check.target, check.figure + (at if check.passed is not None else ""), check.passed
            )


def _viewer_checks(chronicle: dict[str, Any], orthanc: dict[str, Any]) -> Iterator[Check]:
    size = _common_size(chronicle, orthanc, "viewer")
    for series in ("100", "500"):
        target = f"series metadata ({series} instances) >= 3x Orthanc, cold p50"
        path = ("viewer", size, "metadata", "series", series, "cold", "p50")
        yield _versus(target, _get(chronicle, *path), _get(orthanc, *path), 3.0, "ms", lower=True)
    target = "WADO-RS whole study >= 0.8x Orthanc MB/s"
    wado = ("viewer", size, "wado", "mb_per_s")
    yield _versus(target, _get(chronicle, *wado), _get(orthanc, *wado), 0.8, "MB/s", lower=False)


def _ingest_checks(chronicle: dict[str, Any], orthanc: dict[str, Any]) -> Iterator[Check]:
    size = _largest(chronicle.get("fill"))
    rate = _get(chronicle, "fill", size or "", "replay_per_s")
    target = "replay >= 20,000 events/s @1M"
    if rate is None:
        yield Check(target, "-", None)
    else:
        events = _get(chronicle, "fill", size or "", "events")
        yield Check(target, f"{rate:,.0f} events/s ({events:,} events)", rate >= 20_000)
    target = "C-STORE (CT 512x512) >= 1.2x Orthanc, 4 associations, median round"
    path = ("viewer", _common_size(chronicle, orthanc, "viewer"), "cstore", "per_s")
    yield _versus(target, _get(chronicle, *path), _get(orthanc, *path), 1.2, "/s", lower=False)


def _soak_checks(soak: dict[str, Any] | None) -> Iterator[Check]:
    targets = (
        "soak: QIDO p99 <= 2x isolated",
        "soak: resident memory < 1 GiB",
        f"soak: resident memory flat (slope < {FLAT_MIB_PER_MIN:g} MiB/min)",
    )
    if not soak:
        yield from (Check(target, "-", None) for target in targets)
        return
    ratio = soak["qido_p99_ratio"]
    during, alone = soak["qido"]["p99"], soak["isolated_qido"]["p99"]
    yield Check(targets[0], f"{ratio:.2f}x ({during:.1f}/{alone:.1f} ms)", ratio <= 2.0)
    memory = soak["memory"]
    yield Check(targets[1], f"max {memory['max_mib']:.0f} MiB", memory["max_mib"] < 1024)
    slope = memory["slope_tail_mib_per_min"]
    yield Check(
        targets[2],
        f"{slope:+.2f} MiB/min (whole run {memory['slope_mib_per_min']:+.2f})",
        slope < FLAT_MIB_PER_MIN,
    )


def _cell(figures: Any) -> str:
    if not figures:
        return f"{'-':>15}"
    return f"{figures['p50']:7.1f}/{figures['p99']:7.1f}"


def latency_table(results: dict[str, Any]) -> Iterator[str]:
    chronicle, orthanc = results.get("chronicle", {}), results.get("orthanc", {})
    for size in sorted(chronicle.get("queries", {}), key=int):
        yield f"\n{int(size):,} instances: study search p50/p99 ms (O = Orthanc, C = Chronicle)"
        yield (
            f"{'query':24} {'proto':7} {'keys':9} {'O 1 client':>15} {'C 1 client':>15} "
            f"{'O 8 clients':>15} {'C 8 clients':>15} {'p50 O/C 8c':>10}"
        )
        for kind in KINDS:
            for proto, title in PROTOCOLS.items():
                for mode in ("distinct", "repeated"):
                    mine = _get(chronicle, "queries", size, proto, kind, mode) or {}
                    theirs = _get(orthanc, "queries", size, proto, kind, mode) or {}
                    ratio = "-"
                    if mine.get("8") and theirs.get("8"):
                        ratio = f"{theirs['8']['p50'] / mine['8']['p50']:.2f}x"
                    cells = [_cell(theirs.get("1")), _cell(mine.get("1"))]
                    cells += [_cell(theirs.get("8")), _cell(mine.get("8"))]
                    yield f"{kind:24} {title:7} {mode:9} {' '.join(cells)} {ratio:>10}"


def other_table(results: dict[str, Any]) -> Iterator[str]:
    chronicle, orthanc = results.get("chronicle", {}), results.get("orthanc", {})
    for size, fill in sorted(chronicle.get("fill", {}).items(), key=lambda item: int(item[0])):
        appended = f"{fill['append_s']:.1f} s" if fill.get("append_s") is not None else "-"
        yield (
            f"Chronicle @{_size_label(int(size))}: appended {fill['appended']:,} events in "
            f"{appended}; replay {fill['events']:,} events in "
            f"{fill['replay_s']:.1f} s = {fill['replay_per_s']:,.0f} events/s"
        )
    for size, fill in sorted(orthanc.get("fill", {}).items(), key=lambda item: int(item[0])):
        yield (
            f"Orthanc   @{_size_label(int(size))}: REST fill of {fill['instances']:,} instances "
            f"in {fill['seconds']:.1f} s = {fill['per_s']:.0f}/s"
            + ("" if fill["complete"] else " (STOPPED: over the time budget)")
        )
    for name, archive in (("Orthanc", orthanc), ("Chronicle", chronicle)):
        for size, viewer in sorted(archive.get("viewer", {}).items(), key=lambda i: int(i[0])):
            for level in ("series", "study"):
                for count, figures in viewer["metadata"][level].items():
                    yield (
                        f"{name:9} @{_size_label(int(size))}: {level} metadata, {count} instances: "
                        f"cold {_cell(figures['cold']).strip()} ms, "
                        f"warm {_cell(figures['warm']).strip()} ms"
                    )
            wado = viewer["wado"]
            yield (
                f"{name:9} @{_size_label(int(size))}: WADO-RS study ({wado['instances']} CT "
                f"512x512): {wado['mb_per_s']:.0f} MB/s"
            )
            yield from _store_lines(name, size, viewer)


def _store_lines(name: str, size: str, viewer: dict[str, Any]) -> Iterator[str]:
    at = f"{name:9} @{_size_label(int(size))}"
    for corpus, load in viewer.get("load", {}).items():
        if isinstance(load, dict) and "per_s" in load:
            yield f"{at}: viewer corpus {corpus}, C-STORE x4 once: {load['per_s']:.1f}/s"
    store = viewer.get("cstore")
    if store:
        rounds = ", ".join(f"{rate:.0f}" for rate in store["rounds_per_s"])
        yield (
            f"{at}: C-STORE x{store['associations']} CT 512x512, median of rounds "
            f"{store['per_s']:.1f}/s ({rounds})"
        )


def soak_lines(soak: dict[str, Any] | None) -> Iterator[str]:
    if not soak:
        return
    memory = soak["memory"]
    target, alone = soak["target_ingest_per_s"], soak["isolated_ingest_per_s"]
    yield (
        f"Soak {soak['seconds']:.0f} s: C-STORE {soak['ingest_per_s']:.1f}/s against a target of "
        f"{target:.1f}/s (half the isolated {alone:.1f}/s), {soak['failed']} failed of "
        f"{soak['sent']}; QIDO p50/p99 {_cell(soak['qido']).strip()} ms, "
        f"isolated {_cell(soak['isolated_qido']).strip()} ms"
    )
    apart = soak["qido"].get("apart")
    if apart:
        yield (
            f"Soak QIDO searches no stored study could match ({apart['n']}): p50/p99 "
            f"{_cell(apart).strip()} ms (pending events may change the answers of the others)"
        )
    yield (
        f"Soak resident memory (all Chronicle processes): {memory['first_mib']:.0f} -> "
        f"{memory['last_mib']:.0f} MiB, max {memory['max_mib']:.0f} MiB, slope "
        f"{memory['slope_mib_per_min']:+.2f} MiB/min (last two thirds "
        f"{memory['slope_tail_mib_per_min']:+.2f})"
    )


def checks_table(checks: list[Check]) -> Iterator[str]:
    yield f"\n{'target (issue 6, item 2)':66} {'measured':44} verdict"
    for check in checks:
        yield f"{check.target:66} {check.figure:44} {check.verdict}"


def plot(results: dict[str, Any], path: Path) -> None:
    """p50 (line) and p50..p99 (band) of distinct study searches against index size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    for row, proto in enumerate(PROTOCOLS):
        for column, clients in enumerate(("1", "8")):
            _panel(axes[row][column], results, proto, clients)
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle(
        "Chronicle (solid, circles) and Orthanc (dashed, squares): latency against index size"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


COLOURS = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))


def _panel(ax: Any, results: dict[str, Any], proto: str, clients: str) -> None:
    from matplotlib.ticker import FuncFormatter

    for archive, style, marker in (("chronicle", "-", "o"), ("orthanc", "--", "s")):
        by_size = results.get(archive, {}).get("queries", {})
        for kind in KINDS:
            points = [
                (int(size), found)
                for size in sorted(by_size, key=int)
                if (found := _get(by_size, size, proto, kind, "distinct", clients))
            ]
            if not points:
                continue
            xs = [x for x, _ in points]
            p50 = [f["p50"] for _, f in points]
            label = f"{archive.title()} {kind}"
            ax.plot(xs, p50, style, marker=marker, color=COLOURS[kind], label=label)
            ax.fill_between(xs, p50, [f["p99"] for _, f in points], color=COLOURS[kind], alpha=0.1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Minor labels at 2x, 3x and 5x a power of ten only: more crowd wide ranges.
    ax.yaxis.set_minor_formatter(
        FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "235" else "")
    )
    ax.set_title(f"{PROTOCOLS[proto]} study search, {clients} client(s), distinct keys")
    ax.set_xlabel("instances in the index")
    ax.set_ylabel("latency ms (p50 line, band to p99)")
    ax.grid(True, which="both", alpha=0.3)
    if proto == "qido":
        ax.axhline(20, color="grey", linewidth=0.8, linestyle=":", label="target p50 @1M")
