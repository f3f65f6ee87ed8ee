"""The pixel-size check: models map at the pixel size they were trained at (10 m for L4S).

A scene at 30 m or 3 m pixels is mapped by 10 m models without a word otherwise: the objects
they see are three times too small or too large. Region jobs and scene jobs refuse such a
scene alike, before any block is predicted (resample it first; the job's ``resolution`` names
the pixel size the models work at).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ingest.scene import SceneInfo

#: Relative tolerance on a scene's pixel size against the models' resolution.
RESOLUTION_TOLERANCE = 0.01


def off_resolution(info: SceneInfo, resolution: float) -> str | None:
    """Pure: None when the scene's pixels are ``resolution`` metres (within the tolerance) on both
    axes; else what they are, in words (a geographic or CRS-less grid has no size in metres)."""
    crs = info.crs
    if crs is None or not crs.is_projected:
        return f"degrees ({crs.to_string()})" if crs is not None else "unknown size (no CRS)"
    a, unit = info.affine, crs.linear_units_factor[1]
    sizes = np.hypot(a.a, a.d) * unit, np.hypot(a.b, a.e) * unit
    if all(abs(s - resolution) <= RESOLUTION_TOLERANCE * resolution for s in sizes):
        return None
    return f"{sizes[0]:g} x {sizes[1]:g} m"


def require_resolution(source: object, info: SceneInfo, resolution: float) -> None:
    """A scene job's check: InputError for a projected scene whose pixels are not
    ``resolution`` metres. A scene without a CRS (an L4S patch) or on a geographic grid has no
    pixel size in metres to compare and passes (run.json's ``assumed_pixel_m`` says so)."""
    if info.crs is None or not info.crs.is_projected:
        return
    found = off_resolution(info, resolution)
    if found is not None:
        raise InputError(
            f"scene {source}: pixels of {found}, the models work at {resolution:g} m (the job's "
            f"resolution); resample the scene first (gdalwarp -tr {resolution:g} {resolution:g} -r bilinear), "
            "or set resolution in the job to the pixel size the models were trained at"
        )
