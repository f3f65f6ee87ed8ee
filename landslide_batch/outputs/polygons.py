"""Landslide objects: connected mask regions -> polygons with per-object attributes.

Blocks are vectorised one at a time (memory bounded by the block), and pieces cut by
block edges are merged afterwards, combining their pixel statistics (sums, maxima, minima), so
an object's attributes do not depend on the block grid.

Pieces are held column by column (:class:`Pieces`: a shapely 2 geometry array beside numpy arrays
of their statistics), never as one Python object per object: a map of 100,000 objects costs its
geometries and a few numbers each. Which pieces make one object is read from the labels on the
windows' borders (a pixel of one piece beside a pixel of another across a border: a shared edge,
4-connectivity), not from polygon intersections; their polygon is the union of their shells with
every hole of theirs and of that union (a piece's holes lie inside its shell, in one window, so
they stay holes of the object): the union of a map-wide object's many-holed pieces took minutes.
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
    """One object (or piece of one), as :meth:`ObjectCollector.objects` lists them."""

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
#: How each of the base statistics combines across pieces.
BASE_REDUCTIONS = {"pixels": np.add, "prob_sum": np.add, "slope_sum": np.add, "prob_max": np.fmax}


@dataclass
class Pieces:
    """Objects or pieces of them, one row each, column by column."""

    geom: np.ndarray  # shapely geometries (object array)
    pixels: np.ndarray  # int64
    prob_sum: np.ndarray
    slope_sum: np.ndarray
    prob_max: np.ndarray
    on_edge: np.ndarray  # bool
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pixels)

    def take(self, rows) -> Pieces:
        """The pieces at ``rows`` (indices or a boolean mask)."""
        return Pieces(
            self.geom[rows],
            self.pixels[rows],
            self.prob_sum[rows],
            self.slope_sum[rows],
            self.prob_max[rows],
            self.on_edge[rows],
            {name: v[rows] for name, v in self.extra.items()},
        )

    @classmethod
    def empty(cls, names) -> Pieces:
        f = np.zeros(0)
        return cls(np.empty(0, object), np.zeros(0, np.int64), f, f, f, np.zeros(0, bool), {n: f for n in names})

    @classmethod
    def concat(cls, parts: list[Pieces], names) -> Pieces:
        if not parts:
            return cls.empty(names)

        def joined(column: str) -> np.ndarray:
            return np.concatenate([getattr(p, column) for p in parts])

        return cls(
            joined("geom"),
            joined("pixels"),
            joined("prob_sum"),
            joined("slope_sum"),
            joined("prob_max"),
            joined("on_edge"),
            {n: np.concatenate([p.extra[n] for p in parts]) for n in names},
        )

    @classmethod
    def of(cls, pieces: list[Piece]) -> Pieces:
        """Columns of a list of :class:`Piece` (all with the same ``extra`` names)."""
        names = list(pieces[0].extra) if pieces else []
        geom = np.empty(len(pieces), object)
        geom[:] = [p.geom for p in pieces]

        def column(name: str, dtype=np.float64) -> np.ndarray:
            return np.array([getattr(p, name) for p in pieces], dtype)

        return cls(
            geom,
            column("pixels", np.int64),
            column("prob_sum"),
            column("slope_sum"),
            column("prob_max"),
            column("on_edge", bool),
            {n: np.array([p.extra[n] for p in pieces], np.float64) for n in names},
        )

    def rows(self) -> list[Piece]:
        """One :class:`Piece` per row."""
        return [
            Piece(
                self.geom[i],
                int(self.pixels[i]),
                float(self.prob_sum[i]),
                float(self.slope_sum[i]),
                bool(self.on_edge[i]),
                float(self.prob_max[i]),
                {n: float(v[i]) for n, v in self.extra.items()},
            )
            for i in range(len(self))
        ]


@dataclass(frozen=True)
class Border:
    """A window's place and, along each of its four borders, which edge piece (an index into the
    collector's edge pieces, -1 for none) each pixel belongs to."""

    y0: int
    x0: int
    h: int
    w: int
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


