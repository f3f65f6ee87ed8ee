"""The units guard: refuse a scene whose values are not in the units a model was trained on.

A model fed digital numbers (reflectance x 10000) after training on reflectance, or reflectance
after training on Landslide4Sense-scaled patches, maps with confidence and is wrong. Before any
block is predicted, the scene store is sampled (a few dozen windows spread over it, valid pixels
only) and each layer's median and quartiles are compared with every member's training
statistics (the card's normalisation means and stds; for a card without statistics, the L4S
dataset's typical values in the card's ``input_units``).

Per compared feature the log10 ratio of the scene's typical magnitude to the training one is
taken. A member is refused when the median over its features is an order of magnitude or more
(``ORDER``), or when it is half an order or more (``PATTERN``) and the ratios follow a known
conversion between conventions (``ingest/units.py``) at least twice as closely as "same units":
the pattern of the per-layer factors (optical x 10000, or x L4S divisor, slope x 20.29,
DEM x 772.8) is what names the likely cause. NDVI (a ratio) and constant layers (a zero-filled
B10) carry no unit information and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from ..bands import BAND_INDEX, L4S_BANDS
from ..errors import UnitsMismatchError
from ..ingest.units import (
    KNOWN_UNITS,
    feature_layers,
    scale_from_physical,
    typical_values,
)
from ..models.card import ModelCard

ORDER = 1.0  # median |log10 ratio| that refuses whatever the pattern: a factor of 10
PATTERN = 0.5  # ... that refuses when a known conversion explains the ratios: a factor of ~3
SAMPLE_WINDOWS = 36
SAMPLE_SIZE = 64
LISTED = 6  # layers named in a refusal, the most different first
FLAG = "--accept-units-mismatch (job key accept_units_mismatch: true)"

DESCRIBE = {
    "reflectance": "reflectance 0-1 (slope in degrees, DEM in metres)",
    "dn": "Sentinel-2 digital numbers (reflectance x 10000; slope in degrees, DEM in metres)",
    "l4s": "Landslide4Sense scaling (each layer divided by the L4S mean vector, values ~1)",
}


@dataclass(frozen=True)
class SceneSample:
    """Robust per-layer statistics of valid pixels sampled over a scene: arrays (14,)."""

    median: np.ndarray
    p25: np.ndarray
    p75: np.ndarray
    pixels: int

    def scale(self) -> np.ndarray:
        """Typical magnitude per layer: |median|, or the spread where values centre on 0."""
        return np.maximum(np.abs(self.median), (self.p75 - self.p25) / 1.349)


@dataclass(frozen=True)
class Verdict:
    """One member's comparison: per compared layer the scene's and the training's typical values."""

    model: str
    reference: str  # where the training values come from
    layers: tuple[str, ...]
    scene: tuple[float, ...]
    trained: tuple[float, ...]
    median_log_ratio: float
    cause: tuple[str, str] | None  # (scene units, model units) of the best-fitting known conversion
    refused: bool

    def record(self) -> dict:
        return {
            "model": self.model,
            "reference": self.reference,
            "layers": len(self.layers),
            "median_factor": round(10**self.median_log_ratio, 4),
            "likely_cause": "{} scene for a {} model".format(*self.cause) if self.cause else None,
            "mismatch": self.refused,
        }


def sample_windows(height: int, width: int, n: int = SAMPLE_WINDOWS, size: int = SAMPLE_SIZE):
    """Up to ``n`` windows (y0, y1, x0, x1) of ``size`` px on a regular grid over the scene."""
    k = int(np.ceil(np.sqrt(n)))

    def starts(extent: int, window: int) -> list[int]:  # window centres at (i + 1/2) / k, kept inside
        return sorted({min(max(round((i + 0.5) * extent / k - window / 2), 0), extent - window) for i in range(k)})

    wy, wx = min(size, height), min(size, width)
    return [(y, y + wy, x, x + wx) for y in starts(height, wy) for x in starts(width, wx)]


def sample_scene(scene) -> SceneSample:
    """Read the sample windows of a scene store (``ingest.Scene``) -> robust statistics."""
    values = []
    for y0, y1, x0, x1 in sample_windows(*scene.shape):
        bands, valid = scene.read(y0, y1, x0, x1)
        values.append(bands[:, valid])
    data = np.concatenate(values, axis=1).astype(np.float64)
    if data.shape[1] == 0:  # valid pixels only outside the sampled windows: no evidence either way
        nan = np.full(len(L4S_BANDS), np.nan)
        return SceneSample(nan, nan, nan, 0)
    p25, median, p75 = np.percentile(data, [25, 50, 75], axis=1)
    return SceneSample(median, p25, p75, data.shape[1])


