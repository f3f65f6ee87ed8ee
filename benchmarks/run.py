"""Throughput, efficiency, redundancy and memory of the region pipeline, measured side by side.

    python benchmarks/run.py --quick      # 2048² pipeline scene, memory at 1024²/2048²/4096² (< 5 min here)
    python benchmarks/run.py              # full: 8192² pipeline scene as well
    python benchmarks/run.py --sizes 4096 # pipeline rows at other scene sizes

Prints a table with targets and PASS/FAIL and writes JSON (``--json``). All rows use the
same untrained U-Net-ResNet34 (random weights: speed does not depend on training), batch
size, threads and device. Memory rows use a lighter U-Net-MobileNetV2 to keep the run
short: the pipeline's memory is its buffers, not the model's compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landslide_batch.bands import derive_features  # noqa: E402
from landslide_batch.config import EnsembleConfig, EnsembleMember  # noqa: E402
from landslide_batch.infer.blending import blend_window  # noqa: E402
from landslide_batch.models.card import init_model_folder, load_model_folder  # noqa: E402
from landslide_batch.plan.tiling import TileGrid  # noqa: E402
from landslide_batch.synthetic import synthetic_scene  # noqa: E402

TILE, STRIDE = 128, 64
KM2_PER_TILE_PER_S_TO_PER_H = 3600 * (STRIDE * 10) ** 2 / 1e6  # new area per tile: stride² at 10 m


def make_scene(path: Path, size: int, seed: int = 0, origin: tuple[float, float] = (500000, 3100000)) -> Path:
    """A size² 14-band GeoTIFF (EPSG:32645, 10 m, top-left corner at ``origin``), generated 2048²
    at a time so memory stays small."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    step = min(size, 2048)
    profile = dict(
        driver="GTiff",
        height=size,
        width=size,
        count=14,
        dtype="float32",
        crs="EPSG:32645",
        transform=from_origin(*origin, 10, 10),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, size, step):
            for x in range(0, size, step):
                bands, _ = synthetic_scene(step, step, seed=seed + y * 7 + x)
                ds.write(bands, window=Window(x, y, step, step))
    return path


def prepared_model(model_dir: Path, threads: int, device: str):
    """The model as the pipeline prepares it (BatchNorm folded, channels_last), in an
    ``EnsemblePredictor`` of one member; loaded once and measured by the functions below."""
    from landslide_batch.infer.predictor import EnsemblePredictor

    return EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=model_dir)]), device=device, threads=threads)


def best_rate(step, work: float, device, seconds: float, windows: int) -> float:
    """``work`` units per second of calling ``step()``: the best of ``windows`` timed windows (a
    peak to compare against, not an average that the machine's noise pulls down)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    best = 0.0
    for _ in range(windows):
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        sync()
        best = max(best, n * work / (time.perf_counter() - t0))
    return best


def raw_throughput(predictor, batch: int, seconds: float, windows: int = 3) -> float:
    """Tiles/s of the model's forward alone, on a pre-made in-memory batch."""
    import torch

    member = predictor.ensemble.members[0]
    x = torch.randn(batch, member.card.in_channels, TILE, TILE, device=predictor.device).contiguous(
        memory_format=torch.channels_last
    )
    with torch.inference_mode(), predictor.autocast:
        return best_rate(lambda: torch.sigmoid(member.model(x)), batch, predictor.device, seconds, windows)


