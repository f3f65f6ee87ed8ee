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
DEM x 772.8) is what names the likely cause. NDVI (a ratio) carries no unit information.

A median hides a few wrong layers (slope in degrees and DEM in metres inside an otherwise
L4S-scaled stack: median factor 1.03), so each layer is also judged on its own: refused when its
typical value is beyond what the layer can be in the model's units (``PHYSICAL_MAX``: slope 90
degrees is 4.4 in L4S scaling), or when it is off by ``ORDER`` or more and that layer's own factor
between two conventions (itself ``ORDER`` or more) explains it within ``PATTERN``. A layer a
model uses that holds one value over every sampled pixel (all zeros: an empty band) is refused by
name too, except B10, which L2A products lack (a constant B10 is a warning; one the ingest filled
by ``inputs.b10`` says so already).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from ..bands import BAND_INDEX, DERIVED, L4S_BANDS
from ..errors import UnitsMismatchError
from ..ingest.units import (
    KNOWN_UNITS,
    PHYSICAL_MAX,
    Units,
    feature_layers,
    layer_units,
    scale_from_physical,
    typical_values,
)
from ..models.card import ModelCard

ORDER = 1.0  # median |log10 ratio| that refuses whatever the pattern: a factor of 10
PATTERN = 0.5  # ... that refuses when a known conversion explains the ratios: a factor of ~3
SAMPLE_WINDOWS = 36
SAMPLE_SIZE = 64
LISTED = 6  # layers named in a refusal, the most different first
MIN_CONSTANT_PIXELS = 100  # sampled valid pixels below which one value per layer proves nothing
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
    low: np.ndarray  # smallest and largest sampled value: equal for a constant layer
    high: np.ndarray
    filled: frozenset[str] = frozenset()  # layers the ingest filled by a rule (B10), warned there

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
    layers_off: tuple[tuple[str, str], ...] = ()  # (layer, why) for each layer wrong on its own

    def record(self) -> dict:
        return {
            "model": self.model,
            "reference": self.reference,
            "layers": len(self.layers),
            "median_factor": round(10**self.median_log_ratio, 4),
            "likely_cause": "{} scene for a {} model".format(*self.cause) if self.cause else None,
            "layers_off": [layer for layer, _ in self.layers_off],
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
    layers = scene.attrs.get("ingest", {}).get("layers", {})
    filled = frozenset(name for name, info in layers.items() if "filled" in info)
    if data.shape[1] == 0:  # valid pixels only outside the sampled windows: no evidence either way
        nan = np.full(len(L4S_BANDS), np.nan)
        return SceneSample(nan, nan, nan, 0, nan, nan, filled)
    low, p25, median, p75, high = np.percentile(data, [0, 25, 50, 75, 100], axis=1)
    return SceneSample(median, p25, p75, data.shape[1], low, high, filled)


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
    off = tuple(
        found
        for i, lg, s, t in zip(idx, logs, scene, trained)
        if (found := _layer_off(L4S_BANDS[i], float(lg), float(s), float(t), card.input_units)) is not None
    )
    refused = _by_median(same, explained) or bool(off)
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
        off,
    )


def _by_median(same: float, explained: bool) -> bool:
    """Whether the median |log10 ratio| over the layers refuses: see the module's docstring."""
    return same >= ORDER or (same >= PATTERN and explained)


def _layer_off(layer: str, log: float, scene: float, trained: float, model_units: str | None) -> tuple[str, str] | None:
    """Pure: (layer, why) when one layer is wrong on its own, whatever the others say: its typical
    value is beyond what the layer can be in the model's units, or it is off by ``ORDER`` or more
    and that layer's factor between two known conventions explains it within ``PATTERN``."""
    i = BAND_INDEX[layer]
    known: list[Units] = [model_units] if model_units in KNOWN_UNITS else list(KNOWN_UNITS)
    factors = {
        (u, v): float(np.log10(scale_from_physical(u)[i] / scale_from_physical(v)[i]))
        for u, v in permutations(KNOWN_UNITS, 2)
        if v in known
    }
    # Only conversions of ORDER or more: a smaller one (B10's L4S divisor, 9.05) is within the
    # layer's natural spread from scene to scene.
    factors = {pair: f for pair, f in factors.items() if abs(f) >= ORDER}
    cause = min(factors, key=lambda pair: abs(log - factors[pair]), default=None)
    explained = cause is not None and abs(log) >= ORDER and abs(log - factors[cause]) <= PATTERN
    most = PHYSICAL_MAX[i] * scale_from_physical(known[0])[i] if len(known) == 1 else np.inf
    if not (explained or scene > most):
        return None
    why = f"{layer} {scene:.4g} vs {trained:.4g} (x{10**log:.3g}"
    if scene > most:
        why += f"; no {layer} exceeds {most:.4g} in {layer_units(layer, known[0])}"
    if explained and cause is not None:
        u, v = cause
        why += (
            f"; it looks like {layer_units(layer, u)} for a model trained on {layer_units(layer, v)}: "
            f"multiply {layer} by {10 ** -factors[cause]:.4g}"
        )
    return layer, why + ")"


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
    """A refused member in words: the layers, the scene's values, the trained ones, cause and fix;
    a member refused for a few layers alone (the median fits) names those layers and their fix."""
    same = float(np.median(np.abs(np.log10(np.divide(verdict.scene, verdict.trained)))))
    if verdict.layers_off and not _by_median(same, verdict.cause is not None):
        return (
            f"model {verdict.model}: {len(verdict.layers_off)} of {len(verdict.layers)} layers are not in the "
            f"units it was trained on (from {verdict.reference}), although the others are: "
            + "; ".join(why for _, why in verdict.layers_off)
        )
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
    empty, b10 = constant_layers(sample, cards)
    refused += empty
    if refused and not accept:
        raise UnitsMismatchError(
            "the scene is not in the units the model was trained on:\n  "
            + "\n  ".join(refused)
            + f"\nIf the values are right and the scene is genuinely unlike the training data, run with {FLAG}"
        )
    warnings = [f"units mismatch accepted ({FLAG}): {msg}" for msg in refused]
    return verdicts, warnings + b10


def constant_layers(sample: SceneSample, cards: list[ModelCard]) -> tuple[list[str], list[str]]:
    """Pure: layers the models use that hold one value over every sampled pixel, in words ->
    (refusals, warnings). Such a layer is empty or zero-filled, not an observation; a constant
    B10 is a warning only (L2A products lack it), and none where the ingest filled it by rule."""
    if sample.pixels < MIN_CONSTANT_PIXELS:
        return [], []
    users: dict[str, list[str]] = {}
    for card in cards:
        for layer in dict.fromkeys(b for f in card.features for b in DERIVED.get(f, (f,))):
            users.setdefault(layer, []).append(card.name)
    refusals, warnings = [], []
    for layer, names in users.items():
        i = BAND_INDEX[layer]
        if layer in sample.filled or sample.low[i] != sample.high[i]:
            continue
        msg = (
            f"layer {layer} holds one value ({sample.low[i]:.4g}) over every sampled valid pixel: "
            f"an empty or filled band, not an observation (used by model {', '.join(names)})"
        )
        if layer == "B10":
            warnings.append(msg + "; L2A products lack B10, see inputs.b10 in docs/inputs.md")
        else:
            refusals.append(msg + ". Check the band's source file")
    return refusals, warnings
