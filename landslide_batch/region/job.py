"""A region job: every scene mapped by the single-scene pipeline, then merged onto one grid.

Layout of ``OUT``: the region's products as a single-scene job writes them, plus
``scenes.gpkg`` (footprints), and ``.work/`` kept after the job as the cache that makes adding
a scene cheap:

- ``.work/scenes/<id>/scene.zarr``: the scene as ingested; ``.work/scenes/<id>/map/``: its own
  finished map (a single-scene job's output folder, resumed block by block);
- ``.work/region/``: the merged region (output store, a scene store holding the merged RGB and
  slope for the quicklook and polygons, one marker per merged block naming the scenes in it).

A block of the region is merged again only when the scenes touching it change, so adding a
scene maps that scene and merges the blocks it touches; the products are then written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from ..bands import BAND_INDEX, L4S_BANDS, RGB_BANDS
from ..checks.preflight import resolve_inputs_units
from ..config import JobConfig, ensemble_members
from ..errors import ConfigError, InputError, OutputLockedError
from ..gdal_env import bounded_gdal_cache
from ..hashing import sha256_tree
from ..ingest import Scene, ingest_job
from ..ingest.aoi import aoi_in_crs, load_aoi
from ..ingest.inputs import SceneInputs
from ..ingest.scene import SCENE_FORMAT, SceneInfo
from ..models.card import WEIGHTS_FILE, read_card
from ..outputs.manifest import package_versions, read_manifest, write_json_atomic
from ..outputs.store import NODATA, SLOPE, create_store
from ..pipeline import (
    _finish,
    _publish,
    outputs_for,
    predictor_spec,
    run_job,
    scene_chunk,
)
from ..storage import exclusive_location, location, storage_errors
from .grid import region_grid, target_crs
from .mosaic import (
    FEATHER_PX,
    Window,
    feather_weights,
    merge,
    needed_window,
    sample,
    source_pixels,
)
from .progress import RegionProgress
from .scenes import SceneSource, find_scenes, load_signer
from .stac_search import search_items

log = logging.getLogger(__name__)

SCENES_FILE = "scenes.gpkg"
#: Relative tolerance on a scene's pixel size against the region's resolution.
RESOLUTION_TOLERANCE = 0.01
MERGE_RULE = (
    f"weighted mean; weight = validity (nearest) x min(d, {FEATHER_PX}) / {FEATHER_PX}, d = distance in "
    "region pixels to the scene's nearest invalid or absent pixel; layers sampled bilinearly from "
    "valid pixels; nodata -1 where no scene is valid or outside the AOI"
)


@dataclass
class MappedScene:
    """A scene of the region once ingested and checked (and, later, mapped)."""

    source: SceneSource
    folder: Path
    sha256: str
    scene: Scene
    footprint: object  # shapely polygon in the region CRS
    manifest: dict | None = None

    @property
    def map_store(self) -> Path:
        return self.folder / "map" / "probability.zarr"


def run_region(cfg: JobConfig, *, overwrite: bool = False) -> dict:
    """Run (or resume, or extend with new scenes) a region job; returns its manifest (``OUT/run.json``)."""
    out = location(cfg.out)
    if not out.is_local:
        raise ConfigError(f"out {cfg.out}: region jobs write to a local folder (object storage: not yet)")
    out.makedirs()
    busy = OutputLockedError(
        f"{out} is being written by another job (lock {out / '.lock'} is held); "
        "wait for it or choose another output folder"
    )
    with ExitStack() as held:
        held.enter_context(exclusive_location(out / ".lock", lambda: busy))
        held.enter_context(bounded_gdal_cache())
        return _run_region_locked(cfg, out.path, overwrite)


def _run_region_locked(cfg: JobConfig, out: Path, overwrite: bool) -> dict:
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    geom, aoi_crs, aoi_text = load_aoi(SceneInputs(aoi=str(cfg.aoi)))
    crs = target_crs(geom, aoi_crs, cfg.crs)
    aoi = aoi_in_crs(geom, aoi_crs, crs)
    grid = region_grid(aoi, crs, cfg.resolution, scene_chunk(cfg.block))
    members = ensemble_members(cfg)
    cards = [read_card(m.model) for m in members.members]
    model_shas = [
        c.weights_sha256 or sha256_tree(location(m.model) / WEIGHTS_FILE) for m, c in zip(members.members, cards)
    ]
    cfg = resolve_inputs_units(cfg, cards)  # as a single-scene job does before its ingest
    rhash = region_hash(cfg, grid, aoi, model_shas)
    outputs = {**outputs_for(cfg.polygon_format), "scenes": SCENES_FILE}
    work = out / ".work"

    previous = read_manifest(location(out))
    if previous is not None and previous.get("region_hash") != rhash:
        if not overwrite:
            raise ConfigError(
                f"{out} holds the result of a different job (hash {previous.get('job_hash')}, this "
                f"region job {rhash}); use another output folder or --overwrite"
            )
        (out / "run.json").unlink()
        previous = None
    region_dir = work / "region"
    _discard_unless(region_dir, rhash)

    scenes, skipped = _prepare_scenes(cfg, work, aoi, crs)
    signature = _signature(scenes)
    if (
        not overwrite
        and previous is not None
        and previous.get("scenes_signature") == signature
        and all((out / name).exists() for name in previous.get("outputs", {}).values())
    ):
        log.info("%s already holds this region's map over these %d scene(s): nothing to do", out, len(scenes))
        return {**previous, "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]}}

    t_map = time.perf_counter()
    actors = _map_scenes(cfg, scenes, overwrite)
    map_s = time.perf_counter() - t_map

    t_merge = time.perf_counter()
    merge_blocks = merge_region(scenes, grid, aoi, region_dir, cfg.block, rhash)
    merge_s = time.perf_counter() - t_merge

    threshold = cfg.threshold if cfg.threshold is not None else members.decision_threshold([c.threshold for c in cards])
    t_finish = time.perf_counter()
    stage = region_dir / "stage"
    stage.mkdir(exist_ok=True)
    summary = _finish(cfg, Scene(region_dir / "scene.zarr"), region_dir / "probability.zarr", stage, threshold, outputs)
    write_footprints(stage / "final" / SCENES_FILE, scenes, crs)
    finish_s = time.perf_counter() - t_finish

    per_scene = [s.manifest["blocks"] for s in scenes]
    manifest = {
        "status": "complete",
        "kind": "region",
        "job_hash": rhash,
        "region_hash": rhash,
        "scenes_signature": signature,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {
            "map_s": round(map_s, 3),
            "merge_s": round(merge_s, 3),
            "finish_s": round(finish_s, 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
        "config": cfg.model_dump(mode="json"),
        "models": [
            {"path": str(m.model), "name": c.name, "weight": m.weight, "threshold": c.threshold, "sha256": sha}
            for m, c, sha in zip(members.members, cards, model_shas)
        ],
        # times the models were loaded: once locally, once per actor (warm across scenes) on Ray
        "models_loaded": 1 if actors is None else sum(a["models_loaded"] for a in actors),
        **({"actors": actors} if actors is not None else {}),
        "versions": package_versions(),
        "region": {
            "crs": grid.crs_wkt,
            "epsg": crs.to_epsg(),
            "height": grid.height,
            "width": grid.width,
            "transform": list(grid.transform),
            "resolution_m": cfg.resolution,
            "aoi": aoi_text,
            "pixel_area_m2": grid.pixel_area_m2,
            "merge_rule": MERGE_RULE,
            "feather_px": FEATHER_PX,
        },
        "scenes": [_provenance(s) for s in scenes],
        "skipped_scenes": skipped,
        "warnings": [w for s in scenes for w in s.manifest.get("warnings", [])],
        "blocks": {key: sum(b[key] for b in per_scene) for key in ("total", "computed", "skipped_nodata", "resumed")},
        "merge_blocks": merge_blocks,
        "summary": {**summary, "threshold": threshold},
        "outputs": outputs,
    }
    write_json_atomic(stage / "final" / "run.json", manifest)
    store_copy = stage / "final" / outputs["zarr"]
    shutil.copytree(region_dir / "probability.zarr", store_copy)  # the merge store stays for the next scene
    if (out / "run.json").exists():  # from now on nothing vouches for the previous products
        (out / "run.json").unlink()
    _publish(stage / "final", location(store_copy), location(out), outputs)
    shutil.rmtree(stage, ignore_errors=True)
    log.info(
        "region finished: %s (%d scene(s), %d landslide objects)", out / "run.json", len(scenes), summary["objects"]
    )
    return manifest


def region_hash(cfg: JobConfig, grid: SceneInfo, aoi, model_shas: list[str]) -> str:
    """Identity of a region's map except its scenes (which may grow): grid, AOI, models, settings."""
    key = {
        "grid": [grid.crs_wkt, list(grid.transform), grid.height, grid.width],
        "aoi": aoi.wkt,
        "models": model_shas,
        "weights": [m.weight for m in ensemble_members(cfg).members],
        "feather_px": FEATHER_PX,
        "block": cfg.block,
        **cfg.model_dump(
            mode="json",
            include={
                "tile",
                "overlap",
                "blend",
                "threshold",
                "min_area_m2",
                "min_pixels",
                "nodata",
                "inputs",
                "resolution",
            },
        ),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _discard_unless(folder: Path, rhash: str) -> None:
    """Remove ``folder`` (the merge state) unless it belongs to the region ``rhash``."""
    state = folder / "region.json"
    if folder.exists() and (not state.is_file() or json.loads(state.read_text()).get("region_hash") != rhash):
        log.info("discarding the merge state of a different region job in %s", folder)
        shutil.rmtree(folder)


def _prepare_scenes(cfg: JobConfig, work: Path, aoi, crs: CRS) -> tuple[list[MappedScene], list[dict]]:
    """Find, ingest and check every scene; scenes missing the AOI are skipped with a warning.
    Raises InputError for a scene without a CRS or at another resolution, and when none is left."""
    entries = list(cfg.scenes or [])
    if cfg.stac_search is not None:
        entries.append(
            search_items(cfg.stac_search, transform_bounds(crs, "EPSG:4326", *aoi.bounds), work / "stac_search.json")
        )
    sources = find_scenes(entries, work / "items", load_signer(cfg.href_signer))
    scenes, skipped = [], []
    for src in sources:
        folder = work / "scenes" / src.id
        with storage_errors(src.source, "scene"):
            found = location(src.source).exists()
        if not found:
            raise InputError(f"scene {src.origin} does not exist")
        sha = src.sha256 or sha256_tree(src.source)
        state = folder / "source.json"
        if folder.exists() and (not state.is_file() or json.loads(state.read_text()).get("sha256") != sha):
            shutil.rmtree(folder)  # the source changed: its store and map are stale
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state, {"source": src.source, "sha256": sha})
        scene = ingest_job(cfg.model_copy(update={"scene": src.source}), folder / "scene.zarr", scene_chunk(cfg.block))
        footprint = _check_scene(src.origin, scene.info, cfg.resolution, crs)
        if not footprint.intersects(aoi):
            log.warning("scene %s does not overlap the AOI: skipped", src.origin)
            skipped.append({"source": src.origin, "reason": "does not overlap the AOI"})
            shutil.rmtree(folder)
            continue
        scenes.append(MappedScene(src, folder, sha, scene, footprint))
    if not scenes:
        raise InputError(
            f"none of the {len(sources)} scene(s) overlaps the AOI ({', '.join(s.origin for s in sources)})"
        )
    return scenes, skipped


