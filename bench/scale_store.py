"""C-STORE throughput, Chronicle beside Orthanc, in alternating rounds.

Until the fifteenth session the suite's C-STORE figure was the viewer
corpus's load: 500 CT 512x512 over four associations, once per archive,
Orthanc always first and Chronicle seconds after its start. On this host one
such run swings by a third: the same code gave 0.84x and 1.42x in two runs,
Orthanc 201-421 /s and Chronicle 186-544 /s across sessions. Three causes
were found by timing rounds one after another:

* the page cache: what earlier phases wrote and nobody synced (a copied
  index, the other archive's unsynced writes) was flushed by the next
  archive's fsyncs (Chronicle just after a copy of its index 200 /s, with a
  `sync` between 350 /s);
* a process just started: Chronicle's first 30 s followed the log for
  searches nobody made (fixed in api.pending_tally), and ext4 without a
  journal (this host's root) scans past every inode freed in the last minute
  on each file it creates, and a just-copied or just-merged index frees many;
* the host itself: the same 500 stores cost 2.4-5.9 ms of CPU per instance
  from one round to the next;
* the corpus's files leave the page cache when nothing reads them for a
  while (the host reclaims memory it sees unused), so whichever archive read
  a round's files first read them from disk: in the first run of these
  rounds the first of each pair measured 244-273 /s, the second 323-400.

So each archive gets `ROUNDS` rounds of its own 500 instances (the same files
for both, distinct from round to round), the first to go alternating; before
each, the round's files are read once (into the page cache), the page
cache's writes are flushed and the machine left to go quiet; the figure
is each archive's median round and the ratio of the medians. It runs after
every other measurement at that size, so the extra studies change no search.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from bench.ingest import build_corpus, cstore
from bench.peers import Peer

ROUNDS = 5
PER_ROUND = 500
ASSOCIATIONS = 4
#: The machine counts as quiet below this share of its cores over `QUIET_WINDOW_S`.
QUIET_SHARE = 0.10
QUIET_WINDOW_S = 1.0
QUIET_MAX_WAIT_S = 60.0


def corpus(rounds: int = ROUNDS) -> list[Path]:
    """`rounds` x 500 CT 512x512 (100 per study), generated once into bench/.corpus."""
    return build_corpus(rounds * PER_ROUND)


def settle(files: list[Path]) -> float:
    """Read `files` (so both archives' storescu find them cached), flush the
    page cache's writes, then wait for a quiet machine; the seconds taken."""
    started = time.perf_counter()
    for path in files:
        path.read_bytes()
    os.sync()
    deadline = started + QUIET_MAX_WAIT_S
    while time.perf_counter() < deadline:
        if psutil.cpu_percent(interval=QUIET_WINDOW_S) / 100 < QUIET_SHARE:
            break
    return time.perf_counter() - started


def measure(peers: Mapping[str, Peer], files: list[Path], rounds: int = ROUNDS) -> dict[str, Any]:
    """{archive: {rounds: [per_s...], per_s: median}} over alternating rounds."""
    names = list(peers)
    per_s: dict[str, list[float]] = {name: [] for name in names}
    waited: list[float] = []
    for number in range(rounds):
        chunk = files[number * PER_ROUND : (number + 1) * PER_ROUND]
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            waited.append(settle(chunk))
            seconds = cstore(peers[name], chunk, ASSOCIATIONS)
            per_s[name].append(len(chunk) / seconds)
            print(f"  {name}: C-STORE x{ASSOCIATIONS} round {number + 1}: "
                  f"{per_s[name][-1]:.1f} instances/s", flush=True)  # fmt: skip
    return {
        name: {
            "instances_per_round": PER_ROUND,
            "associations": ASSOCIATIONS,
            "rounds_per_s": rates,
            "per_s": statistics.median(rates),
            "settle_s": waited,
        }
        for name, rates in per_s.items()
    }
