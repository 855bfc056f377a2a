"""Generated test data the benchmarks keep between runs, in bench/.corpus."""

from __future__ import annotations

from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"


def start_corpus(folder: Path, what: str) -> None:
    """Announce a corpus about to be generated and make its folder.

    The caller writes `folder / "COMPLETE"` once every file is there; a run
    finding that marker reuses the files.
    """
    print(f"generating {what} in {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (CORPUS_DIR / ".gitignore").write_text("*\n")  # a cache, never a commit