@dataclass
class ObjectCollector:
    info: SceneInfo
    #: Pieces inside a window (touching none of its edges) are whole objects: those smaller than
    #: this are never written, so they are not kept either (memory grows with the objects kept).
    min_pixels: int = 0
    #: Extra layers ``add_window`` is given (name -> "sum", "min" or "max" of ``REDUCTIONS``).
    reductions: dict[str, str] = field(default_factory=dict)
    _inner: list[Pieces] = field(default_factory=list, repr=False)
    _edge: list[Pieces] = field(default_factory=list, repr=False)
    _borders: list[Border] = field(default_factory=list, repr=False)
    _n_edge: int = field(default=0, repr=False)

    @property
    def pieces(self) -> list[Piece]:
        """Every piece kept so far."""
        return Pieces.concat(self._inner + self._edge, self.reductions).rows()

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

        labels, n = ndimage.label(mask)  # 4-connectivity, as rasterio.features.shapes
        if n == 0:
            return
        idx = np.arange(1, n + 1)
        pixels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        edge = np.zeros(n + 1, bool)
        for border in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            edge[border] = True
        keep = edge.copy()
        keep[1:] |= pixels >= self.min_pixels
        keep[0] = False  # the background
        kept = idx[keep[1:]]
        stats = {
            name: getattr(ndimage, REDUCTIONS[how][1])((extra or {})[name], labels, kept)
            for name, how in self.reductions.items()
        }
        window = Pieces(
            self._polygons(labels, keep, y0, x0)[kept],
            pixels[kept - 1].astype(np.int64),
            np.asarray(ndimage.sum_labels(prob, labels, kept), np.float64),
            np.asarray(ndimage.sum_labels(slope, labels, kept), np.float64)
            if slope is not None
            else np.zeros(len(kept)),
            np.asarray(ndimage.maximum(prob, labels, kept), np.float64),
            edge[kept],
            {name: np.asarray(v, np.float64) for name, v in stats.items()},
        )
        whole = window.take(~window.on_edge)
        if len(whole):
            self._inner.append(whole)
        self._add_edge_pieces(window.take(window.on_edge), labels, n, kept[window.on_edge], y0, x0)

    def _polygons(self, labels: np.ndarray, keep: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """label -> its polygon (None where not kept), built as one shapely array per window."""
        import shapely

        transform = self.info.affine @ self.info.affine.translation(x0, y0)
        values, coords, ring_sizes, rings_per_polygon = [], [], [], []
        for geom, value in features.shapes(labels.astype(np.int32), mask=keep[labels], transform=transform):
            values.append(int(value))
            rings_per_polygon.append(len(geom["coordinates"]))
            for ring in geom["coordinates"]:
                ring_sizes.append(len(ring))
                coords.extend(ring)
        out = np.empty(len(keep), object)
        if not values:  # specks only
            return out
        offsets = (np.cumsum([0, *ring_sizes]), np.cumsum([0, *rings_per_polygon]))
        polygons = shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.asarray(coords, np.float64), offsets)
        order = np.argsort(values, kind="stable")
        labels_sorted = np.asarray(values)[order]
        starts = np.flatnonzero(np.r_[True, labels_sorted[1:] != labels_sorted[:-1]])
        for start, stop in zip(starts, [*starts[1:], len(order)]):  # a label in parts: their union
            parts = polygons[order[start:stop]]
            out[labels_sorted[start]] = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        return out

    def _add_edge_pieces(
        self, pieces: Pieces, labels: np.ndarray, n: int, piece_labels: np.ndarray, y0: int, x0: int
    ) -> None:
        """Keep the pieces touching the window's edge, and which of them lies along each border."""
        lut = np.full(n + 1, -1, np.int64)
        lut[piece_labels] = self._n_edge + np.arange(len(piece_labels))
        self._n_edge += len(piece_labels)
        if len(pieces):
            self._edge.append(pieces)
        h, w = labels.shape
        self._borders.append(
            Border(y0, x0, h, w, lut[labels[0]], lut[labels[-1]], lut[labels[:, 0]], lut[labels[:, -1]])
        )

    def table(self) -> Pieces:
        """Every object: the whole ones, window by window, then those merged across borders."""
        return Pieces.concat([*self._inner, self._merged()], self.reductions)

    def objects(self) -> list[Piece]:
        """Merge pieces that share an edge across window borders; -> every object kept."""
        return self.table().rows()

    def _merged(self) -> Pieces:
        """The edge pieces, those that share a border edge merged into one object."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        edge = Pieces.concat(self._edge, self.reductions)
        if len(edge) == 0:
            return edge
        a, b = self._border_pairs()
        graph = coo_matrix((np.ones(len(a), bool), (a, b)), shape=(len(edge), len(edge)))
        _, group = connected_components(graph, directed=False)
        order = np.argsort(group, kind="stable")
        group = group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        edge = edge.take(order)
        reduce = {name: BASE_REDUCTIONS[name].reduceat(getattr(edge, name), starts) for name in BASE_REDUCTIONS}
        geom = np.empty(len(starts), object)
        for k, (start, stop) in enumerate(zip(starts, [*starts[1:], len(edge)])):
            geom[k] = edge.geom[start] if stop - start == 1 else _union(edge.geom[start:stop])
        return Pieces(
            geom,
            reduce["pixels"],
            reduce["prob_sum"],
            reduce["slope_sum"],
            reduce["prob_max"],
            np.ones(len(starts), bool),
            {n: REDUCTIONS[how][0].reduceat(edge.extra[n], starts) for n, how in self.reductions.items()},
        )

    def _border_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b): edge pieces a[i] and b[i] have pixels side by side across a window border."""
        by_x0: dict[int, list[Border]] = {}
        by_y0: dict[int, list[Border]] = {}
        for w in self._borders:
            by_x0.setdefault(w.x0, []).append(w)
            by_y0.setdefault(w.y0, []).append(w)
        pairs = [np.zeros((2, 0), np.int64)]
        for w in self._borders:
            for right in by_x0.get(w.x0 + w.w, []):  # the window to the right: its left column
                pairs.append(_side_by_side(w.right, w.y0, right.left, right.y0))
            for below in by_y0.get(w.y0 + w.h, []):  # the window below: its top row
                pairs.append(_side_by_side(w.bottom, w.x0, below.top, below.x0))
        a, b = np.concatenate(pairs, axis=1)
        return a, b


