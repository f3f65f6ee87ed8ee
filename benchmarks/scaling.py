"""Rows that ask how the cost grows as the work grows (issue 29): region jobs of 4, 9 and 16
scenes, products and ``vectorize`` from a 4096² against a 16384² store, and the finishing of maps
whose content makes it hard (≥ 100,000 objects; most of the area above the threshold).

The finishing rows need no inference: they read a probability store made here, window by window
(a landslide-like map: sparse blobs on a low background; or a noisy texture, as an arid or urban
scene gives), in a child process (``python benchmarks/scaling.py finish ...``) whose peak RSS is
its own. ``vectorize`` is timed as the step it runs (:func:`.derive.write_mask_and_polygons`
from the store), without its run.json bookkeeping.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = 1024  # the store's chunk: the products read it window by window
TEXTURES = ("blobs", "noise")
CRS_EPSG, PIXEL_M = 32645, 10.0


def texture(kind: str, seed: int, side: int = WINDOW) -> np.ndarray:
    """One side² window of probability: ``blobs`` (about 60 landslide-sized objects per window on
    a smooth background below 0.1) or ``noise`` (smoothed noise over [0, 1]: objects of a few pixels
    everywhere above a high threshold, one map-wide object with many holes above a low one)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    if kind == "noise":
        p = ndimage.gaussian_filter(rng.random((side, side), dtype=np.float32), 1.0)
        return ((p - p.min()) / np.ptp(p)).astype(np.float32)
    seeds = np.zeros((side, side), np.float32)
    seeds[rng.integers(0, side, 60), rng.integers(0, side, 60)] = 2 * np.pi * 4.0**2  # a lone blob peaks at 1
    blobs = ndimage.gaussian_filter(seeds, 4.0)
    p = np.clip(0.1 * ndimage.gaussian_filter(rng.random((side, side), dtype=np.float32), 2.0) + blobs, 0, 1)
    return (np.round(p * 255) / 255).astype(np.float32)  # 8-bit steps: the store compresses as a real map's


def make_store(path: Path, side: int, kind: str) -> Path:
    """A probability store (``probability``, ``uncertainty`` and ``slope``, chunked as a job's) of
    side² px, written window by window; windows repeat after the first 16 (generating each costs)."""
    import zarr

    if (path / ".done").exists():
        return path
    group = zarr.open_group(str(path), mode="w")
    arrays = {
        name: group.create_array(name, shape=(side, side), chunks=(WINDOW, WINDOW), dtype="float32", fill_value=-1.0)
        for name in ("probability", "uncertainty", "slope")
    }
    cache: dict[int, np.ndarray] = {}
    for i, (y0, x0) in enumerate((y, x) for y in range(0, side, WINDOW) for x in range(0, side, WINDOW)):
        window = cache.setdefault(i % 16, texture(kind, seed=i % 16))
        h, w = min(WINDOW, side - y0), min(WINDOW, side - x0)
        arrays["probability"][y0 : y0 + h, x0 : x0 + w] = window[:h, :w]
        arrays["uncertainty"][y0 : y0 + h, x0 : x0 + w] = 0.1 * window[:h, :w]
        arrays["slope"][y0 : y0 + h, x0 : x0 + w] = 30 * window[:h, :w]
    (path / ".done").touch()
    return path


def _source(store: Path):
    """The store's map as the products read it, on an EPSG:32645 10 m grid."""
    import rasterio
    import zarr

    from landslide_batch.ingest.scene import SceneInfo
    from landslide_batch.outputs.derive import ProbabilitySource, window_reader

    group = zarr.open_group(str(store), mode="r")
    side = group["probability"].shape[0]
    crs = rasterio.crs.CRS.from_epsg(CRS_EPSG).to_wkt()
    transform = (PIXEL_M, 0.0, 500000.0, 0.0, -PIXEL_M, 3100000.0)
    info = SceneInfo(side, side, ("slope",), crs, transform, WINDOW)
    return group, ProbabilitySource(info, window_reader(group["probability"]), window_reader(group["slope"]))