def _check_scene(source: str, info: SceneInfo, resolution: float, crs: CRS):
    """-> the scene's footprint in the region CRS; refuses what cannot be placed on the region grid."""
    if info.crs is None:
        raise InputError(
            f"scene {source} has no CRS: a region job places each scene by its CRS; give a "
            "georeferenced raster (an L4S .h5 patch has none)"
        )
    a = info.affine
    sizes = (
        np.hypot(a.a, a.d) * info.crs.linear_units_factor[1] if info.crs.is_projected else None,
        np.hypot(a.b, a.e) * info.crs.linear_units_factor[1] if info.crs.is_projected else None,
    )
    if None in sizes or any(abs(s - resolution) > RESOLUTION_TOLERANCE * resolution for s in sizes):
        found = f"{sizes[0]:g} x {sizes[1]:g} m" if None not in sizes else f"degrees ({info.crs.to_string()})"
        raise InputError(
            f"scene {source}: pixels of {found}, the region maps at {resolution:g} m; the models "
            f"work at {resolution:g} m, so resample the scene first (mixed resolutions are refused)"
        )
    x0, y0 = a @ (0, 0)
    x1, y1 = a @ (info.width, info.height)
    return aoi_in_crs(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), info.crs, crs)


def _signature(scenes: list[MappedScene]) -> str:
    return hashlib.sha256(json.dumps(sorted((s.source.id, s.sha256) for s in scenes)).encode()).hexdigest()[:16]


