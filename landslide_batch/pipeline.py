"""Run a job by its config: a scene job (``scene_job``) or a region job (``region.job``).

The names scene jobs' callers use (``OUTPUTS``, ``job_hash``, ...) are re-exported here.
"""

from __future__ import annotations

import time

from .checks.preflight import resolve_job
from .config import JobConfig
from .outputs.derive import MASK_NODATA
from .outputs.products import OUTPUTS, outputs_for
from .region.job import run_region
from .scene_job import job_hash, process_age_s, run_scene_job

__all__ = ["MASK_NODATA", "OUTPUTS", "job_hash", "outputs_for", "run_job"]


def run_job(cfg: JobConfig, *, overwrite: bool = False) -> dict:
    """Run (or resume) a scene job or a region job; returns the run manifest (also written to
    ``OUT/run.json``). A region job (``scenes:``) runs in ``region.job``, which maps each scene
    with ``mapping.map_scene``, as :func:`run_scene_job` maps its one."""
    if cfg.scenes is not None:
        return run_region(cfg, overwrite=overwrite)
    entered = (time.perf_counter(), process_age_s())
    return run_scene_job(resolve_job(cfg), overwrite=overwrite, entered=entered)
