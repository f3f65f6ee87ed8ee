"""Unit conventions of the 14 layers, and the typical values each convention gives.

Three conventions are known, each a per-layer factor from physical units (surface reflectance
0..1, slope in degrees, DEM in metres):

- ``reflectance``: physical units, as ``synthetic.py``, plain stacks of reflectance and
  ``inputs.units: physical`` write them;
- ``dn``: Sentinel-2 digital numbers (reflectance x 10000) for the 12 optical layers, slope in
  degrees, DEM in metres: an L2A product's integer files stacked as they are;
- ``l4s``: the Landslide4Sense ``.h5`` patches: the DN convention divided by the dataset's
  mean vector (``inputs.L4S_IMG_MEAN``), so every layer's mean over the dataset is ~1.

The typical value of a layer in a convention is the L4S dataset mean expressed in it. They let
a model card without training statistics still say what its inputs look like, and let a card's
statistics tell which convention its model was trained in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..bands import BAND_INDEX, N_BANDS
from .inputs import L4S_IMG_MEAN

Units = Literal["reflectance", "dn", "l4s"]
KNOWN_UNITS: tuple[Units, ...] = ("reflectance", "dn", "l4s")

_OPTICAL = slice(0, 12)
#: Features that are one layer under another name (``bands.DERIVED``); NDVI is a ratio: no unit.
FEATURE_LAYER = {"R": "B4", "G": "B3", "B": "B2"}
#: ``inputs.units`` (what ingest writes) -> the card's name for the same convention.
INPUTS_UNITS = {"physical": "reflectance", "l4s": "l4s"}
#: The most a layer's typical value (median, or spread) can be in physical units: reflectance
#: well above 1 is saturation, not ground; no slope exceeds 90 degrees, no land 9000 m. A scene
#: beyond these in a model's units is in other units, whatever the other layers say.
PHYSICAL_MAX = np.array([1.5] * 12 + [90.0, 9000.0])


def scale_from_physical(units: Units) -> np.ndarray:
    """Per-layer factor (14,) that turns physical values into ``units``."""
    scale = np.ones(N_BANDS)
    if units == "dn":
        scale[_OPTICAL] = 10000.0
    elif units == "l4s":
        scale[_OPTICAL] = 10000.0
        scale /= np.asarray(L4S_IMG_MEAN)
    return scale


def layer_units(layer: str, units: Units) -> str:
    """How ``layer`` is expressed in ``units``, in words (``slope``, ``l4s`` -> L4S scaling, degrees / 20.29)."""
    i = BAND_INDEX[layer]
    physical = {"slope": "degrees", "DEM": "metres"}.get(layer)
    if units == "l4s":
        return f"L4S scaling ({physical or 'DN'} / {L4S_IMG_MEAN[i]:.4g})"
    if physical:
        return physical
    return "reflectance 0-1" if units == "reflectance" else "digital numbers (reflectance x 10000)"


def typical_values(units: Units) -> np.ndarray:
    """The L4S dataset's per-layer means (14,) expressed in ``units``."""
    return np.asarray(L4S_IMG_MEAN) / scale_from_physical("dn") * scale_from_physical(units)


def feature_layers(features: Sequence[str]) -> list[str | None]:
    """Each feature's layer (``R`` -> ``B4``), None for features without a unit (NDVI)."""
    return [FEATURE_LAYER.get(f, f) if FEATURE_LAYER.get(f, f) in BAND_INDEX else None for f in features]


def guess_units(features: Sequence[str], means: Sequence[float], *, tolerance: float = 0.5) -> Units | None:
    """The convention whose typical values the per-feature ``means`` fit best, if they fit it within
    ``tolerance`` (median |log10 ratio| over layers: 0.5 is a factor of ~3); else None."""
    pairs = [
        (BAND_INDEX[layer], abs(m))
        for layer, m in zip(feature_layers(features), means)
        if layer is not None and abs(m) > 0
    ]
    if not pairs:
        return None
    idx = np.array([i for i, _ in pairs])
    logs = np.log10([m for _, m in pairs])
    misfit = {u: float(np.median(np.abs(logs - np.log10(typical_values(u)[idx])))) for u in KNOWN_UNITS}
    best = min(misfit, key=misfit.__getitem__)
    return best if misfit[best] <= tolerance else None
