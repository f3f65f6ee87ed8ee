"""The scaling rows of ``benchmarks/run.py`` (issue 29) run and report at toy sizes: region jobs
of 1 and 4 scenes, products + vectorize at two map sides, the two hard maps. Their gates mean
nothing at these sizes; the rows must execute, measure and print a PASS/FAIL each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scaling_rows_run_and_report_at_toy_sizes(tmp_path):
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--smoke", "--threads", "2"]
    proc = subprocess.run(
        [*cmd, "--work", str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] and set(r["region_scaling"]) == {"1", "4"}
    for row in r["region_scaling"].values():
        assert row["s_per_km2"] > 0 and row["peak_rss_mb"] > 100
        assert set(row["stages"]) == {"ingest_s", "map_s", "merge_s", "products_s"}
    small, large = r["region_scaling"]["1"], r["region_scaling"]["4"]
    assert large["km2"] > 2.5 * small["km2"]  # four overlapping scenes cover more ground than one
    f = r["finishing"]
    assert set(f["scale"]) == {"256", "512"} and f["scale"]["512"]["objects"] > f["scale"]["256"]["objects"] > 0
    assert set(f["scale"]["512"]["seconds"]) == {"rasters", "quicklook", "polygons:gpkg", "polygons:parquet"}
    assert f["objects"]["objects"] > 100 and f["mostly_above"]["above"] > 0.75  # the hard maps are hard
    assert set(f["objects"]["seconds"]) == {"polygons:gpkg", "polygons:parquet", "polygons:fgb"}
    assert len(r["gates"]) == 7 and all(g["pass"] in (True, False) for g in r["gates"])
    assert proc.stdout.count("PASS") + proc.stdout.count("FAIL") == 7
