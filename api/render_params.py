"""PS3.18 8.3.5.1 rendering query parameters -> api.render.RenderParams.

`window=center,width[,function]`, `viewport=vw,vh[,sx,sy,sw,sh]`,
`quality=1..100`, `annotation=patient,technique`, `iccprofile` (accepted,
never applied: rendered images carry no ICC profile). Every malformed value
raises ValueError with a message fit for a 400 response; unknown parameters
are ignored as PS3.18 8.3.1 asks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from api.render import ANNOTATIONS, RenderParams

#: Largest viewport side (WADO-URI's rows/columns bound too).
MAX_VIEWPORT = 32767
ICC_PROFILES = frozenset({"no", "yes", "srgb", "adobergb", "rommrgb"})
_SINGLE = ("window", "viewport", "quality", "iccprofile")
_SOURCE_FIELDS = ("sx", "sy", "sw", "sh")


@dataclass(frozen=True)
class SourceRegion:
    """PS3.18 viewport sx, sy, sw, sh in source pixels; None means the default."""

    sx: int | None
    sy: int | None
    sw: int | None
    sh: int | None

    def normalized(self, rows: int, columns: int) -> tuple[float, float, float, float] | None:
        """RenderParams.region for an image of rows x columns; None for the whole image.

        A negative width (height) selects the pixels left of (above) sx (sy)
        and flips them, hence x2 < x1 (y2 < y1).
        """
        x1, x2 = _span(self.sx, self.sw, columns, "x")
        y1, y2 = _span(self.sy, self.sh, rows, "y")
        if (x1, y1, x2, y2) == (0, 0, columns, rows):
            return None
        return x1 / columns, y1 / rows, x2 / columns, y2 / rows


def _span(start: int | None, length: int | None, size: int, axis: str) -> tuple[int, int]:
    begin = 0 if start is None else start
    # A region running right to left (up) may start at the far edge.
    backwards = length is not None and length < 0
    if not (0 <= begin < size or (backwards and begin == size)):
        raise ValueError(f"viewport s{axis}={begin} is outside the image (0..{size - 1})")
    end = size if length is None else begin + length
    end = min(max(end, 0), size)
    if end == begin:
        raise ValueError(f"viewport source region is empty along {axis}")
    return begin, end


@dataclass(frozen=True)
class RenderQuery:
    """The parsed parameters; the source region waits for the image's size."""

    params: RenderParams
    source: SourceRegion | None = None

    def for_image(self, rows: int, columns: int) -> RenderParams:
        """RenderParams with the source region normalized against rows x columns."""
        if self.source is None or rows <= 0 or columns <= 0:
            return self.params
        return replace(self.params, region=self.source.normalized(rows, columns))


def parse_render_query(
    query: Mapping[str, Sequence[str]], *, default_viewport: tuple[int, int] | None = None
) -> RenderQuery:
    """Parse the rendering parameters of a request (`query`: name -> values given)."""
    for name in _SINGLE:
        if len(query.get(name, ())) > 1:
            raise ValueError(f"{name} may be given once")
    window = _window(_one(query, "window"))
    viewport, source = _viewport(_one(query, "viewport"))
    quality = _quality(_one(query, "quality"))
    annotation = _annotation(query.get("annotation", ()))
    icc = _one(query, "iccprofile")
    if icc is not None and icc.strip().lower() not in ICC_PROFILES:
        raise ValueError(f"iccprofile must be one of {', '.join(sorted(ICC_PROFILES))}")
    params = RenderParams(
        window=window,
        viewport=viewport or default_viewport,
        quality=quality,
        annotation=annotation,
    )
    return RenderQuery(params, source)


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name, ())
    return values[0] if values else None


def _window(text: str | None) -> tuple[float, float, str] | None:
    if text is None:
        return None
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (2, 3):
        raise ValueError("window is center,width,function (linear, linear-exact or sigmoid)")
    center, width = _number(fields[0], "window center"), _number(fields[1], "window width")
    if width <= 0:
        raise ValueError(f"window width must be > 0, not {fields[1]}")
    function = fields[2] if len(fields) == 3 else "linear"
    if function.lower() not in ("linear", "linear-exact", "sigmoid"):
        raise ValueError(f"window function {function!r} is not linear, linear-exact or sigmoid")
    return center, width, function.lower()


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    return value


def _viewport(text: str | None) -> tuple[tuple[int, int] | None, SourceRegion | None]:
    if text is None:
        return None, None
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (2, 6):
        raise ValueError("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    vw, vh = _side(fields[0], "vw"), _side(fields[1], "vh")
    if len(fields) == 2:
        return (vh, vw), None
    sx, sy, sw, sh = (_integer(f, n) for f, n in zip(fields[2:], _SOURCE_FIELDS, strict=True))
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise ValueError("viewport sx and sy must be >= 0")
    if sw == 0 or sh == 0:
        raise ValueError("viewport sw and sh must not be 0")
    return (vh, vw), SourceRegion(sx, sy, sw, sh)


def _side(text: str, name: str) -> int:
    value = _integer(text, name)
    if value is None or not 1 <= value <= MAX_VIEWPORT:
        raise ValueError(f"viewport {name} must be 1..{MAX_VIEWPORT}")
    return value


def _integer(text: str, name: str) -> int | None:
    """An integer field; an empty one (PS3.18 allows `vw,vh,,,,`) is None."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"viewport {name} {text!r} is not an integer") from None


def _quality(text: str | None) -> int:
    if text is None:
        return 90
    try:
        quality = int(text.strip())
    except ValueError:
        raise ValueError(f"quality {text!r} is not an integer 1..100") from None
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, not {quality}")
    return quality


def _annotation(values: Sequence[str]) -> frozenset[str]:
    keywords = {k.strip().lower() for value in values for k in value.split(",") if k.strip()}
    unknown = keywords - ANNOTATIONS
    if unknown:
        raise ValueError(f"annotation {', '.join(sorted(unknown))} unsupported: patient, technique")
    if values and not keywords:
        raise ValueError("annotation needs patient and/or technique")
    return frozenset(keywords)


def parse_frame_list(text: str) -> list[int]:
    """PS3.18 frame list "1,3,5" -> 0-based indexes, in the order given."""
    frames: list[int] = []
    for field in text.split(","):
        field = field.strip()
        if not field.isdigit() or int(field) < 1:
            raise ValueError(f"frame number {field!r} is not a positive integer")
        frames.append(int(field) - 1)
    return frames
