"""``landslide-batch compare``: a finished job's map scored against an inventory, with no model.

The job folder is made by the step a job's finish runs (:func:`derive.write_mask_and_polygons`)
from a synthetic probability map on a UTM grid with square scars of every size class, one false
scar, and a nodata strip. The inventory holds the same scars (one shifted, so that overlap
matters), one the map missed and one under the nodata strip. Shows: compare's figures equal an
independent count done here with numpy and box arithmetic; the same figures from GeoJSON in
WGS 84, a Shapefile in Web Mercator and GeoParquet; torch is never imported; an empty inventory,
invalid polygons, points, no CRS and unknown formats give documented results or clear errors
with nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import Point, Polygon, box

from landslide_batch.errors import ConfigError, InputError
from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs import derive
from landslide_batch.outputs.compare_job import compare_job

CRS = "EPSG:32645"
PX = 10.0  # metres
X0, Y0 = 300_000.0, 3_100_000.0
H = W = 120
NODATA_ROWS = (100, 120)  # a strip with no valid pixel
T = 0.5
# (row, col, height, width) of each scar, in pixels
MAPPED = {"large": (10, 10, 12, 12), "medium": (40, 40, 6, 6), "small": (70, 70, 3, 3), "false": (10, 80, 5, 5)}
INVENTORY = {
    "large": (10, 10, 12, 12),  # exact
    "medium": (40, 42, 6, 6),  # shifted by 2 px: IoU 24 / 48 = 0.5
    "small": (70, 70, 3, 3),
    "missed": (60, 100, 4, 4),
    "unobserved": (105, 20, 5, 5),  # under the nodata strip
}
HEAVY = ("torch", "ray", "segmentation_models_pytorch", "timm", "torchvision")
RUNNER = (
    "import json, sys\n"
    "from landslide_batch.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    "sys.exit(code)\n"
)


def pixel_box(row: int, col: int, h: int, w: int):
    return box(X0 + col * PX, Y0 - (row + h) * PX, X0 + (col + w) * PX, Y0 - row * PX)


def raster_of(boxes) -> np.ndarray:
    a = np.zeros((H, W), bool)
    for r, c, h, w in boxes:
        a[r : r + h, c : c + w] = True
    return a


def write_job(out: Path) -> Path:
    """A finished job's folder: mask and polygons from a map with the ``MAPPED`` scars."""
    out.mkdir(parents=True)
    prob = np.full((H, W), 0.1, np.float32)
    prob[raster_of(MAPPED.values())] = 0.9
    prob[NODATA_ROWS[0] : NODATA_ROWS[1]] = -1.0
    info = SceneInfo(H, W, (), rasterio.crs.CRS.from_string(CRS).to_wkt(), tuple(Affine(PX, 0, X0, 0, -PX, Y0)), 64)
    source = derive.ProbabilitySource(info, derive.window_reader(prob), None)
    derive.write_mask_and_polygons(source, T, 1, out / "mask.tif", out / "landslides.gpkg", out / "scratch.tif")
    outputs = {"mask": "mask.tif", "polygons": "landslides.gpkg"}
    (out / "run.json").write_text(json.dumps({"status": "complete", "outputs": outputs}))
    return out


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    return write_job(tmp_path_factory.mktemp("job") / "out")


def inventory_frame(names=tuple(INVENTORY)) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"name": list(names)}, geometry=[pixel_box(*INVENTORY[n]) for n in names], crs=CRS)


def iou(a, b) -> float:
    (r1, c1, h1, w1), (r2, c2, h2, w2) = a, b
    dy = max(0, min(r1 + h1, r2 + h2) - max(r1, r2))
    dx = max(0, min(c1 + w1, c2 + w2) - max(c1, c2))
    return dy * dx / (h1 * w1 + h2 * w2 - dy * dx)


def size_index(box_px) -> int:
    area = box_px[2] * box_px[3] * PX * PX
    return 0 if area < 1_000 else 1 if area < 10_000 else 2


def safe(num: int, den: int):
    return num / den if den else None


def f1_of(p, r):
    return None if p is None or r is None else (0.0 if p + r == 0 else 2 * p * r / (p + r))