def finish(store: Path, out: Path, threshold: float, steps: list[str]) -> dict:
    """Run ``steps`` on the store's map into ``out``; -> seconds per step (and the objects found).
    Steps: ``rasters`` (probability and uncertainty COGs with overviews), ``quicklook``, and
    ``polygons:FMT`` (the mask COG and the polygons in FMT: the step a job's finish and
    ``vectorize`` run)."""
    import geopandas  # noqa: F401  (imported before the clock starts: a job has it loaded)

    from landslide_batch.outputs.derive import write_mask_and_polygons
    from landslide_batch.outputs.metadata import BANDS
    from landslide_batch.outputs.polygons import POLYGON_FILES
    from landslide_batch.outputs.quicklook import write_quicklook
    from landslide_batch.outputs.rasters import write_cog

    group, source = _source(store)
    out.mkdir(parents=True, exist_ok=True)
    seconds, summary = {}, {}
    for step in steps:
        t0 = time.perf_counter()
        if step == "rasters":
            for key in ("probability", "uncertainty"):
                read = lambda y0, y1, x0, x1, a=group[key]: a[y0:y1, x0:x1]  # noqa: E731
                write_cog(
                    out / f"{key}.tif",
                    source.info,
                    read,
                    dtype="float32",
                    nodata=-1.0,
                    scratch=out / "scratch.tif",
                    band=BANDS[key],
                )
        elif step == "quicklook":
            import zarr

            side = source.info.height
            bands = zarr.open_array(
                str(out / "bands.zarr"),
                mode="w",
                shape=(14, side, side),
                chunks=(14, WINDOW, WINDOW),
                dtype="float32",
                fill_value=0.1,
            )
            write_quicklook(out / "quicklook.png", bands, group["probability"], threshold, source.info)
        else:
            fmt = step.split(":")[1]
            summary = write_mask_and_polygons(
                source, threshold, 4, out / "mask.tif", out / POLYGON_FILES[fmt], scratch=out / "scratch.tif"
            )
        seconds[step] = time.perf_counter() - t0
    return {"seconds": seconds, "objects": summary.get("objects"), "above": _share_above(group, threshold)}


def _share_above(group, threshold: float) -> float:
    """Share of the map at or above the threshold (the first 16 windows: the rest repeat them)."""
    prob = group["probability"][: 4 * WINDOW, : 4 * WINDOW]
    return float((prob >= threshold).mean())


def measured_finish(work: Path, name: str, side: int, kind: str, threshold: float, steps: list[str]) -> dict:
    """:func:`finish` in a child process; -> its seconds, objects, share above, wall and peak RSS."""
    from run import _run_measured, log

    store = make_store(work / f"store_{kind}_{side}.zarr", side, kind)
    out = work / f"finish_{name}"
    log(f"finishing {name}: {side}² {kind} map, threshold {threshold}, {' '.join(steps)} ...")
    wall, peak, _ = _run_measured([sys.executable, __file__, "finish", str(store), str(out), str(threshold), *steps])
    return {
        "side": side,
        "texture": kind,
        "threshold": threshold,
        **json.loads((out / "finish.json").read_text()),
        "wall_s": wall,
        "peak_rss_mb": peak,
    }


def finishing_rows(work: Path, sides: tuple[int, int], hard_side: int = 4096) -> dict:
    """Products + ``vectorize`` at two map sides (same content per km²), and the two hard maps:
    a noisy texture at threshold 0.6 (~50,000 objects per 2048²) and at 0.38 (~80 % above)."""
    steps = ["rasters", "quicklook", "polygons:gpkg", "polygons:parquet"]  # products, then vectorize's step
    rows = {"scale": {side: measured_finish(work, f"scale_{side}", side, "blobs", 0.5, steps) for side in sides}}
    every_format = ["polygons:gpkg", "polygons:parquet", "polygons:fgb"]
    rows["objects"] = measured_finish(work, "objects", hard_side, "noise", 0.6, every_format)
    rows["mostly_above"] = measured_finish(work, "mostly_above", hard_side, "noise", 0.38, every_format)
    return rows


def region_scaling_rows(work: Path, model: Path, counts: tuple[int, ...], size: int, common: dict) -> dict:
    """Region jobs of n × n scenes (size² each, 64 px overlaps, one AOI over them all) on the local
    executor: seconds per km², peak RSS of the driver (the job's process) and its stages."""
    from run import log, region_scenes, run_pipeline

    rows = {}
    for n in counts:
        side = int(round(n**0.5))
        scenes, aoi = region_scenes(work, size, side=side)
        log(f"region scaling: {n} × {size}² scenes, local executor ...")
        m = run_pipeline(scenes, model, work / f"out_region_{n}_{size}", "local", **common, extra=("--aoi", str(aoi)))
        t = m["timings"]
        km2 = m["region"]["height"] * m["region"]["width"] * PIXEL_M**2 / 1e6
        stages = {"map_s": t["map_s"], "merge_s": t["merge_s"], "products_s": t["finish_s"]}
        stages = {"ingest_s": t["total_s"] - sum(stages.values()), **stages}  # before the map: scenes ingested
        rows[n] = {
            "scenes": n,
            "size": size,
            "km2": km2,
            "total_s": t["total_s"],
            "s_per_km2": t["total_s"] / km2,
            "wall_s": m["wall_s"],
            "peak_rss_mb": m["peak_rss_mb"],
            "stages": stages,
        }
    return rows


