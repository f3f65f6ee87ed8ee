"""Fixed cost of a local job: process wall − pure model time, and where each of its seconds goes.

    python benchmarks/fixed_cost.py --size 1024 --repeat 3   # local jobs at 1024², raw rate beside each

Pure model time is the job's own seconds inside the model's forward passes (``run.json``
``timings.forward_s``, recorded on CPU), so a machine whose speed drifts between a raw measurement
and the job does not move it; without that record (a GPU run, an older run.json) it is the grid's
tiles at the raw model forward rate measured beside the job. ``fixed_cost`` is what ``run.py`` calls for its gated row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

GATE_S = 3.0  # the gated row: fixed cost of a local 2048² job

#: run.json ``timings`` keys -> what the seconds between them were spent on.
STEPS = (
    ("start-up: interpreter, imports, arguments", "process_age_at_job_s"),
    ("preflight: output folder, model files read and hashed, lock", "preflight_s"),
    ("before the first tile: hashing, ingest, models loading (beside each other)", "prepare_s"),
)
BESIDE = (  # shown under "before the first tile", not summed: they run beside each other
    ("  of which beside: hashing the scene", "hash_s"),
    ("  of which beside: ingest (scene -> Zarr)", "ingest_s"),
    ("  of which beside: models (imports, weights, BatchNorm folding)", "models_s"),
)


def fixed_cost(manifest: dict, wall_s: float, raw_tiles_per_s: float) -> dict:
    """A finished local job's fixed cost: ``wall_s`` (its process wall) less the grid's tiles at
    ``raw_tiles_per_s``; ``breakdown``: (what, seconds) rows that sum to it, from ``run.json``'s
    ``timings``; ``beside``: (what, seconds) of work that ran beside the rows (not summed).
    A run without the start-up and preflight timings gets one row for all outside the job."""
    t = manifest["timings"]
    missing = [k for k in ("prepare_s", "infer_s", "finish_s", "total_s") if k not in t]
    if missing:
        raise ValueError(f"run.json timings lack {', '.join(missing)}: found {sorted(t)}")
    # The job's own seconds in the model's forward passes where run.json has them (CPU): immune to
    # the machine's speed drifting between the raw windows and the job.
    model_s = t.get("forward_s") or manifest["tiles"]["grid"] / raw_tiles_per_s
    rows = [(what, t[key]) for what, key in STEPS if key in t]
    rows += [
        ("inference beyond the model: reading blocks, features, blending, writing", t["infer_s"] - model_s),
        ("finishing: probability and uncertainty COGs beside mask, polygons, quicklook", t["finish_s"]),
        ("manifest", t["total_s"] - t["prepare_s"] - t["infer_s"] - t["finish_s"]),
    ]
    inside = t["total_s"] + t.get("process_age_at_job_s", 0.0) + t.get("preflight_s", 0.0)
    outside = (
        "after the job: publishing, clean-up, exit"
        if {"process_age_at_job_s", "preflight_s"} <= t.keys()
        else "outside the job's timings: start-up, preflight, publishing, exit"
    )
    rows.append((outside, wall_s - inside))
    return {
        "wall_s": wall_s,
        "model_s": model_s,
        "fixed_s": wall_s - model_s,
        "breakdown": rows,
        "beside": [(what, t[key]) for what, key in BESIDE if key in t],
    }


def print_breakdown(cost: dict, title: str) -> None:
    """A markdown table of ``fixed_cost``'s result."""
    print(f"\n| {title} | seconds |\n|---|---|")
    print(f"| process wall | {cost['wall_s']:.2f} |")
    print(f"| pure model time (the job's forward passes, or grid tiles / raw) | {cost['model_s']:.2f} |")
    print(f"| **fixed cost** (wall − model) | **{cost['fixed_s']:.2f}** |")
    for what, s in cost["breakdown"]:
        print(f"| {what} | {s:.2f} |")
        if what.startswith("before the first tile"):
            for beside, b in cost["beside"]:
                print(f"| {beside} | ({b:.2f}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="scene side in pixels (default 2048, the gated row)")
    ap.add_argument("--repeat", type=int, default=1, help="jobs to run, each between two raw measurements")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--raw-seconds", type=float, default=3.0, help="length of each raw timing window")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import make_scene, prepared_model, raw_throughput, run_pipeline  # run.py calls fixed_cost

    from landslide_batch.models.card import init_model_folder

    work = args.work or Path(tempfile.mkdtemp(prefix="lsb-fixed-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "unet_resnet34"
    if not model_dir.exists():
        init_model_folder("Unet", "resnet34", model_dir, seed=0)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    model = prepared_model(model_dir, args.threads, "cpu")
    common = dict(batch=args.batch_size, threads=args.threads, device="cpu", block=args.block)
    results = []
    for i in range(args.repeat):
        before = raw_throughput(model, args.batch_size, seconds=args.raw_seconds, windows=2)
        m = run_pipeline(scene, model_dir, work / "out", "local", **common)
        raw = max(before, raw_throughput(model, args.batch_size, seconds=args.raw_seconds, windows=2))
        cost = fixed_cost(m, m["wall_s"], raw)
        results.append({**cost, "raw_tiles_per_s": raw, "timings": m["timings"]})
        print_breakdown(cost, f"local {args.size}² job {i + 1}/{args.repeat} (raw {raw:.1f} tiles/s)")
    fixed = sorted(r["fixed_s"] for r in results)
    print(f"\nfixed cost of a local {args.size}² job: {fixed[0]:.2f}–{fixed[-1]:.2f} s over {len(fixed)} run(s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
