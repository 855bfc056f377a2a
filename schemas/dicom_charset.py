"""Specific Character Set (0008,0005) decoding for DICOM JSON and C-FIND.

Decoding never raises: bytes invalid in the declared character set are read
in the fallback set, else replaced, and each such repair is noted.
"""

from __future__ import annotations

import warnings
from codecs import lookup as codec_lookup

from pydicom.charset import decode_bytes, python_encoding


class Charset:
    """The Python codecs for one Specific Character Set, decoding never raising."""

    __slots__ = ("codecs", "label", "fallback", "single")

    def __init__(self, codecs: list[str], label: str, fallback: Charset | None) -> None:
        self.codecs = codecs
        self.label = label
        self.fallback = fallback
        # canonical codec name: pydicom's aliases (e.g. "iso8859") are slow to look up
        self.single = codec_lookup(codecs[0]).name if len(codecs) == 1 else ""

    def decode(self, raw: bytes, tag: int, notes: list[str], delims: set[int]) -> str:
        if self.single and b"\x1b" not in raw:
            try:
                return raw.decode(self.single)
            except UnicodeDecodeError:
                return self._recover(raw, tag, notes)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = decode_bytes(raw, self.codecs, delims)
        if caught:
            notes.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {caught[0].message}")
        return text

    def _recover(self, raw: bytes, tag: int, notes: list[str]) -> str:
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if self.fallback is not None:
            try:
                text = raw.decode(self.fallback.codecs[0])
            except UnicodeDecodeError:
                pass
            else:
                notes.append(f"{where}: not valid {self.label}, decoded as {self.fallback.label}")
                return text
        notes.append(f"{where}: bytes invalid in {self.label} replaced with U+FFFD")
        return raw.decode(self.codecs[0], errors="replace")


def charset_for(term_value: str, default: Charset, notes: list[str]) -> Charset:
    """The Charset for a (0008,0005) value; unknown terms fall back to `default`."""
    terms = [t.strip(" \x00") for t in term_value.split("\\")]
    if not any(terms):
        return default
    if not terms[0]:
        terms[0] = "ISO_IR 6"
    codecs: list[str] = []
    for term in terms:
        codec = python_encoding.get(term)
        if codec is None and term[:3] == "ISO" and term[4:6] == "IR":  # "ISO IR 100" and kin
            codec = python_encoding.get("ISO_IR " + term[6:].strip(" _-"))
            if codec is not None:
                notes.append(f"Specific Character Set {term!r} read as 'ISO_IR {term[6:].strip()}'")
        if codec is None:
            notes.append(f"unknown Specific Character Set {term!r}: using {default.label}")
            return default
        if codec not in codecs:
            codecs.append(codec)
    return Charset(codecs, "\\".join(terms), default)


def default_charset_for(term: str) -> Charset:
    """The fallback Charset used when a dataset has none or a wrong one."""
    codec = python_encoding.get(term)
    if codec is None:
        raise ValueError(f"unknown default character set {term!r}")
    return Charset([codec], term, None)
