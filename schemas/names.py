"""Person-name forms shared by the projector (which stores them) and the
query engine (which matches against them): one function, so they agree."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """The fuzzy-matching form: NFKD, combining marks dropped, lower case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
