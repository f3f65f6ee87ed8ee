"""Ingest speed (issue 29): ``ingest_job`` of a size² source into a working scene store, this
tree's code against a baseline commit's, side by side. ``--source geotiff`` (default): a 14-band
float32 GeoTIFF (``run.make_scene``'s generator). ``--source bands``: a Sentinel-2 L2A SAFE-like
product (``make_product``: lossless JPEG 2000 bands with Sentinel-2's 1024² tiles at 10, 20 and
60 m, the 20 m SCL, the product metadata) and a Copernicus-GLO-30-like DEM (EPSG:4326, 1 arcsec,
1024² tiles); size is the side at 10 m (10980: a whole Sentinel-2 tile).

Each side runs in its own child process (``python benchmarks/ingest.py child TREE SRC DEST [DEM]``),
the sides alternating, ``--repeats`` times each; the baseline's package is taken from
``git archive REF``. ``--cache MB`` (repeatable; ``unbounded``: GDAL's default, 5 % of memory)
adds a side: this tree with ``GDAL_CACHEMAX`` set in the child's environment (a band folder's
ingest honours it over its 64 MB cap; the GeoTIFF ingest sizes its own). The source is read
through once before each run, as a job's hashing leaves it in the page cache. Timed:
``ingest_job`` alone (the imports it needs are made before), its wall and CPU seconds, the
child's peak RSS and the store's bytes on disk.

    .venv/bin/python benchmarks/ingest.py [--source geotiff|bands] [--size 4096] [--repeats 3]
        [--baseline REF|none] [--cache MB|unbounded ...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The last commit before issue 29's ingest changes.
BASELINE = "9a511cb"
#: A Sentinel-2 L2A product as ESA names it; its bands at their native resolution (the R20m and
#: R60m copies of finer bands, and B8A, are not read by the ingest and not made).
PRODUCT = "S2B_MSIL2A_20250101T050000_N0511_R019_T45RUL_20250101T080000.SAFE"
GRANULE = "GRANULE/L2A_T45RUL_A040000_20250101T050000/IMG_DATA"
BANDS_AT = {10: ("B02", "B03", "B04", "B08"), 20: ("B05", "B06", "B07", "B11", "B12", "SCL"), 60: ("B01", "B09")}
UTM, ORIGIN = "EPSG:32645", (500000.0, 3100000.0)
S2_TILE = 1024  # the internal JPEG 2000 tiles of every Sentinel-2 band file


def child(tree: str, src: str, dest: str, dem: str | None = None) -> None:
    """Ingest ``src`` into ``dest`` with the package in ``tree`` (a band folder when ``dem`` is
    given); print the figures as JSON."""
    sys.path.insert(0, tree)
    import landslide_batch.ingest.assemble  # noqa: F401  (imports before the clock starts)
    import landslide_batch.ingest.geotiff  # noqa: F401
    from landslide_batch.ingest import SceneInputs, ingest_job

    assert Path(landslide_batch.ingest.__file__).is_relative_to(tree), landslide_batch.ingest.__file__
    inputs = SceneInputs(dem=dem) if dem else None
    wall, cpu = time.perf_counter(), time.process_time()
    ingest_job(Path(src), Path(dest), chunk=512, inputs=inputs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stored = sum(p.stat().st_size for p in Path(dest).rglob("*") if p.is_file())
    # VmHWM, not ru_maxrss: exec keeps the forking parent's peak in ru_maxrss (a parent that has
    # just generated a large scene would stand in for the child)
    peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"ingest_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "stored_mb": stored / 1e6}))


def read_through(*paths: Path) -> None:
    """Every file under ``paths`` read once (into the page cache)."""
    for path in paths:
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            with open(file, "rb") as f:
                while f.read(1 << 26):
                    pass


@dataclass(frozen=True)
class Side:
    tree: Path
    env: dict[str, str]  # added to the child's environment


def run_side(side: Side, src: list[Path], dest: Path) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    read_through(*src)
    cmd = [sys.executable, __file__, "child", str(side.tree), str(src[0]), str(dest), *map(str, src[1:])]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **side.env}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"ingest in {side.tree} {side.env} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(dest, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def texture(seed: int, side: int = S2_TILE) -> np.ndarray:
    """A side² field of digital numbers as L2A ships them (1000 + reflectance x 10000): smooth
    relief and fields with per-pixel noise of some 8 bits, so JPEG 2000 compresses it losslessly
    about 2x, as real bands."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side * 2 * np.pi
    smooth = 1200 * (1 + np.sin(3 * x + seed) * np.cos(2 * y)) + 300 * np.sin(17 * (x + y))
    return (1000 + 300 + smooth + rng.integers(0, 200, (side, side))).astype(np.uint16)


