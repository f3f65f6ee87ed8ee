"""Landslide objects: connected mask regions -> polygons with per-object attributes.

Windows are vectorised one at a time (memory bounded by the window), and pieces cut by window
edges are joined as soon as the windows on both sides are in, combining their pixel statistics
(sums, maxima, minima), so an object's attributes do not depend on the window grid. Finished
objects go to the file as they come (:func:`stream_polygons`): what is held is the pieces along
the borders still open, not the map's objects.

Pieces are held column by column (:class:`Pieces`: a shapely 2 geometry array beside numpy arrays
of their statistics), never as one Python object per object: a map of 100,000 objects costs its
geometries and a few numbers each. Which pieces make one object is read from the labels on the
windows' borders (a pixel of one piece beside a pixel of another across a border: a shared edge,
4-connectivity), not from polygon intersections; their polygon is the union of their shells with
every hole of theirs and of that union (a piece's holes lie inside its shell, in one window, so
they stay holes of the object): the union of a map-wide object's many-holed pieces took minutes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio import features

from ..ingest.scene import SceneInfo
from .areas import object_areas_m2

#: Polygon formats -> product name. GeoParquet carries the CRS in its ``geo`` metadata (PROJJSON).
POLYGON_FILES = {"gpkg": "landslides.gpkg", "parquet": "landslides.parquet", "fgb": "landslides.fgb"}


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


#: The borders of a window, as bits of what a piece touches (``ObjectCollector``'s ``_sides``).
TOP, BOTTOM, LEFT, RIGHT = 1, 2, 4, 8


@dataclass(frozen=True)
class Border:
    """A window's place and, along each of its four borders, which edge piece (its id, -1 for
    none) each pixel belongs to."""

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
    """Objects of a map added window by window. A piece touching no border of its window that
    another window still to come lies beyond is finished at once; pieces touching such a border
    (edge pieces) are held, and joined with the pieces they meet across it when that window comes:
    a group of joined pieces none of which touches an open border any more is one finished
    object. :meth:`pop_finished` hands the finished objects over (to be written and dropped), so
    what is held at once is the edge pieces along the open borders, whatever the map's size."""

    info: SceneInfo
    #: Pieces inside a window (touching none of its edges) are whole objects: those smaller than
    #: this are never written, so they are not kept either (memory grows with the objects kept).
    min_pixels: int = 0
    #: Extra layers ``add_window`` is given (name -> "sum", "min" or "max" of ``REDUCTIONS``).
    reductions: dict[str, str] = field(default_factory=dict)
    #: Pieces kept so far (whole objects and edge pieces), and the most objects and edge pieces
    #: held at once after a window (finished ones not yet popped included): what memory follows.
    kept: int = field(default=0, init=False)
    peak_held: int = field(default=0, init=False)
    _done: list[Pieces] = field(default_factory=list, init=False, repr=False)
    _held: Pieces = field(init=False, repr=False)  # edge pieces, by ascending id (``_ids``)
    _ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), init=False, repr=False)
    _win: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), init=False, repr=False)
    _sides: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8), init=False, repr=False)
    _pairs: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), np.int64), init=False, repr=False)
    _places: list[tuple[int, int, int, int]] = field(default_factory=list, init=False, repr=False)
    _open: list[int] = field(default_factory=list, init=False, repr=False)  # each window's open borders
    _borders: dict[int, Border] = field(default_factory=dict, init=False, repr=False)  # those with one open
    _by_edge: dict[tuple[str, int], list[int]] = field(default_factory=dict, init=False, repr=False)
    _n_edge: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._held = Pieces.empty(self.reductions)

    @property
    def held(self) -> int:
        """Objects and edge pieces held now: finished ones not yet popped, and edge pieces."""
        return len(self._ids) + sum(len(d) for d in self._done)

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
        sides = np.zeros(n + 1, np.uint8)
        for bit, line in ((TOP, labels[0]), (BOTTOM, labels[-1]), (LEFT, labels[:, 0]), (RIGHT, labels[:, -1])):
            sides[line] |= bit
        sides[0] = 0  # the background
        pixels = np.bincount(labels.ravel(), minlength=n + 1)
        keep = (sides != 0) | (pixels >= self.min_pixels)
        keep[0] = False
        kept = np.flatnonzero(keep)
        window = self._window_pieces(labels, keep, pixels, sides, prob, slope, extra or {}, (y0, x0))
        self.kept += len(window)
        whole = window.take(~window.on_edge)
        if len(whole):
            self._done.append(whole)
        self._add_edge_pieces(window.take(window.on_edge), labels, kept[window.on_edge], sides, y0, x0)
        self.peak_held = max(self.peak_held, self.held)

    def _window_pieces(self, labels, keep, pixels, sides, prob, slope, extra: dict, at: tuple[int, int]) -> Pieces:
        """The kept labels of a window as pieces: polygons and statistics, one array each."""
        from scipy import ndimage

        kept = np.flatnonzero(keep)
        if not len(kept):
            return Pieces.empty(self.reductions)
        return Pieces(
            self._polygons(labels, keep, *at)[kept],
            pixels[kept].astype(np.int64),
            np.asarray(ndimage.sum_labels(prob, labels, kept), np.float64),
            np.asarray(ndimage.sum_labels(slope, labels, kept), np.float64)
            if slope is not None
            else np.zeros(len(kept)),
            np.asarray(ndimage.maximum(prob, labels, kept), np.float64),
            sides[kept] != 0,
            {
                name: np.asarray(getattr(ndimage, REDUCTIONS[how][1])(extra[name], labels, kept), np.float64)
                for name, how in self.reductions.items()
            },
        )

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
        self, pieces: Pieces, labels: np.ndarray, piece_labels: np.ndarray, sides: np.ndarray, y0: int, x0: int
    ) -> None:
        """Hold the window's edge pieces, join them with the pieces they meet in the windows added
        before, and finish every group that no open border can extend any more."""
        lut = np.full(len(sides), -1, np.int64)
        ids = self._n_edge + np.arange(len(piece_labels))
        lut[piece_labels] = ids
        self._n_edge += len(piece_labels)
        h, w = labels.shape
        i = len(self._places)
        self._places.append((y0, x0, h, w))
        for key in (("y0", y0), ("y1", y0 + h), ("x0", x0), ("x1", x0 + w)):
            self._by_edge.setdefault(key, []).append(i)
        border = Border(y0, x0, h, w, lut[labels[0]], lut[labels[-1]], lut[labels[:, 0]], lut[labels[:, -1]])
        self._borders[i] = border
        self._open.append(0)
        self._held = Pieces.concat([self._held, pieces], self.reductions)
        self._ids = np.concatenate([self._ids, ids])
        self._win = np.concatenate([self._win, np.full(len(ids), i, np.int64)])
        self._sides = np.concatenate([self._sides, sides[piece_labels]])
        neighbours = self._join(border)
        for j in (i, *neighbours):
            self._open[j] = self._open_borders(j)
            if not self._open[j]:
                self._borders.pop(j, None)
        self._finish_closed()

    def _join(self, w: Border) -> list[int]:
        """Pair the pieces of window ``w`` with those they meet across its borders in the windows
        added before; -> those windows."""
        pairs, met = [self._pairs], []
        for j in self._by_edge.get(("y1", w.y0), []):  # above: its bottom row meets w's top row
            if (o := self._borders.get(j)) is not None:
                pairs.append(_side_by_side(o.bottom, o.x0, w.top, w.x0))
                met.append(j)
        for j in self._by_edge.get(("y0", w.y0 + w.h), []):  # below
            if (o := self._borders.get(j)) is not None:
                pairs.append(_side_by_side(w.bottom, w.x0, o.top, o.x0))
                met.append(j)
        for j in self._by_edge.get(("x1", w.x0), []):  # to the left
            if (o := self._borders.get(j)) is not None:
                pairs.append(_side_by_side(o.right, o.y0, w.left, w.y0))
                met.append(j)
        for j in self._by_edge.get(("x0", w.x0 + w.w), []):  # to the right
            if (o := self._borders.get(j)) is not None:
                pairs.append(_side_by_side(w.right, w.y0, o.left, o.y0))
                met.append(j)
        self._pairs = np.concatenate(pairs, axis=1)
        return met

    def _open_borders(self, i: int) -> int:
        """The borders of window ``i`` (bits) beyond which the map goes on where no window was added yet."""
        y0, x0, h, w = self._places[i]
        bits = 0
        for bit, beyond, key, start, length, along in (
            (TOP, y0 > 0, ("y1", y0), x0, w, 1),
            (BOTTOM, y0 + h < self.info.height, ("y0", y0 + h), x0, w, 1),
            (LEFT, x0 > 0, ("x1", x0), y0, h, 0),
            (RIGHT, x0 + w < self.info.width, ("x0", x0 + w), y0, h, 0),
        ):
            if beyond and self._covered(key, start, length, along) < length:
                bits |= bit
        return bits

    def _covered(self, key: tuple[str, int], start: int, length: int, along: int) -> int:
        """How much of [start, start + length) the windows added along ``key`` cover (``along``:
        0 for rows, 1 for columns)."""
        covered = 0
        for j in self._by_edge.get(key, []):
            lo, n = self._places[j][along], self._places[j][along + 2]
            covered += max(0, min(start + length, lo + n) - max(start, lo))
        return covered

    def _finish_closed(self) -> None:
        """Move every group of edge pieces that touches no open border to the finished objects."""
        if not len(self._ids):
            return
        group = self._groups()
        open_now = (np.asarray(self._open)[self._win] & self._sides) != 0
        still_open = np.zeros(group.max() + 1, bool)
        still_open[group[open_now]] = True
        closed = ~still_open[group]
        if not closed.any():
            return
        self._done.append(self._merge(self._held.take(closed), group[closed]))
        kept_ids = self._ids[~closed]
        self._pairs = self._pairs[:, np.isin(self._pairs[0], kept_ids)]  # a pair's pieces share a group
        self._held, self._ids = self._held.take(~closed), kept_ids
        self._win, self._sides = self._win[~closed], self._sides[~closed]

    def _groups(self) -> np.ndarray:
        """The group (connected through pairs) of each held edge piece."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = len(self._ids)
        a, b = np.searchsorted(self._ids, self._pairs)
        graph = coo_matrix((np.ones(len(a), bool), (a, b)), shape=(n, n))
        return connected_components(graph, directed=False)[1]

    def _merge(self, pieces: Pieces, group: np.ndarray) -> Pieces:
        """One object per group of pieces: statistics combined, polygons joined."""
        order = np.argsort(group, kind="stable")
        group = group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        pieces = pieces.take(order)
        reduce = {name: BASE_REDUCTIONS[name].reduceat(getattr(pieces, name), starts) for name in BASE_REDUCTIONS}
        geom = np.empty(len(starts), object)
        for k, (start, stop) in enumerate(zip(starts, [*starts[1:], len(pieces)])):
            geom[k] = pieces.geom[start] if stop - start == 1 else _union(pieces.geom[start:stop])
        return Pieces(
            geom,
            reduce["pixels"],
            reduce["prob_sum"],
            reduce["slope_sum"],
            reduce["prob_max"],
            np.ones(len(starts), bool),
            {n: REDUCTIONS[how][0].reduceat(pieces.extra[n], starts) for n, how in self.reductions.items()},
        )

    def pop_finished(self) -> Pieces:
        """The objects finished since the last call, handed over (the collector drops them)."""
        done = Pieces.concat(self._done, self.reductions)
        self._done = []
        return done

    def table(self) -> Pieces:
        """Every object not popped yet: the finished ones, then the held edge pieces joined as far
        as the windows added allow (all of them are finished once every window was added)."""
        rest = self._merge(self._held, self._groups()) if len(self._ids) else Pieces.empty(self.reductions)
        return Pieces.concat([*self._done, rest], self.reductions)


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


#: Objects per batch a polygon file is written in (a GeoParquet row group, one Arrow batch handed
#: to GDAL): finished objects wait in memory until this many are ready, then are written and dropped.
BATCH_ROWS = 10_000
#: GDAL's driver per polygon format (GeoParquet is written with pyarrow).
OGR_DRIVERS = {"gpkg": "GPKG", "fgb": "FlatGeobuf"}


#: A part of a map's objects as :func:`stream_polygons` takes it: the objects, or the objects and
#: columns of their own (name -> one value per object, e.g. an event map's ``status``).
Part = Pieces | tuple[Pieces, dict[str, np.ndarray]]


def stream_polygons(dest, info: SceneInfo, objects: Iterable[Part], min_pixels: int, has_slope: bool) -> int:
    """Write objects with at least ``min_pixels`` pixels, in the format ``dest``'s suffix names
    (GeoPackage, GeoParquet or FlatGeobuf, see ``POLYGON_FILES``), as they come part by part (a
    collector's :meth:`ObjectCollector.pop_finished` after each window): each part is written once
    ``BATCH_ROWS`` objects are ready, so the file grows while the map is read. A part's own columns
    go after the attributes (every part names the same ones); -> objects written."""

    def batches() -> Iterator[tuple[Pieces, dict[str, np.ndarray]]]:
        waiting: list[tuple[Pieces, dict[str, np.ndarray]]] = []
        names: list[str] = []
        written = False
        for part, columns in (p if isinstance(p, tuple) else (p, {}) for p in objects):
            keep, names = part.pixels >= min_pixels, list(columns)
            if keep.any():
                waiting.append((part.take(keep), {n: np.asarray(v)[keep] for n, v in columns.items()}))
            if sum(len(w) for w, _ in waiting) >= BATCH_ROWS:
                yield _joined(waiting, list(part.extra))
                waiting, written = [], True
        if waiting:
            yield _joined(waiting, list(waiting[0][0].extra))
        elif names and not written:  # no object at all: the file still gets the parts' columns
            yield Pieces.empty([]), {n: np.empty(0, object) for n in names}

    return _write_batches(Path(dest), info, _records(info, batches(), has_slope))


def _joined(parts: list[tuple[Pieces, dict[str, np.ndarray]]], names) -> tuple[Pieces, dict[str, np.ndarray]]:
    """Parts (objects and their own columns) as one."""
    columns = {n: np.concatenate([c[n] for _, c in parts]) for n in parts[0][1]}
    return Pieces.concat([p for p, _ in parts], names), columns


def _records(info: SceneInfo, batches: Iterable[tuple[Pieces, dict]], has_slope: bool) -> Iterator:
    """(Arrow record batch, its geometries) of objects (geometry as WKB in the batch),
    ``object_id`` numbered across them; at least one batch (an empty one when there are no
    objects: the file still gets its columns)."""
    import pyarrow as pa
    import shapely

    def record_batch(table: Pieces, columns: dict, first_id: int):
        data = {
            "object_id": np.arange(first_id, first_id + len(table), dtype=np.int64),
            "pixels": table.pixels,
            "area_m2": object_areas_m2(info, table.geom, table.pixels),
            "mean_probability": table.prob_sum / table.pixels,
            "max_probability": table.prob_max,
            "mean_slope_deg": table.slope_sum / table.pixels if has_slope else np.full(len(table), np.nan),
        }
        arrays = {name: pa.array(values) for name, values in data.items()}
        for name, values in columns.items():
            array = pa.array(values)
            arrays[name] = pa.nulls(len(array), pa.string()) if array.type == pa.null() else array  # text if all None
        arrays["geometry"] = pa.array(shapely.to_wkb(table.geom), pa.binary())
        return pa.record_batch(list(arrays.values()), names=list(arrays)), table.geom

    written, any_batch = 0, False
    for table, columns in batches:
        yield record_batch(table, columns, written + 1)
        written, any_batch = written + len(table), True
    if not any_batch:
        yield record_batch(Pieces.empty([]), {}, 1)


def _write_batches(dest: Path, info: SceneInfo, records: Iterator) -> int:
    """Write :func:`_records`' batches to ``dest`` as they come (the format from its suffix);
    -> rows. A failure, in the writer or in whatever makes the batches, leaves no file behind."""
    import pyarrow as pa

    fmt = dest.suffix[1:]
    if fmt not in POLYGON_FILES:
        raise ValueError(f"{dest}: unknown polygon format {fmt!r}; expected one of {sorted(POLYGON_FILES)}")
    first = next(records)
    rows, failure = [0], []

    def counted() -> Iterator:
        try:
            for batch, geoms in itertools.chain([first], records):
                rows[0] += batch.num_rows
                yield batch, geoms
        except BaseException as exc:  # GDAL reports it as "error while accessing batch": keep the cause
            failure.append(exc)
            raise

    try:
        if fmt == "parquet":
            _write_geoparquet(dest, info, first[0].schema, counted())
        else:
            import pyogrio

            pyogrio.write_arrow(
                pa.RecordBatchReader.from_batches(first[0].schema, (batch for batch, _ in counted())),
                dest,
                layer="landslides",
                driver=OGR_DRIVERS[fmt],
                geometry_name="geometry",
                geometry_type="Unknown",  # polygons, and a multipolygon where a join along a border needs one
                crs=info.crs_wkt,
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        if failure:
            raise failure[0] from None
        raise
    return rows[0]


def _write_geoparquet(dest: Path, info: SceneInfo, schema, batches: Iterator) -> None:
    """GeoParquet 1.0 (WKB geometry), one row group per batch. Its ``geo`` metadata (CRS as
    PROJJSON, geometry types, bounding box) is known at the end, so it goes into the footer then;
    the Arrow schema is not stored, or its (metadata-less) copy would hide it."""
    import pyarrow.parquet as pq
    import shapely

    names = {shapely.GeometryType.POLYGON: "Polygon", shapely.GeometryType.MULTIPOLYGON: "MultiPolygon"}
    types: set[str] = set()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    with pq.ParquetWriter(dest, schema, store_schema=False) as writer:
        for batch, geoms in batches:
            types |= {names[shapely.GeometryType(t)] for t in np.unique(shapely.get_type_id(geoms))}
            if len(geoms):
                box = shapely.total_bounds(geoms)
                bounds = np.r_[np.minimum(bounds[:2], box[:2]), np.maximum(bounds[2:], box[2:])]
            writer.write_batch(batch)
        column = {"encoding": "WKB", "geometry_types": sorted(types), "crs": _projjson(info)}
        if types:
            column["bbox"] = bounds.tolist()
        geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
        writer.add_key_value_metadata({"geo": json.dumps(geo)})


def _projjson(info: SceneInfo) -> dict | None:
    from pyproj import CRS

    return CRS.from_wkt(info.crs_wkt).to_json_dict() if info.crs_wkt else None
