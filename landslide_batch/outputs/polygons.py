"""Landslide objects: connected mask regions -> polygons with per-object attributes.

Blocks are vectorised one at a time (memory bounded by the block), and pieces cut by
block edges are merged afterwards, combining their pixel statistics (sums, maxima, minima), so
an object's attributes do not depend on the block grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio import features

from ..ingest.scene import SceneInfo
from .areas import object_areas_m2

#: Polygon formats -> product name. GeoParquet carries the CRS in its ``geo`` metadata (PROJJSON).
POLYGON_FILES = {"gpkg": "landslides.gpkg", "parquet": "landslides.parquet", "fgb": "landslides.fgb"}


@dataclass
class Piece:
    geom: Any  # a shapely geometry
    pixels: int
    prob_sum: float
    slope_sum: float
    on_edge: bool
    prob_max: float = np.nan
    #: Statistics of the collector's extra layers (``ObjectCollector.reductions``), by name.
    extra: dict[str, float] = field(default_factory=dict)


#: How an extra layer's statistic is taken per window and combined across pieces.
REDUCTIONS = {"sum": (np.add, "sum_labels"), "min": (np.fmin, "minimum"), "max": (np.fmax, "maximum")}


@dataclass
class ObjectCollector:
    info: SceneInfo
    pieces: list[Piece] = field(default_factory=list)
    #: Pieces inside a window (touching none of its edges) are whole objects: those smaller than
    #: this are never written, so they are not kept either (memory grows with the objects kept).
    min_pixels: int = 0
    #: Extra layers ``add_window`` is given (name -> "sum", "min" or "max" of ``REDUCTIONS``).
    reductions: dict[str, str] = field(default_factory=dict)

    def add_window(
        self,
        y0: int,
        x0: int,
        mask: np.ndarray,
        prob: np.ndarray,
        slope: np.ndarray | None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        from scipy import ndimage  # here, not at import: a job imports it beside its blocks
        from shapely.geometry import shape
        from shapely.ops import unary_union

        labels, n = ndimage.label(mask)  # 4-connectivity, as rasterio.features.shapes
        if n == 0:
            return
        idx = np.arange(1, n + 1)
        pixels = ndimage.sum_labels(np.ones_like(prob), labels, idx)
        prob_sum = ndimage.sum_labels(prob, labels, idx)
        slope_sum = ndimage.sum_labels(slope, labels, idx) if slope is not None else np.zeros(n)
        prob_max = ndimage.maximum(prob, labels, idx)
        stats = {
            name: getattr(ndimage, REDUCTIONS[how][1])((extra or {})[name], labels, idx)
            for name, how in self.reductions.items()
        }
        edge = np.zeros(n + 1, bool)
        h, w = mask.shape
        for border in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            edge[border] = True
        keep = edge.copy()
        keep[1:] |= pixels >= self.min_pixels
        keep[0] = False  # the background
        transform = self.info.affine @ self.info.affine.translation(x0, y0)
        geoms: dict[int, list] = {}
        for geom, value in features.shapes(labels.astype(np.int32), mask=keep[labels], transform=transform):
            geoms.setdefault(int(value), []).append(shape(geom))
        for i in idx[keep[1:]]:
            parts = geoms[int(i)]
            self.pieces.append(
                Piece(
                    parts[0] if len(parts) == 1 else unary_union(parts),
                    int(pixels[i - 1]),
                    float(prob_sum[i - 1]),
                    float(slope_sum[i - 1]),
                    bool(edge[i]),
                    float(prob_max[i - 1]),
                    {name: float(v[i - 1]) for name, v in stats.items()},
                )
            )

    def objects(self) -> list[Piece]:
        """Merge pieces that share an edge across window borders."""
        from shapely.ops import unary_union
        from shapely.strtree import STRtree

        inner = [p for p in self.pieces if not p.on_edge]
        edge = [p for p in self.pieces if p.on_edge]
        if not edge:
            return inner
        tree = STRtree([p.geom for p in edge])
        parent = list(range(len(edge)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, p in enumerate(edge):
            for j in tree.query(p.geom, predicate="intersects"):
                if j > i and p.geom.intersection(edge[j].geom).length > 0:  # shared edge, not a corner
                    parent[find(j)] = find(i)
        groups: dict[int, list[Piece]] = {}
        for i, p in enumerate(edge):
            groups.setdefault(find(i), []).append(p)
        merged = [
            Piece(
                unary_union([p.geom for p in g]) if len(g) > 1 else g[0].geom,
                sum(p.pixels for p in g),
                sum(p.prob_sum for p in g),
                sum(p.slope_sum for p in g),
                True,
                max(p.prob_max for p in g),
                {
                    name: float(REDUCTIONS[how][0].reduce([p.extra[name] for p in g]))
                    for name, how in self.reductions.items()
                },
            )
            for g in groups.values()
        ]
        return inner + merged


def write_polygons(
    dest, info: SceneInfo, objects: list[Piece], min_pixels: int, has_slope: bool, columns: dict | None = None
) -> int:
    """Write objects with at least ``min_pixels`` pixels, in the format ``dest``'s suffix names
    (GeoPackage, GeoParquet or FlatGeobuf, see ``POLYGON_FILES``), with ``columns`` (name -> one
    value per object, e.g. a change-aware map's ``status``) after the attributes; returns how many."""
    import geopandas as gpd

    keep = [o.pixels >= min_pixels for o in objects]
    kept = [o for o, k in zip(objects, keep) if k]
    data = {
        "object_id": np.arange(1, len(kept) + 1, dtype=np.int64),
        "pixels": np.array([o.pixels for o in kept], dtype=np.int64),
        "area_m2": object_areas_m2(info, [o.geom for o in kept], [o.pixels for o in kept]),
        "mean_probability": np.array([o.prob_sum / o.pixels for o in kept], dtype=np.float64),
        "max_probability": np.array([o.prob_max for o in kept], dtype=np.float64),
        "mean_slope_deg": np.array([o.slope_sum / o.pixels if has_slope else np.nan for o in kept], dtype=np.float64),
        **{name: [v for v, k in zip(values, keep) if k] for name, values in (columns or {}).items()},
    }
    gdf = gpd.GeoDataFrame(data, geometry=[o.geom for o in kept], crs=info.crs)
    _save(gdf, Path(dest))
    return len(kept)


def _save(gdf, dest: Path) -> None:
    fmt = dest.suffix[1:]
    if fmt == "parquet":
        gdf.to_parquet(dest)
    elif fmt in ("gpkg", "fgb"):
        gdf.to_file(dest, layer="landslides", driver="GPKG" if fmt == "gpkg" else "FlatGeobuf", engine="pyogrio")
    else:
        raise ValueError(f"{dest}: unknown polygon format {fmt!r}; expected one of {sorted(POLYGON_FILES)}")
