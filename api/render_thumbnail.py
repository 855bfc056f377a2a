"""Thumbnails (Supplement 203): which instance and frame stand for a resource, and its image.

A series shows its middle image instance (instance number order), a study the
middle image instance of its lowest-numbered series holding images, an
instance its middle frame; what is not an image (a report, a document, a
video, pixels Chronicle cannot decode) gets a placeholder naming what it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PIL import Image
from pydicom.dataset import Dataset

from api.catalog import InstanceRow
from api.pixels import TranscodeUnsupported
from api.render import number_of_frames, render_frame
from api.render_docs import placeholder_image
from api.render_geometry import fitted_size
from api.render_media import kind_of_dataset, kind_of_metadata, series_number
from api.render_params import RenderQuery

log = logging.getLogger("chronicle.rendered")

#: Supplement 203 leaves the size to the server: this fits a viewer's series list.
THUMBNAIL_VIEWPORT = (128, 128)

MetadataOf = Callable[[InstanceRow], dict[str, Any]]


def representative(rows: list[InstanceRow], metadata_of: MetadataOf) -> InstanceRow:
    """The instance a study's or series' thumbnail shows (`rows` in catalog order:
    series, then instance number)."""
    images: list[tuple[int, str, InstanceRow]] = []
    for row in rows:
        meta = metadata_of(row)
        if kind_of_metadata(meta, row.transfer_syntax_uid).category == "image":
            number = series_number(meta)
            images.append((_UNNUMBERED if number is None else number, row.series_instance_uid, row))
    if not images:
        return rows[0]
    chosen = min((number, series) for number, series, _ in images)
    members = [row for number, series, row in images if (number, series) == chosen]
    return members[len(members) // 2]


_UNNUMBERED = 1 << 31


def thumbnail_image(ds: Dataset, frame: int | None, query: RenderQuery) -> Image.Image:
    """The thumbnail of one instance: frame `frame` (default the middle one) fitted to the
    viewport, or a placeholder. Raises ValueError for a frame beyond those stored."""
    viewport = query.params.viewport or THUMBNAIL_VIEWPORT
    if kind_of_dataset(ds).category != "image":
        return _placeholder(ds, viewport)
    index = number_of_frames(ds) // 2 if frame is None else frame
    params = query.for_image(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    try:
        return render_frame(ds, index, params)
    except TranscodeUnsupported as exc:
        log.warning("thumbnail of undecodable pixels is a placeholder: %s", exc.reason)
        return _placeholder(ds, viewport)


def _placeholder(ds: Dataset, viewport: tuple[int, int]) -> Image.Image:
    rows, columns = viewport
    # A square placeholder fitted like an image would be.
    side = max(rows, columns)
    return placeholder_image(ds, fitted_size((side, side), viewport))
