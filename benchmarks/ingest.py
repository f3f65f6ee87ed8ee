"""Ingest speed (issue 29): ``ingest_job`` of a size² 14-band GeoTIFF (``run.make_scene``'s
generator) into a working scene store, this tree's code against a baseline commit's, side by side.

Each side runs in its own child process (``python benchmarks/ingest.py child TREE SRC DEST``),
the sides alternating, ``--repeats`` times each; the baseline's package is taken from
``git archive REF``. The scene is read through once before each run, as a job's hashing leaves it
in the page cache. Timed: ``ingest_job`` alone (the imports it needs are made before), its wall
and CPU seconds, the child's peak RSS and the store's bytes on disk.

    .venv/bin/python benchmarks/ingest.py [--size 4096] [--repeats 3] [--baseline REF|none] [--work DIR]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The last commit before issue 29's ingest changes.
BASELINE = "9a511cb"


def child(tree: str, src: str, dest: str) -> None:
    """Ingest ``src`` into ``dest`` with the package in ``tree``; print the figures as JSON."""
    sys.path.insert(0, tree)
    import landslide_batch.ingest.geotiff  # noqa: F401  (imports before the clock starts)
    from landslide_batch.ingest import ingest_job

    assert Path(landslide_batch.ingest.__file__).is_relative_to(tree), landslide_batch.ingest.__file__
    wall, cpu = time.perf_counter(), time.process_time()
    ingest_job(Path(src), Path(dest), chunk=512)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stored = sum(p.stat().st_size for p in Path(dest).rglob("*") if p.is_file())
    # VmHWM, not ru_maxrss: exec keeps the forking parent's peak in ru_maxrss (a parent that has
    # just generated a large scene would stand in for the child)
    peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"ingest_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "stored_mb": stored / 1e6}))


def read_through(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 26):
            pass


def run_side(tree: Path, scene: Path, dest: Path) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    read_through(scene)
    cmd = [sys.executable, __file__, "child", str(tree), str(scene), str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if done.returncode:
        raise SystemExit(f"ingest in {tree} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(dest, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_tree(ref: str, into: Path) -> Path:
    """The baseline commit's ``landslide_batch`` package, unpacked under ``into``."""
    git = ["git", "-C", str(ROOT), "archive", ref, "landslide_batch"]
    archive = subprocess.run(git, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(size: int, repeats: int, baseline: str, work: Path) -> dict[str, list[dict]]:
    """-> side name -> one figures dict per run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from run import make_scene

    scene = make_scene(work / f"scene{size}.tif", size)
    with tempfile.TemporaryDirectory(dir=work) as old:
        sides = {"this tree": ROOT}
        if baseline != "none":
            sides = {f"baseline {baseline}": baseline_tree(baseline, Path(old)), **sides}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(repeats):
            for name, tree in sides.items():
                runs[name].append(run_side(tree, scene, work / "scene.zarr"))
    return runs


def print_table(size: int, runs: dict[str, list[dict]]) -> None:
    mp = size * size / 1e6
    print(f"\ningest_job, {size}² 14-band float32 GeoTIFF ({mp:.1f} Mpx), chunks 512², runs interleaved\n")
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
    if len(medians) == 2:
        old, new = medians.values()
        print(f"\nthis tree / baseline, median ingest seconds: {new / old:.2f}×")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved (default 3)")
    parser.add_argument("--baseline", default=BASELINE, help=f"commit to compare with, or none (default {BASELINE})")
    parser.add_argument("--work", type=Path, help="folder for the scene and stores (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print_table(args.size, measure(args.size, args.repeats, args.baseline, work))


if __name__ == "__main__":
    main()