def expected(min_iou: float, inventory: dict) -> tuple[dict, dict]:
    """Object and pixel scores counted here, without compare's code: box arithmetic and numpy."""
    observed = np.ones((H, W), bool)
    observed[NODATA_ROWS[0] : NODATA_ROWS[1]] = False
    seen = {n: b for n, b in inventory.items() if observed[raster_of([b])].any()}
    m_hit = {n: any(iou(b, r) >= min_iou and iou(b, r) > 0 for r in seen.values()) for n, b in MAPPED.items()}
    r_hit = {n: any(iou(m, b) >= min_iou and iou(m, b) > 0 for m in MAPPED.values()) for n, b in seen.items()}
    mapped_px, inv_px = raster_of(MAPPED.values()) & observed, raster_of(seen.values()) & observed
    objects, pixels = {}, {}
    for c, name in enumerate(("all", "small", "medium", "large")):
        ms = [n for n, b in MAPPED.items() if name == "all" or size_index(b) == c - 1]
        rs = [n for n, b in seen.items() if name == "all" or size_index(b) == c - 1]
        p, r = safe(sum(m_hit[n] for n in ms), len(ms)), safe(sum(r_hit[n] for n in rs), len(rs))
        objects[name] = {"mapped": len(ms), "inventory": len(rs), "precision": p, "recall": r, "f1": f1_of(p, r)}
        mc, rc = raster_of(MAPPED[n] for n in ms) & observed, raster_of(seen[n] for n in rs) & observed
        pp, pr = safe(int((mc & inv_px).sum()), int(mc.sum())), safe(int((rc & mapped_px).sum()), int(rc.sum()))
        f = f1_of(pp, pr)
        union = int((mapped_px | inv_px).sum())
        iou_px = safe(int((mapped_px & inv_px).sum()), union) if name == "all" else (None if f is None else f / (2 - f))
        pixels[name] = {"precision": pp, "recall": pr, "f1": f, "iou": iou_px}
    return objects, pixels


def assert_scores(result: dict, min_iou: float, inventory: dict = INVENTORY) -> None:
    objects, pixels = expected(min_iou, inventory)
    for name, want in objects.items():
        got = {k: result["objects"][name][k] for k in want}
        assert got == pytest.approx(want), name
    for name, want in pixels.items():
        got = {k: result["pixels"][name][k] for k in want}
        assert got == pytest.approx(want), name


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=300)


def test_compare_equals_an_independent_count_and_loads_no_model(tmp_path, job_dir):
    inv = tmp_path / "inventory.gpkg"
    inventory_frame().to_file(inv, driver="GPKG")
    done = run_cli("compare", str(job_dir), "--inventory", str(inv), "--report", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # no torch, no Ray, no model
    result = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert_scores(result, 0.1)
    # the case as built: 3 of 4 mapped right, 3 of 4 observed inventory objects found
    assert result["objects"]["all"]["precision"] == 0.75 and result["objects"]["all"]["recall"] == 0.75
    assert result["inventory"]["unobserved"] == 1 and result["observed_pixels"] == (H - 20) * W
    missed = gpd.read_file(tmp_path / "report" / "compare.gpkg", layer="missed")
    false = gpd.read_file(tmp_path / "report" / "compare.gpkg", layer="false")
    assert list(missed["name"]) == ["missed"] and missed.crs == CRS
    assert len(false) == 1 and false.geometry[0].equals(pixel_box(*MAPPED["false"]))
    table = (tmp_path / "report" / "compare.md").read_text()
    assert "| all | 4 | 4 | 0.750 | 0.750 | 0.750 |" in table


def test_overlap_threshold_decides_matches(tmp_path, job_dir):
    inv = tmp_path / "inventory.gpkg"
    inventory_frame().to_file(inv, driver="GPKG")
    result = compare_job(job_dir, inv, min_iou=0.6, report=tmp_path / "r")
    assert_scores(result, 0.6)
    assert result["objects"]["medium"]["recall"] == 0  # the shifted scar (IoU 0.5) no longer matches


@pytest.mark.parametrize(
    ("name", "crs"),
    [("inventory.geojson", "EPSG:4326"), ("inventory.shp", "EPSG:3857"), ("inventory.parquet", "EPSG:32644")],
)
def test_inventory_in_another_crs_and_format_gives_the_same_figures(tmp_path, job_dir, name, crs):
    inv = tmp_path / name
    frame = inventory_frame().to_crs(crs)
    frame.to_parquet(inv) if inv.suffix == ".parquet" else frame.to_file(inv)
    result = compare_job(job_dir, inv, report=tmp_path / "r")
    assert_scores(result, 0.1)
    assert result["inventory"]["crs"] == crs


def test_empty_inventory_scores_every_mapped_object_false(tmp_path, job_dir):
    inv = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"name": []}, geometry=[], crs=CRS).to_file(inv, driver="GPKG")
    result = compare_job(job_dir, inv, report=tmp_path / "r")
    assert result["objects"]["all"] == {
        "mapped": 4,
        "mapped_matched": 0,
        "inventory": 0,
        "inventory_matched": 0,
        "precision": 0.0,
        "recall": None,
        "f1": None,
    }
    assert result["pixels"]["all"]["recall"] is None and result["pixels"]["all"]["iou"] == 0.0
    assert len(gpd.read_file(tmp_path / "r" / "compare.gpkg", layer="false")) == 4


