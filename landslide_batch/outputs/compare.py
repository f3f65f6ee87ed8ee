"""Scores of a landslide map against an inventory: pure functions, no I/O (``landslide-batch compare``).

Rules (also in docs/compare.md):

- **Objects** are matched by overlap: a mapped object and an inventory object match when their
  intersection has a positive area and their intersection over union is at least ``min_iou``.
  Object precision is the share of mapped objects that match at least one inventory object;
  object recall the share of (observed) inventory objects matched by at least one mapped object;
  F1 their harmonic mean. A landslide mapped as two pieces counts both pieces as right.
- **Pixels** are counted on the map's grid over observed pixels only; precision = |P∩R| / |P|,
  recall = |P∩R| / |R|, IoU = |P∩R| / |P∪R|.
- **Size classes** (``SIZE_CLASSES``, by an object's area in m²): an inventory object counts
  towards its class's recall, a mapped object towards its class's precision. Per class, pixel
  precision is over the pixels of the class's mapped objects, pixel recall over the pixels of the
  class's inventory objects, and IoU = F1 / (2 − F1) (the identity that holds over all pixels).
- A ratio with nothing to count (no mapped object, an empty inventory) is ``None`` (null in
  JSON), never 0 or 1; F1 is None when precision or recall is, 0 when both are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Default smallest intersection over union for a mapped and an inventory object to match.
DEFAULT_MIN_IOU = 0.1
#: (name, smallest area, largest area) in m²; an object belongs to the class with lo <= area < hi.
SIZE_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 1_000.0),
    ("medium", 1_000.0, 10_000.0),
    ("large", 10_000.0, math.inf),
)
ALL = "all"
CLASS_NAMES = (ALL, *(name for name, _, _ in SIZE_CLASSES))


def size_class(areas_m2: np.ndarray) -> np.ndarray:
    """Index into ``SIZE_CLASSES`` of each area (an area that is not a number counts as small)."""
    bounds = np.array([hi for _, _, hi in SIZE_CLASSES[:-1]])
    return np.searchsorted(bounds, np.nan_to_num(np.asarray(areas_m2, dtype=np.float64)), side="right")


def match_objects(mapped: list, inventory: list, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (which mapped objects match an inventory object, which inventory objects match a
    mapped object), both bool arrays; shapely geometries in one CRS."""
    from shapely.strtree import STRtree

    mapped_hit = np.zeros(len(mapped), bool)
    inventory_hit = np.zeros(len(inventory), bool)
    if not mapped or not inventory:
        return mapped_hit, inventory_hit
    tree = STRtree(inventory)
    for i, geom in enumerate(mapped):
        for j in tree.query(geom, predicate="intersects"):
            overlap = geom.intersection(inventory[j]).area
            if overlap > 0 and overlap / geom.union(inventory[j]).area >= min_iou:
                mapped_hit[i] = inventory_hit[j] = True
    return mapped_hit, inventory_hit


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def object_scores(mapped_hit, mapped_class, inventory_hit, inventory_class) -> dict[str, dict]:
    """Object precision, recall and F1, over all objects and per size class."""
    scores = {}
    for c, name in enumerate(CLASS_NAMES):
        m = np.ones(len(mapped_hit), bool) if name == ALL else np.asarray(mapped_class) == c - 1
        r = np.ones(len(inventory_hit), bool) if name == ALL else np.asarray(inventory_class) == c - 1
        p, rc = ratio(int(mapped_hit[m].sum()), int(m.sum())), ratio(int(inventory_hit[r].sum()), int(r.sum()))
        scores[name] = {
            "mapped": int(m.sum()),
            "mapped_matched": int(mapped_hit[m].sum()),
            "inventory": int(r.sum()),
            "inventory_matched": int(inventory_hit[r].sum()),
            "precision": p,
            "recall": rc,
            "f1": f1(p, rc),
        }
    return scores


@dataclass
class PixelCounts:
    """Pixel counts over observed pixels, summed window by window. Per size class ``c``:
    ``mapped[c]`` pixels of class-c mapped objects, ``mapped_right[c]`` those inside the
    inventory, ``inventory[c]`` pixels of class-c inventory objects, ``inventory_found[c]`` those
    mapped. Index 0 is all objects (``CLASS_NAMES``)."""

    mapped: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), np.int64))
    mapped_right: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), np.int64))
    inventory: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), np.int64))
    inventory_found: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), np.int64))
    observed: int = 0

    def add(self, observed: np.ndarray, mapped_class: np.ndarray, inventory_classes: list[np.ndarray]) -> None:
        """One window: ``observed`` (bool), ``mapped_class`` (0 none, c + 1 for size class c),
        ``inventory_classes`` (one bool mask per size class; inventory objects may overlap)."""
        in_inventory = np.logical_or.reduce(inventory_classes) & observed
        mapped = (mapped_class > 0) & observed
        self.observed += int(observed.sum())
        self.mapped[0] += int(mapped.sum())
        self.mapped_right[0] += int((mapped & in_inventory).sum())
        self.inventory[0] += int(in_inventory.sum())
        self.inventory_found[0] += int((mapped & in_inventory).sum())
        for c, inv in enumerate(inventory_classes, start=1):
            cls = (mapped_class == c) & observed
            self.mapped[c] += int(cls.sum())
            self.mapped_right[c] += int((cls & in_inventory).sum())
            inv = inv & observed
            self.inventory[c] += int(inv.sum())
            self.inventory_found[c] += int((inv & mapped).sum())


def pixel_scores(counts: PixelCounts) -> dict[str, dict]:
    """Pixel precision, recall, F1 and IoU, over all pixels and per size class."""
    scores = {}
    for c, name in enumerate(CLASS_NAMES):
        p = ratio(int(counts.mapped_right[c]), int(counts.mapped[c]))
        r = ratio(int(counts.inventory_found[c]), int(counts.inventory[c]))
        score = f1(p, r)
        if c == 0:
            union = counts.mapped[0] + counts.inventory[0] - counts.mapped_right[0]
            iou = ratio(int(counts.mapped_right[0]), int(union))
        else:
            iou = None if score is None else score / (2 - score)
        scores[name] = {
            "mapped_px": int(counts.mapped[c]),
            "inventory_px": int(counts.inventory[c]),
            "precision": p,
            "recall": r,
            "f1": score,
            "iou": iou,
        }
    return scores


def markdown_table(objects: dict[str, dict], pixels: dict[str, dict]) -> str:
    """The scores as one Markdown table, a row per size class (``-`` for an undefined ratio)."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        "| size class | mapped objects | inventory objects | object precision | object recall | object F1 "
        "| pixel precision | pixel recall | pixel F1 | pixel IoU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CLASS_NAMES:
        o, p = objects[name], pixels[name]
        rows.append(
            f"| {name} | {o['mapped']} | {o['inventory']} | {fmt(o['precision'])} | {fmt(o['recall'])} "
            f"| {fmt(o['f1'])} | {fmt(p['precision'])} | {fmt(p['recall'])} | {fmt(p['f1'])} | {fmt(p['iou'])} |"
        )
    return "\n".join(rows) + "\n"