def _map_scenes(cfg: JobConfig, scenes: list[MappedScene], overwrite: bool) -> list[dict] | None:
    """Each scene through the single-scene pipeline into its folder, with the models loaded once.
    Local: every scene predicts with one predictor. Ray: one Ray session and one pool of warm
    predictor actors for all scenes; -> each actor's ``{node, models_loaded}`` (None locally)."""
    spec = predictor_spec(cfg, ensemble_members(cfg))
    progress = RegionProgress([(s.scene.info.height, s.scene.info.width) for s in scenes], cfg.block, cfg.resolution)
    with ExitStack() as session:
        predictor = pool = None
        if cfg.executor == "local":
            predictor = spec.build()
        else:
            from ..infer.executors import actor_pool, ray_session

            session.enter_context(ray_session(cfg.ray))
            pool = session.enter_context(actor_pool(spec.check().shipped(), cfg.ray, shared=True))
        for i, s in enumerate(scenes, 1):
            log.info("region: scene %d/%d %s", i, len(scenes), s.source.origin)
            scene_cfg = cfg.model_copy(
                update={
                    "scene": s.folder / "scene.zarr",
                    "out": s.folder / "map",
                    "scenes": None,
                    "aoi": None,
                    "crs": None,
                    "inputs": None,
                }
            )
            s.manifest = run_job(
                scene_cfg, overwrite=overwrite, predictor=predictor, pool=pool, on_block=progress.block_done
            )
            progress.scene_done()
            log.info("region: %s", progress.describe())
        return pool.loads() if pool is not None else None