def test_invalid_and_empty_geometries_are_repaired_or_dropped_and_counted(tmp_path, job_dir):
    r, c, h, w = INVENTORY["large"]
    x0, y1 = X0 + c * PX, Y0 - r * PX
    x1, y0 = x0 + w * PX, y1 - h * PX
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting: two triangles
    sliver = Polygon([(x0, y0), (x0 + PX, y0), (x0 + 2 * PX, y0)])  # collinear: no area
    assert not bowtie.is_valid
    frame = inventory_frame()
    frame.loc[frame["name"] == "large", "geometry"] = bowtie
    extra = gpd.GeoDataFrame({"name": ["none", "sliver"]}, geometry=[None, sliver], crs=CRS)
    inv = tmp_path / "inventory.gpkg"
    gpd.pd.concat([frame, extra]).to_file(inv, driver="GPKG")
    result = compare_job(job_dir, inv, report=tmp_path / "r")
    record = result["inventory"]
    assert (record["read"], record["objects"], record["dropped_empty"]) == (7, 5, 1)
    assert (record["repaired_invalid"], record["dropped_without_area"]) == (2, 1)
    # the repaired bowtie (half the square) still overlaps the large scar with IoU 0.5: matched
    assert result["objects"]["all"]["recall"] == 0.75


def test_bad_inventories_fail_clearly_and_write_nothing(tmp_path, job_dir):
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[Point(X0, Y0)], crs=CRS).to_file(points, driver="GPKG")
    no_crs = tmp_path / "nocrs.shp"
    gpd.GeoDataFrame({"n": [1]}, geometry=[pixel_box(*INVENTORY["large"])]).to_file(no_crs)
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json")
    cases = {
        points: "found Point",
        no_crs: "declares no CRS",
        garbage: "cannot be read as GeoJSON",
        tmp_path / "inv.csv": "unknown format '.csv'",
        tmp_path / "absent.gpkg": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            compare_job(job_dir, path, report=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    done = run_cli("compare", str(job_dir), "--inventory", str(points), "--report", str(tmp_path / "r"))
    assert done.returncode == 2 and "found Point" in done.stderr and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="min-iou"):
        compare_job(job_dir, points, min_iou=1.5)
    with pytest.raises(InputError, match="holds no finished job"):
        compare_job(tmp_path, points)


def test_observed_tif_decides_what_is_scored(tmp_path, job_dir):
    """Where the job wrote ``observed.tif``, pixels seen on no pass are not scored: the inventory
    object under them is unobserved, not missed."""
    import shutil

    out = Path(shutil.copytree(job_dir, tmp_path / "out"))
    with rasterio.open(out / "mask.tif") as ds:
        profile = {**ds.profile, "driver": "GTiff", "dtype": "uint16", "nodata": 65535}
    looks = np.full((H, W), 2, np.uint16)
    r, c, h, w = INVENTORY["missed"]
    looks[r - 2 : r + h + 2, c - 2 : c + w + 2] = 0  # clouds on every pass over the missed scar
    with rasterio.open(out / "observed.tif", "w", **profile) as ds:
        ds.write(looks, 1)
    inv = tmp_path / "inventory.gpkg"
    inventory_frame().to_file(inv, driver="GPKG")
    result = compare_job(out, inv, report=tmp_path / "r")
    assert result["observed_from"] == "observed.tif" and result["inventory"]["unobserved"] == 2
    assert result["observed_pixels"] == (H - 20) * W - (h + 4) * (w + 4)
    assert_scores(result, 0.1, {n: b for n, b in INVENTORY.items() if n != "missed"})
    assert result["objects"]["all"]["recall"] == 1.0