def _side_by_side(line: np.ndarray, start: int, other: np.ndarray, other_start: int) -> np.ndarray:
    """(2, k) pairs of pieces facing each other along two borders that start at ``start`` and
    ``other_start`` (rows or columns of the map); nothing where the borders do not overlap."""
    lo, hi = max(start, other_start), min(start + len(line), other_start + len(other))
    if hi <= lo:
        return np.zeros((2, 0), np.int64)
    p, q = line[lo - start : hi - start], other[lo - other_start : hi - other_start]
    both = (p >= 0) & (q >= 0)
    return np.unique(np.stack([p[both], q[both]]), axis=1)


def _union(parts: np.ndarray):
    """One object from the pieces of it: the union of their shells, with that union's holes and
    every piece's own holes (each lies inside its piece's shell). Pieces that do not come out as
    one polygon (coordinates that differ by rounding along a border) are unioned whole."""
    import shapely

    shells = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(parts)))
    if shells.geom_type != "Polygon":
        return shapely.union_all(parts)
    holes = [*shells.interiors, *(ring for part in parts for ring in part.interiors)]
    return shapely.Polygon(shells.exterior, holes)


def write_polygons(
    dest, info: SceneInfo, objects: Pieces | list[Piece], min_pixels: int, has_slope: bool, columns: dict | None = None
) -> int:
    """Write objects with at least ``min_pixels`` pixels, in the format ``dest``'s suffix names
    (GeoPackage, GeoParquet or FlatGeobuf, see ``POLYGON_FILES``), with ``columns`` (name -> one
    value per object, e.g. a change-aware map's ``status``) after the attributes; returns how many."""
    import geopandas as gpd

    table = objects if isinstance(objects, Pieces) else Pieces.of(objects)
    keep = table.pixels >= min_pixels
    kept = table.take(keep)
    data = {
        "object_id": np.arange(1, len(kept) + 1, dtype=np.int64),
        "pixels": kept.pixels,
        "area_m2": object_areas_m2(info, kept.geom, kept.pixels),
        "mean_probability": kept.prob_sum / kept.pixels,
        "max_probability": kept.prob_max,
        "mean_slope_deg": kept.slope_sum / kept.pixels if has_slope else np.full(len(kept), np.nan),
        **{name: [v for v, k in zip(values, keep) if k] for name, values in (columns or {}).items()},
    }
    gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(kept.geom, crs=info.crs), crs=info.crs)
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
