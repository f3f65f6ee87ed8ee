"""Scheduled post-disaster runs: each pass maps the new scenes over the areas of interest.

A pass reads the STAC catalog and keeps the items taken at or after the event date and the
newest scene processed so far, that intersect an AOI, oldest first; each becomes one region
job. The job id comes from the scene id and a hash of the job settings and is also the Ray
submission id: the state file skips scenes already handled, and a cluster that still knows an
id refuses a duplicate even if the state file was lost. Scenes added to the catalog later
with an acquisition time before the newest processed one are not picked up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyproj
from pydantic import Field, model_validator
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ..config import StrictModel, job_from_dict, load_yaml, rebase_path, validate_model
from ..errors import ConfigError, LandslideBatchError
from .stac import SceneItem, find_scenes, to_wgs84, utc
from .state import SchedulerState
from .storage import check_uri, fetch, is_uri, local_path
from .submit import ClusterError, JobExistsError, JobSubmission, StacOptions, Submitter

log = logging.getLogger(__name__)


class AOI(StrictModel):
    """An area of interest: a bbox, an inline GeoJSON geometry or a GeoJSON file, in ``crs``."""

    name: str
    bbox: tuple[float, float, float, float] | None = None  # minx, miny, maxx, maxy
    geometry: dict[str, Any] | None = None
    geojson: Path | None = None  # a geometry, Feature or FeatureCollection (the union of its features)
    crs: str = "EPSG:4326"

    @model_validator(mode="after")
    def _check(self) -> "AOI":
        given = [k for k in ("bbox", "geometry", "geojson") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bbox, geometry or geojson (found: {', '.join(given) or 'none'})")
        if self.bbox and not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3]):
            raise ValueError(f"bbox must be [minx, miny, maxx, maxy], found {list(self.bbox)}")
        try:
            pyproj.CRS.from_user_input(self.crs)
        except pyproj.exceptions.CRSError as exc:
            raise ValueError(f"crs {self.crs!r}: {exc}") from None
        return self

    def wgs84(self) -> BaseGeometry:
        try:
            if self.bbox:
                geom = box(*self.bbox)
            elif self.geometry:
                geom = shape(self.geometry)
            else:
                data = json.loads(Path(self.geojson).read_text())
                features = data["features"] if data.get("type") == "FeatureCollection" else [data]
                geom = unary_union([shape(f["geometry"] if f.get("type") == "Feature" else f) for f in features])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, GEOSException) as exc:
            raise ConfigError(f"AOI {self.name!r}: cannot read its geometry: {exc}") from None
        return to_wgs84(geom, self.crs)


class OutputSettings(StrictModel):
    root: Path  # one folder per job, ROOT/<job id>; on a cluster, a volume every node mounts
    publish: str | None = None  # path or fsspec URI: outputs and item.json copied to PUBLISH/<job id>
    staging: Path | None = None  # scene assets downloaded from URIs; default ROOT/_staging


class SubmitSettings(StrictModel):
    address: str | None = None  # Ray dashboard, http://HEAD:8265; None: RAY_ADDRESS or a local cluster
    env: dict[str, str] = Field(default_factory=dict)  # environment variables of the job
    ship_code: bool = False  # overlay the local source as a py_module (see jobs/submit.py)


class ScheduleConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    catalog: str  # static STAC catalog: catalog.json path, http(s) URL or fsspec URI
    collection: str | None = None  # only items of this collection
    asset: str = "image"  # asset key of the 14-band scene
    event_date: datetime  # map scenes acquired at or after this (naive: UTC)
    until: datetime | None = None  # and up to this; the loop stops after it
    cadence: timedelta = Field(timedelta(hours=6), gt=timedelta(0))  # between passes without --once
    max_cloud_cover: float | None = Field(None, ge=0, le=100)  # eo:cloud_cover, where items give it
    aois: list[AOI] = Field(min_length=1)
    job: dict[str, Any]  # job settings (JobConfig) except scene and out, which each scene sets
    output: OutputSettings
    submit: SubmitSettings | None = None  # None: run jobs in this process
    state: Path | None = None  # default ROOT/_scheduler/<name>.json

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        names = [a.name for a in self.aois]
        if len(set(names)) != len(names):
            raise ValueError(f"AOI names must be unique, found {names}")
        if self.until is not None and utc(self.until) <= utc(self.event_date):
            raise ValueError("until must be after event_date")
        if {"scene", "out"} & set(self.job):
            raise ValueError("job: leave out scene and out, the scheduler sets them for each scene")
        return self


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:64] or "scene"


def job_id(scene_id: str, config_hash: str) -> str:
    """Stable id of "this scene mapped with these settings" (a valid Ray submission id)."""
    digest = hashlib.sha256(f"{scene_id}\0{config_hash}".encode()).hexdigest()[:12]
    return f"ls-{_slug(scene_id)}-{digest}"


@dataclass(frozen=True)
class Schedule:
    """A loaded schedule: paths resolved, the job template validated, AOIs in WGS84."""

    config: ScheduleConfig
    job: dict[str, Any]  # JobConfig as JSON, without scene and out
    aois: dict[str, BaseGeometry]
    config_hash: str  # of the job template: new settings, new job ids

    @property
    def state_path(self) -> Path:
        return self.config.state or self.config.output.root / "_scheduler" / f"{self.config.name}.json"

    def submission(self, scene: SceneItem) -> JobSubmission:
        """The job for ``scene``; a scene behind a URI is downloaded to the staging folder first."""
        out = self.config.output
        jid = job_id(scene.id, self.config_hash)
        src = (fetch(scene.href, (out.staging or out.root / "_staging") / _slug(scene.id))
               if is_uri(scene.href) else local_path(scene.href))
        publish_to = f"{out.publish.rstrip('/')}/{jid}" if out.publish else None
        return JobSubmission(
            job={**self.job, "scene": str(src), "out": str(out.root / jid)}, submission_id=jid,
            stac=StacOptions(item_id=jid, when=scene.datetime, derived_from=scene.item_href, publish_to=publish_to),
            metadata={"schedule": self.config.name, "item": scene.id, "aois": ",".join(scene.aois)})


def _location(value: str, base: Path, where: str, *, http_ok: bool = False) -> str:
    """A local path (relative to ``base``) made absolute, or a URI whose fsspec driver works here."""
    if not is_uri(value):
        return str(rebase_path(base, local_path(value)))
    if not (http_ok and value.startswith(("http://", "https://"))):
        check_uri(value, where)
    return value


def load_schedule(path: str | Path) -> Schedule:
    """Validate a schedule YAML, its job template and AOIs; paths are relative to the YAML."""
    path = Path(path).absolute()
    cfg = validate_model(ScheduleConfig, load_yaml(path), str(path))
    base = path.parent
    cfg.catalog = _location(cfg.catalog, base, f"{path}: catalog", http_ok=True)  # pystac reads http(s)
    if cfg.output.publish is not None:
        cfg.output.publish = _location(cfg.output.publish, base, f"{path}: output.publish")
    cfg.output.root = rebase_path(base, cfg.output.root)
    cfg.output.staging = rebase_path(base, cfg.output.staging)
    cfg.state = rebase_path(base, cfg.state)
    for aoi in cfg.aois:
        aoi.geojson = rebase_path(base, aoi.geojson)
    job = job_from_dict({**cfg.job, "scene": "scene", "out": "out"}, base, f"{path}: job")
    template = job.model_dump(mode="json", exclude={"scene", "out"})
    config_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return Schedule(cfg, template, {a.name: a.wgs84() for a in cfg.aois}, config_hash)


def run_pass(schedule: Schedule, submitter: Submitter) -> list[str]:
    """One pass: start a job for every new scene; -> the ids of the jobs started.

    A job that fails here (a local run with a bad scene) is recorded as failed and the pass goes
    on; an unreachable cluster stops the pass, and the next one starts from that scene again.
    """
    cfg = schedule.config
    with SchedulerState.open(schedule.state_path) as state:
        start = max(utc(cfg.event_date), state.watermark or utc(cfg.event_date))
        scenes = find_scenes(cfg.catalog, asset=cfg.asset, aois=schedule.aois, start=start,
                             end=utc(cfg.until) if cfg.until else None, collection=cfg.collection,
                             max_cloud_cover=cfg.max_cloud_cover)
        new = [(jid, s) for jid, s in ((job_id(s.id, schedule.config_hash), s) for s in scenes)
               if not state.has(jid)]
        started = []
        for jid, scene in new:
            job = schedule.submission(scene)
            try:
                submitter.submit(job)
                outcome = "started"
                started.append(jid)
            except JobExistsError:
                outcome = "already known to the cluster"
            except ClusterError:
                raise
            except LandslideBatchError as exc:
                outcome = f"failed: {exc}"
                log.error("job %s for scene %s failed: %s", jid, scene.id, exc)
            state.record(jid, scene.datetime, {
                "item": scene.id, "datetime": scene.datetime.isoformat(), "aois": list(scene.aois),
                "out": job.job["out"], "outcome": outcome,
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            log.info("scene %s (%s, AOI %s): job %s %s", scene.id, scene.datetime.isoformat(),
                     ", ".join(scene.aois), jid, outcome)
        log.info("pass over %s: %d new scene(s) since %s, %d job(s) started", cfg.catalog, len(new),
                 start.isoformat(), len(started))
        return started


def run_schedule(schedule: Schedule, submitter: Submitter) -> None:
    """Pass after pass, ``cadence`` apart, until ``until`` (forever without it)."""
    until = schedule.config.until
    while True:
        run_pass(schedule, submitter)
        if until is not None and datetime.now(timezone.utc) > utc(until):
            return
        time.sleep(schedule.config.cadence.total_seconds())