def _scene_reader(s: MappedScene, has_slope: bool):
    """(rows, cols window) -> (layers (C, h, w): probability, uncertainty, [slope], R, G, B; valid)."""
    maps = zarr.open_group(str(s.map_store), mode="r")
    bands = zarr.open_group(str(s.scene.path), mode="r")["bands"]
    rgb = [BAND_INDEX[b] for b in RGB_BANDS]

    def read(w: Window) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = slice(w.y0, w.y1), slice(w.x0, w.x1)
        prob = maps["probability"][rows, cols]
        layers = [prob, maps["uncertainty"][rows, cols]] + ([maps[SLOPE][rows, cols]] if has_slope else [])
        layers += list(bands.get_orthogonal_selection((rgb, rows, cols)))
        return np.stack(layers).astype(np.float64), prob >= 0

    return read


def _blocks(grid: SceneInfo, size: int):
    for y0 in range(0, grid.height, size):
        for x0 in range(0, grid.width, size):
            yield Window(y0, min(y0 + size, grid.height), x0, min(x0 + size, grid.width))


def merge_region(scenes: list[MappedScene], grid: SceneInfo, aoi, folder: Path, block: int, rhash: str) -> dict:
    """Merge the scenes' maps onto the region grid, block by block; a block whose scenes are those
    of its marker is kept. -> block counts (total, computed, kept)."""
    has_slope = all(SLOPE in s.scene.info.band_names for s in scenes)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "region.json", {"region_hash": rhash})
    store, scene_store, markers = folder / "probability.zarr", folder / "scene.zarr", folder / "blocks"
    if not store.exists() or not scene_store.exists():
        shutil.rmtree(markers, ignore_errors=True)
        info = (
            grid
            if has_slope
            else SceneInfo(
                grid.height,
                grid.width,
                tuple(b for b in grid.band_names if b != SLOPE),
                grid.crs_wkt,
                grid.transform,
                grid.chunk,
            )
        )
        create_store(store, info, block, rhash)
        _create_region_scene(scene_store, info)
    markers.mkdir(exist_ok=True)
    out, region_scene = zarr.open_group(str(store), mode="r+"), zarr.open_group(str(scene_store), mode="r+")
    readers = {s.source.id: _scene_reader(s, has_slope) for s in scenes}
    counts = {"total": 0, "computed": 0, "kept": 0}
    for w in _blocks(grid, block):
        counts["total"] += 1
        ext = w.grown(FEATHER_PX)
        box_w = box(*_window_bounds(grid, w.grown(1)))
        touching = [s for s in scenes if s.footprint.intersects(box_w)]
        sig = json.dumps(sorted((s.source.id, s.sha256) for s in touching))
        marker = markers / f"{w.y0}_{w.x0}"
        if marker.is_file() and marker.read_text() == sig:
            counts["kept"] += 1
            continue
        contributions = []
        for s in touching:
            sampled = sample_scene(readers[s.source.id], s.scene.info, grid, ext)
            if sampled is not None:
                layers, valid = sampled
                core = (slice(None), slice(FEATHER_PX, -FEATHER_PX), slice(FEATHER_PX, -FEATHER_PX))
                contributions.append((feather_weights(valid, FEATHER_PX), layers[core]))
        n_layers = 5 + has_slope
        values, covered = merge(contributions, w.shape, n_layers)
        inside = geometry_mask(
            [mapping(aoi)], out_shape=w.shape, invert=True, transform=grid.affine @ Affine.translation(w.x0, w.y0)
        )
        ok = covered & inside
        rows, cols = slice(w.y0, w.y1), slice(w.x0, w.x1)
        out["probability"][rows, cols] = np.where(ok, values[0], NODATA).astype(np.float32)
        out["uncertainty"][rows, cols] = np.where(ok, values[1], NODATA).astype(np.float32)
        bands = region_scene["bands"]
        if has_slope:
            bands[BAND_INDEX[SLOPE], rows, cols] = np.where(ok, values[2], np.nan).astype(np.float32)
        for i, name in enumerate(RGB_BANDS):
            bands[BAND_INDEX[name], rows, cols] = np.where(ok, values[2 + has_slope + i], np.nan).astype(np.float32)
        region_scene["valid"][rows, cols] = ok.astype(np.uint8)
        marker.write_text(sig)
        counts["computed"] += 1
    region_scene.attrs["complete"] = True
    return counts