def compute_floor(predictor) -> dict:
    """The model's FLOPs per tile (torch's FlopCounterMode: 2 x multiply-adds of convolutions and
    matrix products) and the device's measured matrix rate (square matmuls, in the dtype the
    pipeline computes in: float32 on CPU, bfloat16 under autocast on CUDA). Their ratio is the
    tiles/s no implementation of this model can beat on this device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    member, device = predictor.ensemble.members[0], predictor.device
    x = torch.randn(1, member.card.in_channels, TILE, TILE, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        member.model(x)
    flops = counter.get_total_flops()
    n = 4096 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    rate = best_rate(lambda: a @ b, 2 * n**3, device, seconds=1.0, windows=3)
    return {
        "gflop_per_tile": flops / 1e9,
        "matrix_tflops": rate / 1e12,
        "dtype": str(dtype).split(".")[-1],
        "floor_tiles_per_s": rate / flops,
    }


def _run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; -> (wall seconds, peak RSS in MB, stderr). Peak RSS is the child's own
    VmHWM, polled: ``wait4``'s ru_maxrss would count the forked parent's pages too."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        peak = 0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError):
                pass
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, peak / 1024, stderr


def run_pipeline(
    scene: Path | list[Path],
    model: Path,
    out: Path,
    executor: str,
    batch: int,
    threads: int,
    device: str,
    block: int,
    extra: tuple[str, ...] = (),
    ray_address: str | None = None,
) -> dict:
    """``landslide-batch run`` in a child process (joining the Ray cluster at ``ray_address`` through
    ``RAY_ADDRESS``, as a submitted job does); returns its manifest plus wall time and peak RSS.
    ``model``: a model folder, or an ensemble YAML; ``scene``: a list for a region job (with
    ``--aoi`` in ``extra``)."""
    which = "--ensemble" if model.suffix == ".yaml" else "--model"
    scenes = [a for s in (scene if isinstance(scene, list) else [scene]) for a in ("--scene", str(s))]
    cmd = [
        str(ROOT / ".venv" / "bin" / "landslide-batch"),
        "run",
        *scenes,
        which,
        str(model),
        "--out",
        str(out),
        "--executor",
        executor,
        "--batch-size",
        str(batch),
        "--threads",
        str(threads),
        "--device",
        device,
        "--block",
        str(block),
        "--overwrite",
        *extra,
    ]
    wall, peak, _ = _run_measured(cmd, {**os.environ, "RAY_ADDRESS": ray_address} if ray_address else None)
    manifest = json.loads((out / "run.json").read_text())
    return {**manifest, "wall_s": wall, "peak_rss_mb": peak}


def naive_sliding_window(scene: Path, model_dir: Path, out: Path, batch: int, threads: int, device: str) -> None:
    """What a user would otherwise write: read the whole scene, normalise it as the model card
    says (its features, ``(x - mean) / std``, NaN -> ``nan_fill``), predict every tile of the same
    grid in batches, average the overlaps, write a GeoTIFF. Runs in a child process (see main)."""
    import rasterio
    import torch

    torch.set_num_threads(threads)
    model, card = load_model_folder(model_dir, device=device)
    with rasterio.open(scene) as ds:
        bands, profile = ds.read(), ds.profile
    norm = card.normalization
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (norm.mean, norm.std))
    features = np.nan_to_num((derive_features(bands, card.features) - mean) / std, nan=card.nan_fill)
    del bands
    _, h, w = features.shape
    grid = TileGrid(h, w, TILE, STRIDE)
    m = grid.margin
    ph, pw = grid.origin(grid.ny - 1) + TILE - grid.origin(0), grid.origin(grid.nx - 1) + TILE - grid.origin(0)
    padded = np.pad(features, ((0, 0), (m, ph - h - m), (m, pw - w - m)), mode="reflect")
    num = np.zeros((ph, pw), np.float32)
    den = np.zeros((ph, pw), np.float32)
    weight = blend_window("mean", TILE)
    origins = [(i * STRIDE, j * STRIDE) for i in range(grid.ny) for j in range(grid.nx)]
    with torch.inference_mode():
        for b in range(0, len(origins), batch):
            chunk = origins[b : b + batch]
            x = torch.from_numpy(np.stack([padded[:, y : y + TILE, x : x + TILE] for y, x in chunk])).to(device)
            prob = torch.sigmoid(model(x)[:, 0]).cpu().numpy()
            for p, (y, x) in zip(prob, chunk):
                num[y : y + TILE, x : x + TILE] += p
                den[y : y + TILE, x : x + TILE] += weight
    result = (num / den)[m : m + h, m : m + w]
    profile.update(count=1, dtype="float32")
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(result, 1)


def region_scenes(work: Path, size: int, overlap: int = 64) -> tuple[list[Path], Path]:
    """Four size² scenes in a 2 x 2 layout, neighbours overlapping by ``overlap`` px, and an AOI
    (a GeoPackage in the scenes' CRS) covering all four."""
    import geopandas as gpd
    from shapely.geometry import box

    x0, y0, step = 500000, 3100000, (size - overlap) * 10
    scenes = [
        make_scene(
            work / f"region_{size}_{r}{c}.tif", size, seed=100 + 2 * r + c, origin=(x0 + c * step, y0 - r * step)
        )
        for r in (0, 1)
        for c in (0, 1)
    ]
    aoi = work / f"region_{size}_aoi.gpkg"
    if not aoi.exists():
        extent = step + size * 10
        gpd.GeoDataFrame(geometry=[box(x0, y0 - extent, x0 + extent, y0)], crs="EPSG:32645").to_file(aoi)
    return scenes, aoi


def ray_cluster_rows(work: Path, model: Path, scene: Path, region_size: int, common: dict, log) -> dict:
    """Ray as cluster jobs meet it: the cluster is running before the job starts (a head without
    CPUs and worker nodes, ``tests/ray_nodes.py``), and the job joins it through ``RAY_ADDRESS``.

    - region: four region_size² scenes in one region job, one worker node with all the cores;
      tiles of the four scenes' grids / the job's ``run.json`` total (efficiency against raw);
    - two nodes: ``scene`` on two 1-CPU worker nodes by two 1-thread actors; forward passes /
      grid tiles (the tiles both actors' stripes need are predicted by one and handed over)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_nodes import local_cluster

    scenes, aoi = region_scenes(work, region_size)
    log(f"ray region job, 4 × {region_size}² scenes, on a running local Ray ...")
    with local_cluster(1, num_cpus=common["threads"]) as cluster:
        m = run_pipeline(
            scenes,
            model,
            work / f"out_ray_region_{region_size}",
            "ray",
            **common,
            extra=("--aoi", str(aoi)),
            ray_address=cluster.address,
        )
    tiles = len(scenes) * TileGrid(region_size, region_size, TILE, STRIDE).n_tiles
    region = {
        "scenes": len(scenes),
        "size": region_size,
        "tiles": tiles,
        "tiles_per_s": tiles / m["timings"]["total_s"],
        "timings": m["timings"],
        "wall_s": m["wall_s"],
        "actors": m["actors"],
        "blocks": m["blocks"],
        "merge_blocks": m["merge_blocks"],
    }
    log("ray, 2 actors on a 2-node local Ray ...")
    with local_cluster(2, num_cpus=1) as cluster:
        m = run_pipeline(
            scene,
            model,
            work / "out_ray_two_nodes",
            "ray",
            **{**common, "threads": 1},
            extra=("--num-actors", "2"),
            ray_address=cluster.address,
        )
    two = {
        "scene": scene.name,
        "grid_tiles": m["tiles"]["grid"],
        "forward_passes": m["tiles"]["forward_passes"],
        "per_node": m["blocks"]["per_node"],
        "actors": m["actors"],
        "timings": m["timings"],
    }
    return {"region": region, "two_nodes": two}


def zoo_rows(work: Path, size: int, common: dict) -> dict:
    """The 13 zoo models (untrained) as one ensemble: raw tiles/s through all members (each
    member's raw rate, combined: 1 / sum(1 / rate)) and the local pipeline on a size² scene."""
    from landslide_batch.models.registry import MODEL_ZOO

    folders = []
    for name, spec in MODEL_ZOO.items():
        folder = work / "zoo" / name
        if not folder.exists():
            init_model_folder(spec.arch, spec.encoder, folder, seed=0, features=spec.features)
        folders.append(folder)
    ensemble = work / "zoo.yaml"
    ensemble.write_text("members:\n" + "".join(f"  - {{model: {f}}}\n" for f in folders))
    print(f"[{time.strftime('%H:%M:%S')}] zoo: raw forward of {len(folders)} members ...", file=sys.stderr, flush=True)
    rates = {
        f.name: raw_throughput(
            prepared_model(f, common["threads"], common["device"]), common["batch"], seconds=3, windows=1
        )
        for f in folders
    }
    print(f"[{time.strftime('%H:%M:%S')}] zoo: pipeline local {size}² ...", file=sys.stderr, flush=True)
    m = run_pipeline(
        make_scene(work / f"scene_{size}.tif", size), ensemble, work / f"out_zoo_{size}", "local", **common
    )
    tiles = TileGrid(size, size, TILE, STRIDE).n_tiles
    return {
        "size": size,
        "members": len(folders),
        "member_raw_tiles_per_s": rates,
        "raw_tiles_per_s": 1 / sum(1 / r for r in rates.values()),
        "tiles_per_s": tiles / m["timings"]["total_s"],
        "timings": m["timings"],
    }


def main() -> int:
    if sys.argv[1:2] == ["--naive"]:  # the baseline, in its own process like the pipeline
        scene, model, out, batch, threads, device = sys.argv[2:]
        naive_sliding_window(Path(scene), Path(model), Path(out), int(batch), int(threads), device)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2048² pipeline scene only")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="pipeline scene sizes (default: 2048 with --quick, else 2048 8192)",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 64 on a GPU (as the pipeline)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument(
        "--region-size",
        type=int,
        default=2048,
        help="side of each of the 4 scenes of the Ray region row (default 2048)",
    )
    ap.add_argument(
        "--zoo",
        type=int,
        metavar="SIZE",
        default=None,
        help="also the whole model zoo as one ensemble, on a SIZE² scene (meant for a GPU)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = ap.parse_args()

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = args.work or Path(tempfile.mkdtemp(prefix="lsb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    r34 = work / "unet_resnet34"
    mnv2 = work / "unet_mobilenet_v2"
    if not r34.exists():
        init_model_folder("Unet", "resnet34", r34, seed=0)
    if not mnv2.exists():
        init_model_folder("Unet", "mobilenet_v2", mnv2, seed=0)
    args.batch_size = args.batch_size or (64 if device == "cuda" else 16)
    common = dict(batch=args.batch_size, threads=args.threads, device=device, block=args.block)
    results: dict = {
        "device": device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "block": args.block,
        "model": "Unet-resnet34 (untrained)",
        "rows": {},
    }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    log("compute floor (FLOPs per tile, matrix rate) ...")
    model = prepared_model(r34, args.threads, device)
    results["floor"] = compute_floor(model)
    log("raw model forward ...")
    raw = raw_throughput(model, args.batch_size, seconds=5)
    sizes = args.sizes or ([2048] if args.quick else [2048, 8192])
    for size in sizes:
        scene = make_scene(work / f"scene_{size}.tif", size)
        tiles = TileGrid(size, size, TILE, STRIDE).n_tiles
        row = {"tiles": tiles}
        for executor in ("local", "ray"):
            log(f"pipeline {executor} {size}² ...")
            m = run_pipeline(scene, r34, work / f"out_{executor}_{size}", executor, **common)
            row[executor] = {
                "tiles_per_s": tiles / m["timings"]["total_s"],
                "tiles_per_s_wall": tiles / m["wall_s"],
                "total_s": m["timings"]["total_s"],
                "timings": m["timings"],
                "wall_s": m["wall_s"],
                "forward_passes": m["tiles"]["forward_passes"],
                "peak_rss_mb": m["peak_rss_mb"],
            }
        log(f"naive sliding window {size}² ...")
        wall, peak, _ = _run_measured(
            [
                sys.executable,
                __file__,
                "--naive",
                str(scene),
                str(r34),
                str(work / f"naive_{size}.tif"),
                str(args.batch_size),
                str(args.threads),
                device,
            ]
        )
        row["naive"] = {"tiles_per_s_wall": tiles / wall, "wall_s": wall, "peak_rss_mb": peak}
        results["rows"][size] = row
    results["ray_cluster"] = ray_cluster_rows(
        work, r34, make_scene(work / f"scene_{sizes[0]}.tif", sizes[0]), args.region_size, common, log
    )
    if args.zoo:
        results["zoo"] = zoo_rows(work, args.zoo, common)
    memory = {}
    for size in (1024, 2048, 4096):
        log(f"memory {size}² (Unet-mobilenet_v2) ...")
        scene = make_scene(work / f"scene_{size}.tif", size)
        memory[size] = run_pipeline(scene, mnv2, work / f"out_mem_{size}", "local", **common)["peak_rss_mb"]
    log("raw model forward, again (the best of both is the reference) ...")
    results["raw_tiles_per_s"] = max(raw, raw_throughput(model, args.batch_size, seconds=5))
    results["memory_peak_rss_mb"] = memory
    results["gates"] = print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


def print_table(r: dict) -> list[dict]:
    """Print the table; -> every gated row: ``{row, value, gate, pass}`` (for the JSON)."""
    raw = r["raw_tiles_per_s"]
    lines = [
        f"device {r['device']}, {r['threads']} threads, batch {r['batch_size']}, block {r['block']}, {r['model']}",
        "",
        "| measure | value | km²/h | target | result |",
        "|---|---|---|---|---|",
        f"| raw model forward (tiles/s, best of 6 × 5 s windows) | {raw:.1f} "
        f"| {raw * KM2_PER_TILE_PER_S_TO_PER_H:.0f} | | |",
    ]

    f = r["floor"]
    lines += [
        f"| model work per 128² tile (GFLOP) | {f['gflop_per_tile']:.2f} | | | |",
        f"| measured matrix rate ({f['dtype']}, TFLOP/s) | {f['matrix_tflops']:.3f} | | | |",
        f"| compute floor (tiles/s: rate / work; raw / floor) | {f['floor_tiles_per_s']:.1f} "
        f"({raw / f['floor_tiles_per_s']:.2f}) | {f['floor_tiles_per_s'] * KM2_PER_TILE_PER_S_TO_PER_H:.0f} | | |",
    ]

    gates: list[dict] = []

    def gated(measure: str, value: str, target: str, ok: bool) -> str:
        """A table row with its gate and PASS/FAIL, recorded for the JSON."""
        gates.append({"row": measure, "value": value, "gate": target, "pass": bool(ok)})
        return f"| {measure} | {value} | | {target} | {'PASS' if ok else 'FAIL'} |"

    for size, row in r["rows"].items():
        for ex, target in (("local", 0.85), ("ray", 0.75)):
            e = row[ex]
            eff = e["tiles_per_s"] / raw
            lines.append(
                f"| pipeline {ex} {size}² (tiles/s, run total) | {e['tiles_per_s']:.1f} "
                f"| {e['tiles_per_s'] * KM2_PER_TILE_PER_S_TO_PER_H:.0f} | | |"
            )
            lines.append(gated(f"efficiency {ex} {size}² (pipeline / raw)", f"{eff:.2f}", f"≥ {target}", eff >= target))
            stage = row["tiles"] / e["timings"]["infer_s"]
            lines.append(
                f"| {ex} {size}² inference stage alone (tiles/s; / raw) | {stage:.1f} ({stage / raw:.2f}) | | | |"
            )
        red = row["local"]["forward_passes"] / row["tiles"]
        lines.append(gated(f"redundancy {size}² (forward passes / grid tiles)", f"{red:.3f}", "≤ 1.07", red <= 1.07))
        naive = row["naive"]["tiles_per_s_wall"]
        speedup = row["local"]["tiles_per_s_wall"] / naive
        lines.append(
            f"| naive sliding window {size}² (tiles/s, process wall) | {naive:.1f} "
            f"| {naive * KM2_PER_TILE_PER_S_TO_PER_H:.0f} | | |"
        )
        lines.append(
            f"| pipeline local {size}² (tiles/s, process wall) | {row['local']['tiles_per_s_wall']:.1f} | | | |"
        )
        lines.append(
            gated(
                f"pipeline local / naive {size}² (process wall, peak RSS {row['local']['peak_rss_mb']:.0f} "
                f"vs {row['naive']['peak_rss_mb']:.0f} MB)",
                f"{speedup:.2f}×",
                "≥ 1.2×",
                speedup >= 1.2,
            )
        )
    if "zoo" in r:
        z = r["zoo"]
        lines += [
            f"| zoo ensemble ({z['members']} members) raw (tiles/s through all) | {z['raw_tiles_per_s']:.1f} | | | |",
            f"| zoo ensemble pipeline local {z['size']}² (tiles/s, run total; / raw) | {z['tiles_per_s']:.1f} "
            f"({z['tiles_per_s'] / z['raw_tiles_per_s']:.2f}) | | | |",
        ]
    mem = r["memory_peak_rss_mb"]
    sizes = sorted(mem)
    for s in sizes:
        lines.append(f"| peak RSS {s}² (MB) | {mem[s]:.0f} | | | |")
    ratio = mem[sizes[-1]] / mem[sizes[0]]
    lines.append(gated(f"memory ratio {sizes[-1]}² / {sizes[0]}²", f"{ratio:.2f}", "≤ 1.3", ratio <= 1.3))
    rc = r["ray_cluster"]
    region, two = rc["region"], rc["two_nodes"]
    eff = region["tiles_per_s"] / raw
    loads = [a["models_loaded"] for a in region["actors"]]
    lines.append(
        f"| ray region job {region['scenes']} × {region['size']}² on a running local Ray (tiles/s, run total; "
        f"models loaded per actor {loads}) | {region['tiles_per_s']:.1f} "
        f"| {region['tiles_per_s'] * KM2_PER_TILE_PER_S_TO_PER_H:.0f} | | |"
    )
    lines.append(
        gated(
            f"efficiency ray region job {region['scenes']} × {region['size']}² (pipeline / raw)",
            f"{eff:.2f}",
            "≥ 0.80",
            eff >= 0.80,
        )
    )
    red = two["forward_passes"] / two["grid_tiles"]
    lines.append(
        gated(
            f"2 actors on a 2-node local Ray, {two['scene']} (forward passes / grid tiles; blocks per node "
            f"{sorted(two['per_node'].values())})",
            f"{red:.3f}",
            "≤ 1.02",
            red <= 1.02,
        )
    )
    lines += [
        "",
        "Where the time goes (seconds, run.json timings; prepare = hashing, ingest and model loading "
        "or Ray start-up, overlapped):",
        "",
        "| run | prepare | inference | finish | total | process wall |",
        "|---|---|---|---|---|---|",
    ]
    for size, row in r["rows"].items():
        for ex in ("local", "ray"):
            t = row[ex]["timings"]
            lines.append(
                f"| {ex} {size}² | {t['prepare_s']:.1f} | {t['infer_s']:.1f} | {t['finish_s']:.1f} "
                f"| {t['total_s']:.1f} | {row[ex]['wall_s']:.1f} |"
            )
    t = region["timings"]
    lines += [
        "",
        f"Ray region job (seconds, run.json timings): map {t['map_s']:.1f} (4 scenes: ingest, inference, "
        f"each scene's products), merge {t['merge_s']:.1f}, region products {t['finish_s']:.1f}, total "
        f"{t['total_s']:.1f}, process wall {region['wall_s']:.1f}",
    ]
    print("\n".join(lines))
    return gates


if __name__ == "__main__":
    sys.exit(main())
