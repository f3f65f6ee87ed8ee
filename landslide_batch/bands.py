"""Band layout of Landslide4Sense scenes and the input features models are trained on.

Feature derivation lives here, once, and is used by training and inference alike.
It works on numpy arrays and torch tensors (bands on axis ``-3``: ``(..., 14, H, W)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

#: The 14 layers of a Landslide4Sense patch, in file order: Sentinel-2 B1..B12, then
#: ALOS PALSAR slope and DEM (layers 13 and 14 of the L4S documentation).
L4S_BANDS: tuple[str, ...] = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B9",
    "B10",
    "B11",
    "B12",
    "slope",
    "DEM",
)
N_BANDS = len(L4S_BANDS)
BAND_INDEX = {name: i for i, name in enumerate(L4S_BANDS)}

#: Derived features: name -> bands they need.
DERIVED = {
    "R": ("B4",),
    "G": ("B3",),
    "B": ("B2",),
    "NDVI": ("B8", "B4"),
}

#: Named feature sets a model card may refer to.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "l4s14": L4S_BANDS,
    "rgb_ndvi_slope_dem": ("R", "G", "B", "NDVI", "slope", "DEM"),
}

RGB_BANDS = ("B4", "B3", "B2")
NDVI_EPS = 1e-6


def resolve_features(features: str | Sequence[str]) -> tuple[str, ...]:
    """A feature-set name or an explicit list -> validated tuple of feature names."""
    if isinstance(features, str):
        if features not in FEATURE_SETS:
            raise ConfigError(
                f"unknown feature set {features!r}; expected one of {sorted(FEATURE_SETS)} "
                f"or a list of features from {list(L4S_BANDS) + sorted(DERIVED)}"
            )
        return FEATURE_SETS[features]
    names = tuple(features)
    unknown = [f for f in names if f not in BAND_INDEX and f not in DERIVED]
    if unknown or not names:
        raise ConfigError(
            f"unknown input features {unknown or '(empty list)'}; expected names from "
            f"{list(L4S_BANDS) + sorted(DERIVED)}"
        )
    return names


def _xp(x: Any):
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def derive_features(bands: Any, features: Sequence[str]) -> Any:
    """Stack the requested features from the 14 raw L4S bands.

    ``bands`` is ``(..., 14, H, W)`` (numpy or torch); returns ``(..., F, H, W)`` of the same
    kind. Raw bands are taken as they are; NDVI = (B8 - B4) / (B8 + B4), 0 where the sum is 0.
    The 14 bands in their order are ``bands`` itself, not a copy (a model on the raw bands: a
    1024² block's window is 74 MB).
    """
    if bands.shape[-3] != N_BANDS:
        raise InputError(
            f"expected {N_BANDS} bands in Landslide4Sense order {list(L4S_BANDS)}, "
            f"found {bands.shape[-3]} (array shape {tuple(bands.shape)})"
        )
    if tuple(features) == L4S_BANDS:
        return bands
    xp = _xp(bands)
    out = []
    for name in features:
        if name in BAND_INDEX:
            out.append(bands[..., BAND_INDEX[name], :, :])
        elif name == "NDVI":
            nir = bands[..., BAND_INDEX["B8"], :, :]
            red = bands[..., BAND_INDEX["B4"], :, :]
            denom = nir + red
            safe = xp.where(xp.abs(denom) > NDVI_EPS, denom, xp.ones_like(denom))
            ndvi = xp.where(xp.abs(denom) > NDVI_EPS, (nir - red) / safe, xp.zeros_like(denom))
            out.append(xp.where(xp.isnan(denom), denom, ndvi))
        else:
            out.append(bands[..., BAND_INDEX[DERIVED[name][0]], :, :])
    return xp.stack(out, axis=-3) if xp is np else xp.stack(out, dim=-3)