def sample_scene(read, info: SceneInfo, grid: SceneInfo, w: Window) -> tuple[np.ndarray, np.ndarray] | None:
    """A scene's layers and validity at the centres of region window ``w``; None if it misses it."""
    rows, cols = source_pixels(grid.affine, grid.crs_wkt, w, info.affine, info.crs_wkt)
    src = needed_window(rows, cols, info.height, info.width)
    if src is None:
        return None
    layers, valid = read(src)
    return sample(layers, valid, rows - src.y0, cols - src.x0)


def _window_bounds(grid: SceneInfo, w: Window) -> tuple[float, float, float, float]:
    a = grid.affine
    x0, y0 = a @ (w.x0, w.y0)
    x1, y1 = a @ (w.x1, w.y1)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _create_region_scene(path: Path, info: SceneInfo) -> None:
    """A scene store on the region grid for the finish: all L4S layers declared, only RGB and
    slope written (one chunk per layer: the others take no space), validity of the merge."""
    group = zarr.open_group(str(path), mode="w")
    c = info.chunk
    group.create_array(
        "bands",
        shape=(len(L4S_BANDS), info.height, info.width),
        chunks=(1, c, c),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=("band", "y", "x"),
    )
    group.create_array(
        "valid", shape=(info.height, info.width), chunks=(c, c), dtype="uint8", fill_value=0, dimension_names=("y", "x")
    )
    group.attrs.update(
        {
            "format": SCENE_FORMAT,
            "crs": info.crs_wkt,
            "transform": list(info.transform)[:6],
            "band_names": list(info.band_names),
            "source": {"kind": "region merge"},
            "complete": False,
        }
    )


def _provenance(s: MappedScene) -> dict:
    info = s.scene.info
    return {
        "id": s.source.id,
        "source": s.source.origin,
        "sha256": s.sha256,
        "crs": info.crs.to_string(),
        "date": s.source.date,
        "cloud_cover": s.source.cloud_cover,
        "footprint_bounds": [round(v, 3) for v in s.footprint.bounds],
        "blocks": s.manifest["blocks"],
        "forward_passes": s.manifest["tiles"]["forward_passes"],
    }


def write_footprints(dest: Path, scenes: list[MappedScene], crs: CRS) -> None:
    """The ``scenes`` layer: one footprint per scene with its source, date and cloud cover."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {
            "scene_id": [s.source.id for s in scenes],
            "source": [s.source.origin for s in scenes],
            "date": [s.source.date for s in scenes],
            "cloud_cover": [s.source.cloud_cover for s in scenes],
            "scene_crs": [s.scene.info.crs.to_string() for s in scenes],
        },
        geometry=[s.footprint for s in scenes],
        crs=crs,
    )
    gdf.to_file(dest, layer="scenes", driver="GPKG")