def region_lines(rows: dict, gates) -> list[str]:
    """Per region size: seconds per km², the driver's peak RSS and the stages; gated: the largest
    against the smallest."""
    from run import GATES

    lines = []
    for n, row in rows.items():
        st = row["stages"]
        lines.append(
            f"| region {n} × {row['size']}² scenes, local ({row['km2']:.0f} km²): s/km², driver peak RSS MB; "
            f"ingest {st['ingest_s']:.1f} s, map {st['map_s']:.1f} s, merge {st['merge_s']:.1f} s, products "
            f"{st['products_s']:.1f} s | {row['s_per_km2']:.3f}, {row['peak_rss_mb']:.0f} | | | |"
        )
    small, large = rows[min(rows, key=int)], rows[max(rows, key=int)]
    name = f"region {large['scenes']} scenes vs {small['scenes']}"
    t, m = large["s_per_km2"] / small["s_per_km2"], large["peak_rss_mb"] / small["peak_rss_mb"]
    g_t, g_m = GATES["region_s_per_km2"], GATES["region_rss"]
    lines.append(gates.row(f"{name}: seconds per km²", f"{t:.2f}×", f"≤ {g_t}×", t <= g_t))
    lines.append(gates.row(f"{name}: driver peak RSS", f"{m:.2f}×", f"≤ {g_m}×", m <= g_m))
    return lines


def finishing_lines(rows: dict, gates) -> list[str]:
    """Products + vectorize per side (seconds per megapixel, peak RSS; gated: largest against
    smallest), and the two hard maps (gated: seconds of the slowest format, peak RSS)."""
    from run import GATES, MIN_OBJECTS, MOSTLY_ABOVE

    lines, scale = [], rows["scale"]
    per_mpx = {side: sum(r["seconds"].values()) / (int(side) ** 2 / 1e6) for side, r in scale.items()}
    for side, r in scale.items():
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items())
        lines.append(
            f"| products + vectorize {side}² ({r['objects']} objects; {steps}): s/Mpx, peak RSS MB "
            f"| {per_mpx[side]:.3f}, {r['peak_rss_mb']:.0f} | | | |"
        )
    lo, hi = min(scale, key=int), max(scale, key=int)
    t, m = per_mpx[hi] / per_mpx[lo], scale[hi]["peak_rss_mb"] / scale[lo]["peak_rss_mb"]
    g_t, g_m = GATES["finish_s_per_mpx"], GATES["finish_rss"]
    lines.append(gates.row(f"products + vectorize {hi}² vs {lo}²: s/Mpx", f"{t:.2f}×", f"≤ {g_t}×", t <= g_t))
    lines.append(gates.row(f"products + vectorize {hi}² vs {lo}²: peak RSS", f"{m:.2f}×", f"≤ {g_m}×", m <= g_m))
    for key, what in (("objects", f"≥ {MIN_OBJECTS:,} objects"), ("mostly_above", f"{MOSTLY_ABOVE:.0%} above")):
        r = rows[key]
        worst = max(r["seconds"].values())
        name = (
            f"finishing a {r['side']}² map, {what} ({r['objects']:,} objects, {r['above']:.0%} above; "
            + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items())
            + ")"
        )
        g_rss = GATES[f"{key}_rss_mb"]
        if key == "objects":
            ok = worst <= GATES["objects_s"] and r["objects"] >= MIN_OBJECTS
            lines.append(gates.row(f"{name}: slowest format, s", f"{worst:.1f}", f"≤ {GATES['objects_s']:.0f} s", ok))
        else:
            lines.append(f"| {name}: slowest format, s | {worst:.1f} | | | |")
        ok = r["peak_rss_mb"] <= g_rss and (key == "objects" or r["above"] >= MOSTLY_ABOVE)
        lines.append(gates.row(f"{name}: peak RSS MB", f"{r['peak_rss_mb']:.0f}", f"≤ {g_rss:.0f}", ok))
    return lines


def main() -> int:
    """These rows alone (``run.py`` runs them with the others): ``--smoke`` at toy sizes."""
    import argparse
    import os
    import tempfile

    from run import Gates, init_model_folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="toy sizes: the rows run and report, gates mean nothing")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lsb-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "unet_mobilenet_v2"
    if not model.exists():
        init_model_folder("Unet", "mobilenet_v2", model, seed=0)
    common = dict(batch=16, threads=args.threads, device="cpu", block=256 if args.smoke else 1024)
    counts, size = ((1, 4), 256) if args.smoke else ((4, 9, 16), 1024)
    sides, hard = ((256, 512), 256) if args.smoke else ((4096, 16384), 4096)
    t0 = time.perf_counter()
    r = {"region_scaling": region_scaling_rows(work, model, counts, size, common), "smoke": args.smoke}
    r["finishing"] = finishing_rows(work, sides, hard)
    r["elapsed_s"] = time.perf_counter() - t0
    gates = Gates()
    print("\n".join(region_lines(r["region_scaling"], gates) + finishing_lines(r["finishing"], gates)))
    r["gates"] = gates.rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["finish"]:  # the child process of ``measured_finish``
        store, out, threshold, *steps = sys.argv[2:]
        result = finish(Path(store), Path(out), float(threshold), steps)
        (Path(out) / "finish.json").write_text(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
