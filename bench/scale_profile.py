"""A py-spy profile of Chronicle answering its slowest study search, summarised by function.

py-spy samples every thread of the server (`record -f raw`: one line per
distinct stack, `frame;frame;...;leaf COUNT`). While it records, one client
sends that query kind with distinct keys back to back. The summary gives,
per function, its share of samples at the top of the stack (self) and
anywhere in it (inclusive), idle threads left out.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.scale_queries import Opener, QueryKeys

#: Leaves of threads waiting, not working (py-spy may still sample them as active).
_IDLE_LEAF = re.compile(r"\.(wait|select|poll) \((threading|selectors)\.py\)$")
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")
#: Frames of the project's own code, kept with their line: which statement is hot.
_OWN_CODE = re.compile(r"\((api|infra|projections|schemas|ingest)/[^)]*:\d+\)$")


def py_spy() -> str:
    return str(Path(sys.executable).parent / "py-spy")


def record(
    pid: int, open_client: Opener, keys: QueryKeys, kind: str, seconds: float, out: Path
) -> dict[str, Any]:
    """Profile `pid` for `seconds` while a client repeats distinct `kind` searches."""
    argv = [py_spy(), "record", "-p", str(pid), "-f", "raw", "-o", str(out)]
    argv += ["-d", str(int(seconds)), "-r", "200", "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        search, close = open_client()
        try:
            while not stop.is_set():
                search(keys.distinct(kind))
                sent += 1
        finally:
            close()

    client = threading.Thread(target=load)
    time.sleep(1.0)  # py-spy attaches before the load starts
    client.start()
    try:
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        stop.set()
        client.join()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
    return {"kind": kind, "requests": sent, "raw": str(out), **summarise(out.read_text())}


def _function(frame: str) -> str:
    """'name (file.py:123)' -> 'name (file.py)': lines of one function count together."""
    return _FRAME_LINE.sub(")", frame.strip())


def summarise(raw: str, top: int = 20) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    busy = 0
    for line in raw.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        raw_frames = [f.strip() for f in match["stack"].split(";") if f.strip()]
        frames = [_function(f) for f in raw_frames]
        count = int(match["count"])
        if not frames or _IDLE_LEAF.search(frames[-1]):
            continue
        busy += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        for frame in {f for f in raw_frames if _OWN_CODE.search(f)}:
            lines[frame] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, n / busy] for name, n in counter.most_common(top)] if busy else []

    return {
        "busy_samples": busy,
        "self": shares(own),
        "inclusive": shares(inclusive),
        "own_lines": shares(lines),
    }


def lines(profile: dict[str, Any]) -> list[str]:
    out = [
        f"\npy-spy: {profile['kind']} ({profile['requests']} requests, "
        f"{profile['busy_samples']} busy samples; raw stacks in {profile['raw']})",
        f"{'self %':>7}  function",
    ]
    out += [f"{share * 100:6.1f}%  {name}" for name, share in profile["self"][:12]]
    out.append(f"{'incl %':>7}  function")
    out += [f"{share * 100:6.1f}%  {name}" for name, share in profile["inclusive"][:20]]
    out.append(f"{'incl %':>7}  Chronicle's own lines")
    out += [f"{share * 100:6.1f}%  {name}" for name, share in profile["own_lines"][:15]]
    return out