def training_reference(card: ModelCard) -> tuple[str, list[str], np.ndarray] | None:
    """(what the values are, layers, typical magnitudes) of a card, or None when it states nothing."""
    layers = feature_layers(card.features)
    if card.has_statistics:
        norm = card.normalization
        scale = np.maximum(np.abs(norm.mean), norm.std)
        keep = [i for i, layer in enumerate(layers) if layer is not None]
        named = [layer for layer in layers if layer is not None]
        return "the card's training statistics", named, scale[keep]
    if card.input_units in KNOWN_UNITS:
        named = [layer for layer in layers if layer is not None]
        typical = typical_values(card.input_units)[[BAND_INDEX[layer] for layer in named]]
        return f"typical L4S values in the card's input_units '{card.input_units}'", named, typical
    return None


def compare(card: ModelCard, sample: SceneSample) -> Verdict | None:
    """Pure: a member's verdict on a scene sample; None when there is nothing to compare."""
    ref = training_reference(card)
    if ref is None or sample.pixels == 0:
        return None
    reference, layers, trained = ref
    idx = np.array([BAND_INDEX[layer] for layer in layers], dtype=int)
    scene = sample.scale()[idx] if len(idx) else np.array([])
    usable = (scene > 0) & (trained > 0) & np.isfinite(scene)
    if usable.sum() < 2:
        return None
    idx, scene, trained = idx[usable], scene[usable], trained[usable]
    logs = np.log10(scene / trained)
    same = float(np.median(np.abs(logs)))
    model_units = [card.input_units] if card.input_units in KNOWN_UNITS else list(KNOWN_UNITS)
    fits = {
        (u, v): float(np.median(np.abs(logs - np.log10(scale_from_physical(u)[idx] / scale_from_physical(v)[idx]))))
        for u, v in permutations(KNOWN_UNITS, 2)
        if v in model_units
    }
    best = min(fits, key=fits.__getitem__)
    explained = fits[best] <= same / 2
    refused = same >= ORDER or (same >= PATTERN and explained)
    median_log = float(np.median(logs))
    return Verdict(
        card.name,
        reference,
        tuple(L4S_BANDS[i] for i in idx),
        tuple(scene.tolist()),
        tuple(trained.tolist()),
        median_log,
        best if explained else None,
        refused,
    )


def _cause_and_fix(cause: tuple[str, str] | None) -> str:
    if cause is None:
        return (
            "none of the known conventions (digital numbers x 10000, reflectance 0-1, L4S scaling) explains the "
            "difference. Check how the scene was scaled, or use a model trained on data like it"
        )
    scene_units, model_units = cause
    fixes = {
        ("reflectance", "l4s"): "set inputs.units: l4s in the job (ingest converts reflectance to L4S scaling)",
        ("dn", "l4s"): "set inputs: {units: l4s, reflectance: {mode: l2a, boa_add_offset: 0}} in the job "
        "(digital numbers -> reflectance -> L4S scaling; boa_add_offset -1000 for Sentinel-2 "
        "processing baseline 04.00 or later)",
        ("dn", "reflectance"): "set inputs: {reflectance: {mode: l2a, boa_add_offset: 0}} in the job (digital "
        "numbers -> reflectance; boa_add_offset -1000 for processing baseline 04.00 or later)",
    }
    fix = fixes.get(
        cause,
        f"rescale the scene to {DESCRIBE[model_units]} (docs/inputs.md, 'Units'), or use a "
        f"model trained on {scene_units} data",
    )
    return (
        f"the scene looks like {DESCRIBE[scene_units]}, the model was trained on {DESCRIBE[model_units]}. To fix: {fix}"
    )


def describe(verdict: Verdict) -> str:
    """A refused member in words: the layers, the scene's values, the trained ones, cause and fix."""
    rows = sorted(zip(verdict.layers, verdict.scene, verdict.trained), key=lambda r: -abs(np.log10(r[1] / r[2])))
    off = [r for r in rows if abs(np.log10(r[1] / r[2])) >= PATTERN] or rows[:3]
    listing = ", ".join(f"{layer} {s:.4g} vs {t:.4g}" for layer, s, t in off[:LISTED])
    listing += f" and {len(off) - LISTED} more layers" if len(off) > LISTED else ""
    return (
        f"model {verdict.model}: the scene's values are ~{10**verdict.median_log_ratio:.3g}x the values it "
        f"was trained on (median over {len(verdict.layers)} layers; from {verdict.reference}). "
        f"Typical values, scene vs training: {listing}. Likely cause: {_cause_and_fix(verdict.cause)}"
    )


def units_guard(sample: SceneSample, cards: list[ModelCard], accept: bool) -> tuple[list[Verdict], list[str]]:
    """Compare every member; -> (verdicts, warnings). A mismatch raises UnitsMismatchError unless
    ``accept``, in which case it becomes a warning (recorded in run.json)."""
    verdicts = [v for v in (compare(card, sample) for card in cards) if v is not None]
    refused = [describe(v) for v in verdicts if v.refused]
    if refused and not accept:
        raise UnitsMismatchError(
            "the scene is not in the units the model was trained on:\n  "
            + "\n  ".join(refused)
            + f"\nIf the values are right and the scene is genuinely unlike the training data, run with {FLAG}"
        )
    warnings = [f"units mismatch accepted ({FLAG}): {msg}" for msg in refused]
    return verdicts, warnings