def write_jp2(path: Path, side: int, res: int, seed: int, dtype: str = "uint16") -> None:
    """A side² lossless JPEG 2000 band at ``res`` m, in 1024² tiles (Sentinel-2's layout); the
    texture repeats every tile (its content does not change the decoder's work per tile)."""
    import rasterio
    from rasterio.transform import from_origin

    reps = -(-side // S2_TILE)
    tile = texture(seed) if dtype == "uint16" else np.where(texture(seed) % 97 == 0, 9, 4).astype(dtype)
    data = np.tile(tile, (reps, reps))[:side, :side]
    profile = dict(driver="JP2OpenJPEG", height=side, width=side, count=1, dtype=dtype, crs=UTM)
    options = dict(QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=S2_TILE, BLOCKYSIZE=S2_TILE)
    with rasterio.open(path, "w", transform=from_origin(*ORIGIN, res, res), **profile, **options) as ds:
        ds.write(data, 1)


def write_dem(path: Path, size: int, margin: float = 0.01) -> None:
    """A float32 DEM in EPSG:4326 at 1 arcsec over the scene and a margin, 1024² tiles, deflate
    (as Copernicus GLO-30's COGs): it is reprojected and its slope computed, as a real one."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    x0, y0 = ORIGIN
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", x0, y0 - size * 10, x0 + size * 10, y0)
    res = 1 / 3600
    width, height = int((east - west + 2 * margin) / res) + 1, int((north - south + 2 * margin) / res) + 1
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / 3600
    z = 1500 + 400 * x - 300 * y + 200 * np.sin(40 * x) * np.cos(30 * y)
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="float32", crs="EPSG:4326")
    layout = dict(tiled=True, blockxsize=S2_TILE, blockysize=S2_TILE, compress="deflate")
    transform = from_origin(west - margin, north + margin, res, res)
    with rasterio.open(path, "w", transform=transform, **profile, **layout) as ds:
        ds.write(z, 1)


def make_product(work: Path, size: int) -> list[Path]:
    """A Sentinel-2 L2A SAFE-like product of side ``size`` at 10 m and its DEM (kept in ``work``
    once made); -> [product, DEM]."""
    from landslide_batch.synthetic import write_l2a_metadata

    root, dem = work / f"s2-{size}" / PRODUCT, work / f"s2-{size}" / "dem_4326.tif"
    if (root / "MTD_MSIL2A.xml").exists():
        return [root, dem]
    shutil.rmtree(root.parent, ignore_errors=True)
    for res, bands in BANDS_AT.items():
        folder = root / GRANULE / f"R{res}m"
        folder.mkdir(parents=True)
        for seed, band in enumerate(bands):
            dtype = "uint8" if band == "SCL" else "uint16"
            write_jp2(folder / f"T45RUL_20250101T050000_{band}_{res}m.jp2", -(-size * 10 // res), res, seed, dtype)
    write_dem(dem, size)
    write_l2a_metadata(root / "MTD_MSIL2A.xml")
    return [root, dem]


def baseline_tree(ref: str, into: Path) -> Path:
    """The baseline commit's ``landslide_batch`` package, unpacked under ``into``."""
    git = ["git", "-C", str(ROOT), "archive", ref, "landslide_batch"]
    archive = subprocess.run(git, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(
    source: str, size: int, repeats: int, baseline: str, caches: list[str], work: Path
) -> dict[str, list[dict]]:
    """-> side name -> one figures dict per run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from run import make_scene

    src = make_product(work, size) if source == "bands" else [make_scene(work / f"scene{size}.tif", size)]
    with tempfile.TemporaryDirectory(dir=work) as old:
        sides = {"this tree": Side(ROOT, {})}
        for mb in caches:
            sides[f"this tree, GDAL_CACHEMAX={mb}"] = Side(ROOT, {"GDAL_CACHEMAX": "5%" if mb == "unbounded" else mb})
        if baseline != "none":
            sides = {f"baseline {baseline}": Side(baseline_tree(baseline, Path(old)), {}), **sides}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(repeats):
            for name, side in sides.items():
                runs[name].append(run_side(side, src, work / "scene.zarr"))
    return runs


def print_table(source: str, size: int, runs: dict[str, list[dict]]) -> None:
    mp = size * size / 1e6
    what = (
        "Sentinel-2 L2A SAFE-like product (JPEG 2000, 1024² tiles, 10/20/60 m) + EPSG:4326 DEM"
        if source == "bands"
        else "14-band float32 GeoTIFF"
    )
    print(f"\ningest_job, {size}² {what} ({mp:.1f} Mpx at 10 m), chunks 512², runs interleaved\n")
    print("| code | ingest s (each run) | median s | Mpx/s | CPU s (median) | peak RSS MB | store MB |")
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for name, rows in runs.items():
        walls = [r["ingest_s"] for r in rows]
        medians[name] = statistics.median(walls)
        print(
            f"| {name} | {', '.join(f'{w:.2f}' for w in walls)} | {medians[name]:.2f} | {mp / medians[name]:.1f} | "
            f"{statistics.median(r['cpu_s'] for r in rows):.2f} | {max(r['peak_rss_mb'] for r in rows):.0f} | "
            f"{rows[0]['stored_mb']:.0f} |"
        )
    names = list(medians)
    if names[0].startswith("baseline") and "this tree" in medians:
        print(f"\nthis tree / baseline, median ingest seconds: {medians['this tree'] / medians[names[0]]:.2f}×")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("geotiff", "bands"), default="geotiff", help="what is ingested")
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels at 10 m (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved (default 3)")
    parser.add_argument("--baseline", default=BASELINE, help=f"commit to compare with, or none (default {BASELINE})")
    parser.add_argument("--cache", action="append", default=[], help="add a side: GDAL_CACHEMAX MB, or unbounded")
    parser.add_argument("--work", type=Path, help="folder for the scene and stores (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = measure(args.source, args.size, args.repeats, args.baseline, args.cache, work)
    print_table(args.source, args.size, runs)


if __name__ == "__main__":
    main()
