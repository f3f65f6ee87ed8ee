"""Scheduled post-disaster runs: each AOI of a schedule is an event, mapped as one region job.

A pass reads the STAC catalog and, for each AOI, collects the items that intersect it within the
date window (``event_date`` .. ``until``, cloud cover limit if set). When any of them is not yet
in the event's map, it runs (or submits) the event's region job over all of them into the
event's folder, ``ROOT/<event id>``: the region job's incremental merge maps only the new
scenes (the others resume with 0 blocks computed) and replaces the products with ``run.json``
last. The state (``state.py``) records the items each event's published map holds, so a pass
with no new item does nothing, and each job, so an event whose job still runs gets no other one;
the submission id hashes the event and its items, so a cluster that still knows it refuses a
duplicate even if the state was lost. Scenes added to the catalog late, with an acquisition time
before others, are picked up too. ``output.root`` may be object storage: the state, the staged
scenes, the events' AOI files and maps are then all there, nothing on this machine.

With ``pre_scenes`` or ``pre_event: auto``, each event's job is change-aware (README, "Event
maps"): ``pre_scenes`` are given to every event; ``auto`` picks, on the event's first job, the
clearest recent item of the catalog (or API) over the AOI in the ``pre_event_days`` before the
event day (``region.pre_event``'s rule) and keeps the pick in ``<event>.pre_event.json``, so every
later job has the same pre-event scenes and finds their map (``OUT/pre_event``) made. After each
pass ``summary.json`` (beside the events' AOI files) gives, per event, the objects, the AOI share
observed and the time to map, and the median time to map over all events' scenes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import Any, Literal

import pyproj
from pydantic import Field, model_validator
from shapely.errors import GEOSException
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ..config import StacSearch, StrictModel, job_from_dict, load_yaml, rebase_path, validate_model
from ..errors import ConfigError, InputError, LandslideBatchError
from ..outputs.manifest import read_manifest, write_json_atomic
from ..storage import Location, is_uri, location, path_or_uri, storage_errors
from .stac import ITEM_FILE, SceneItem, catalog_items, select_scenes, to_wgs84, utc, write_collection
from .state import RUNNING, SchedulerState
from .storage import check_location, fetch
from .submit import ACTIVE, ClusterError, JobExistsError, JobSubmission, StacOptions, Submitter
from .upload import cluster_locations

log = logging.getLogger(__name__)


class AOI(StrictModel):
    """An area of interest: a bbox, an inline GeoJSON geometry or a GeoJSON file, in ``crs``."""

    name: str
    bbox: tuple[float, float, float, float] | None = None  # minx, miny, maxx, maxy
    geometry: dict[str, Any] | None = None
    geojson: Path | None = None  # a geometry, Feature or FeatureCollection (the union of its features)
    crs: str = "EPSG:4326"

    @model_validator(mode="after")
    def _check(self) -> AOI:
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
                assert self.geojson is not None  # _check: exactly one of bbox, geometry, geojson
                data = json.loads(Path(self.geojson).read_text())
                features = data["features"] if data.get("type") == "FeatureCollection" else [data]
                geom = unary_union([shape(f["geometry"] if f.get("type") == "Feature" else f) for f in features])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, GEOSException) as exc:
            raise ConfigError(f"AOI {self.name!r}: cannot read its geometry: {exc}") from None
        return to_wgs84(geom, self.crs)


class OutputSettings(StrictModel):
    #: One folder per event, ROOT/<event id>, beside the scheduler's state (ROOT/_scheduler): a path
    #: (on a cluster, a volume every node mounts) or object storage (s3://, gs://, az://).
    root: str
    publish: str | None = None  # path or URI: outputs and item.json copied to PUBLISH/<event id>
    staging: str | None = None  # scene assets copied from URIs (path or URI); default ROOT/_staging


class SubmitSettings(StrictModel):
    address: str | None = None  # Ray dashboard, http://HEAD:8265; None: RAY_ADDRESS or a local cluster
    env: dict[str, str] = Field(default_factory=dict)  # environment variables of the job
    ship_code: bool = False  # overlay the local source as a py_module (see jobs/submit.py)
    #: Every node mounts ``output.root`` (and the models, staging) at the same path, as `submit
    #: --shared-fs`; without it a submission naming paths of this machine is refused.
    shared_fs: bool = False
    #: Upload the jobs' local inputs (models, AOI files, local scenes) to this URI, content-addressed,
    #: as `submit --upload-to` (``output.root`` must then be object storage the cluster writes to).
    upload_to: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SubmitSettings:
        if self.shared_fs and self.upload_to:
            raise ValueError("give shared_fs (paths as they are) or upload_to (paths uploaded), not both")
        return self


class ScheduleConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    catalog: str | None = None  # static STAC catalog: catalog.json path, http(s) URL or object-store URI
    #: or a STAC API searched each pass (url, collections, max_items) over the AOIs' bounds; the date
    #: window and cloud limit are the schedule's (``event_date``, ``until``, ``max_cloud_cover``)
    stac_search: StacSearch | None = None
    collection: str | None = None  # only items of this collection
    #: Asset key of the 14-band scene; null: the items have one asset per band (Sentinel-2 L2A),
    #: each item is ingested as a scene (bands resampled to 10 m, SCL clouds masked).
    asset: str | None = "image"
    event_date: datetime  # map scenes acquired at or after this (naive: UTC)
    until: datetime | None = None  # and up to this; the loop stops after it
    cadence: timedelta = Field(timedelta(hours=6), gt=timedelta(0))  # between passes without --once
    max_cloud_cover: float | None = Field(None, ge=0, le=100)  # eo:cloud_cover, where items give it
    aois: list[AOI] = Field(min_length=1)
    job: dict[str, Any]  # region job settings (JobConfig) except scenes, aoi and out, which each event sets
    output: OutputSettings
    submit: SubmitSettings | None = None  # None: run jobs in this process
    state: str | None = None  # path or URI; default ROOT/_scheduler/<name>.json
    #: The events' pre-event reference (module docstring): scenes in the forms of a region job's
    #: ``scenes`` (relative to this file), or ``auto`` over the ``pre_event_days`` before event_date.
    pre_scenes: list[str] | None = None
    pre_event: Literal["auto"] | None = None
    pre_event_days: int = Field(120, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        names = [a.name for a in self.aois]
        if len(set(names)) != len(names):
            raise ValueError(f"AOI names must be unique, found {names}")
        if (self.catalog is None) == (self.stac_search is None):
            raise ValueError("give exactly one of 'catalog' (a static STAC catalog) and 'stac_search' (a STAC API)")
        if self.stac_search is not None and (
            self.stac_search.datetime is not None or self.stac_search.max_cloud_cover is not None
        ):
            raise ValueError(
                "stac_search: leave out datetime and max_cloud_cover: the schedule's event_date, until "
                "and max_cloud_cover set them"
            )
        if self.until is not None and utc(self.until) <= utc(self.event_date):
            raise ValueError("until must be after event_date")
        if found := sorted({"scene", "scenes", "aoi", "out"} & set(self.job)):
            raise ValueError(
                f"job: leave out scene, scenes, aoi and out (found {', '.join(found)}): the "
                "scheduler sets them for each event"
            )
        if found := sorted(EVENT_KEYS & set(self.job)):
            raise ValueError(
                f"job: leave out {', '.join(found)}: give pre_scenes or pre_event at the top of the "
                "schedule, which sets them (and event_date) for each event"
            )
        if self.pre_scenes is not None and self.pre_event is not None:
            raise ValueError("give pre_scenes or pre_event: auto, not both")
        return self

    @property
    def change_aware(self) -> bool:
        return self.pre_scenes is not None or self.pre_event is not None


#: Job keys the schedule sets for each event when it has a pre-event reference.
EVENT_KEYS = {"pre_scenes", "pre_event", "pre_event_days", "event_date"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:64] or "scene"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def event_id(aoi_name: str, aoi: BaseGeometry, event_date: datetime, config_hash: str) -> str:
    """Stable id of "this AOI after this event date, mapped with these settings": the event's
    output folder (a later ``until`` extends the same event)."""
    return f"ev-{_slug(aoi_name)}-{_digest(aoi_name, aoi.wkt, utc(event_date).isoformat(), config_hash)}"


def job_id(event: str, item_ids: list[str], attempt: int = 0) -> str:
    """Id of one region job of ``event`` over these items (a valid Ray submission id); a retry
    after ``attempt`` jobs over the same items reached the backend gets a new one."""
    return f"{event}-{_digest(*sorted(item_ids))[:8]}" + (f"-{attempt + 1}" if attempt else "")


@dataclass(frozen=True)
class Schedule:
    """A loaded schedule: paths resolved, the job template validated, AOIs in WGS84."""

    config: ScheduleConfig
    job: dict[str, Any]  # JobConfig as JSON, without scenes, aoi and out
    aois: dict[str, BaseGeometry]
    config_hash: str  # of the job template: new settings, new events (output folders)

    @property
    def root(self) -> Location:
        return location(self.config.output.root)

    @property
    def state_path(self) -> Location:
        cfg = self.config
        return location(cfg.state) if cfg.state else self.root / "_scheduler" / f"{cfg.name}.json"

    @property
    def events_dir(self) -> Location:
        """The events' AOI files, read by their region jobs (so where the cluster reads: object
        storage, or the shared volume)."""
        return self.root / "_scheduler" / self.config.name

    @property
    def staging(self) -> Location:
        return location(self.config.output.staging) if self.config.output.staging else self.root / "_staging"

    def event(self, aoi_name: str) -> str:
        return event_id(aoi_name, self.aois[aoi_name], self.config.event_date, self.config_hash)

    def scene_path(self, scene: SceneItem) -> str:
        """The scene's 14-band asset; behind a URI, downloaded to the staging folder first. An item
        with one asset per band is written as an item file (hrefs absolute) for the region job."""
        if scene.item is not None:
            where = self.events_dir / "items" / f"{_slug(scene.id)}.json"
            where.parent.makedirs()
            with storage_errors(where, "scheduler item"):
                where.write_text(json.dumps(scene.item))
            return where.uri
        if is_uri(scene.href):
            return fetch(scene.href, self.staging / _slug(scene.id)).uri
        return str(path_or_uri(scene.href))

    def submission(self, aoi_name: str, scenes: list[SceneItem], attempt: int = 0) -> JobSubmission:
        """The region job of event ``aoi_name`` over ``scenes`` (its AOI written as GeoJSON);
        ``attempt``: jobs over these items that reached the backend before (``job_id``)."""
        out = self.config.output
        event = self.event(aoi_name)
        aoi_file = self.events_dir / f"{event}.geojson"  # rewritten whole: a running job may read it
        self.events_dir.makedirs()
        write_json_atomic(
            aoi_file, {"type": "Feature", "properties": {"name": aoi_name}, "geometry": mapping(self.aois[aoi_name])}
        )
        ids = [s.id for s in scenes]
        publish_to = f"{out.publish.rstrip('/')}/{event}" if out.publish else None
        return JobSubmission(
            job={
                **self.job,
                "scenes": [self.scene_path(s) for s in scenes],
                "aoi": aoi_file.uri,
                "out": (self.root / event).uri,
                **self.event_keys(aoi_name),
            },
            submission_id=job_id(event, ids, attempt),
            stac=StacOptions(
                item_id=event,
                when=max(s.datetime for s in scenes),
                derived_from=tuple(s.item_href for s in scenes),
                publish_to=publish_to,
            ),
            metadata={"schedule": self.config.name, "event": aoi_name, "items": ",".join(ids)},
        )

    def event_keys(self, aoi_name: str) -> dict[str, Any]:
        """The event's pre-event scenes and event day for its job (none without a pre-event reference)."""
        cfg = self.config
        if not cfg.change_aware:
            return {}
        day = utc(cfg.event_date).date().isoformat()
        if cfg.pre_scenes is not None:
            return {"pre_scenes": cfg.pre_scenes, "event_date": day}
        record = self.events_dir / f"{self.event(aoi_name)}.pre_event.json"
        if not record.is_file():  # the event's first job: pick once, keep the pick
            self.events_dir.makedirs()
            write_json_atomic(record, self._pick_pre_event(aoi_name))
        return {"pre_scenes": json.loads(record.read_text())["scenes"], "event_date": day}

    def _pick_pre_event(self, aoi_name: str) -> dict[str, Any]:
        """``pre_event: auto`` for one event: the candidates over its AOI in the window, the rule's pick."""
        from rasterio.crs import CRS

        from ..ingest.inputs import DEFAULT_SCL_MASK
        from ..region.pre_event import rank
        from ..region.scenes import load_signer

        cfg = self.config
        day = utc(cfg.event_date).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = day - timedelta(days=cfg.pre_event_days), day - timedelta(microseconds=1)
        aois = {aoi_name: self.aois[aoi_name]}
        items = {i.id: i for i in _window_items(self, start, end, aois)}
        found = select_scenes(
            items.values(),
            asset=cfg.asset,
            aois=aois,
            start=start,
            end=end,
            collection=cfg.collection,
            max_cloud_cover=cfg.max_cloud_cover,
        )
        window = f"{start.isoformat()}/{end.isoformat()}"
        if not found:
            raise InputError(
                f"pre_event: auto: no item over AOI {aoi_name!r} in {window} "
                f"(the {cfg.pre_event_days} days before event_date)"
            )
        dicts = []
        for scene in found:
            items[scene.id].make_asset_hrefs_absolute()
            dicts.append(items[scene.id].to_dict())
        scl_mask = (self.job.get("inputs") or {}).get("scl_mask") or list(DEFAULT_SCL_MASK)
        sign = load_signer(self.job.get("href_signer"))
        chosen, record = rank(dicts, self.aois[aoi_name], CRS.from_epsg(4326), scl_mask, sign)
        return {"window": window, **record, "scenes": [self.scene_path(found[chosen])]}


def _location(value: str, base: Path, where: str, *, http_ok: bool = False) -> str:
    """A local path (relative to ``base``) made absolute, or a URI this project can serve here
    (and write to, unless ``http_ok``: read-only http(s) is fine)."""
    if not is_uri(value):
        return str(rebase_path(base, path_or_uri(value)))
    if not (http_ok and value.startswith(("http://", "https://"))):
        check_location(value, where).require_writable(where)
    return value


def load_schedule(path: str | Path) -> Schedule:
    """Validate a schedule YAML, its job template and AOIs; paths are relative to the YAML."""
    path = Path(path).absolute()
    cfg = validate_model(ScheduleConfig, load_yaml(path), str(path))
    base = path.parent
    if cfg.catalog is not None:
        cfg.catalog = _location(cfg.catalog, base, f"{path}: catalog", http_ok=True)  # pystac reads http(s)
    out = cfg.output
    out.root = _location(out.root, base, f"{path}: output.root")
    for key in ("publish", "staging"):
        if getattr(out, key) is not None:
            setattr(out, key, _location(getattr(out, key), base, f"{path}: output.{key}"))
    if cfg.state is not None:
        cfg.state = _location(cfg.state, base, f"{path}: state")
    if cfg.submit is not None and cfg.submit.upload_to is not None:
        cfg.submit.upload_to = _location(cfg.submit.upload_to, base, f"{path}: submit.upload_to")
        if not is_uri(out.root):
            raise ConfigError(
                f"{path}: submit.upload_to uploads the jobs' inputs, and their maps are written by the "
                f"cluster: output.root must be object storage it writes to (found {out.root})"
            )
    for aoi in cfg.aois:
        aoi.geojson = rebase_path(base, aoi.geojson)
    if cfg.pre_scenes is not None:
        cfg.pre_scenes = [_location(s, base, f"{path}: pre_scenes", http_ok=True) for s in cfg.pre_scenes]
    job = job_from_dict({**cfg.job, "scenes": ["scene"], "aoi": "aoi.geojson", "out": "out"}, base, f"{path}: job")
    template = job.model_dump(mode="json", exclude={"scene", "scenes", "aoi", "out"})
    # a pre-event reference makes other maps: other events (schedules without one keep their ids)
    reference = {k: getattr(cfg, k) for k in ("pre_scenes", "pre_event", "pre_event_days")} if cfg.change_aware else {}
    identity = {**template, **reference}
    config_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Schedule(cfg, template, {a.name: a.wgs84() for a in cfg.aois}, config_hash)


def run_pass(
    schedule: Schedule, submitter: Submitter, *, remote: bool = False, failed: list[str] | None = None
) -> list[str]:
    """One pass: for each event with new items, run or submit its region job over all of its
    items; -> the ids of the jobs started. ``remote``: the submitter is a cluster, so the job's
    local paths are refused unless ``submit.shared_fs``, or uploaded with ``submit.upload_to``.

    An event whose previous job still runs gets no other job (its new items wait for the next
    pass). A job's items count as mapped once it has published them (``state.SchedulerState``);
    a job that fails (a local run with a bad scene; a cluster's job that ends without publishing)
    is recorded as failed, its items stay new (the next pass tries again) and the pass goes on;
    an unreachable cluster stops the pass. ``failed`` collects ``"<job id>: <error>"`` of each
    job that failed (``schedule --once`` exits non-zero on any, so that cron sees it).
    """
    cfg = schedule.config
    failed = [] if failed is None else failed
    with SchedulerState.open(schedule.state_path) as state:
        scenes = _find_scenes(schedule)
        started: list[str] = []
        for name in schedule.aois:
            items = [s for s in scenes if name in s.aois]
            if _event_busy(state, submitter, schedule.event(name), items, failed):
                continue
            if (submitted := _event_job(schedule, state, submitter, name, items, remote, failed)) is not None:
                started.append(submitted)
        _gather_events(schedule)
        schedule.events_dir.makedirs()
        write_json_atomic(schedule.events_dir / "summary.json", event_summary(schedule))
        source = cfg.catalog or (cfg.stac_search.url if cfg.stac_search else None)
        log.info("pass over %s: %d item(s) in the window, %d job(s) started", source, len(scenes), len(started))
        return started


def _event_busy(
    state: SchedulerState, submitter: Submitter, event: str, items: list[SceneItem], failed: list[str]
) -> bool:
    """Whether ``event``'s previous job still runs (then it gets no other job now). Asked of the
    backend while the job is recorded as running (settling it once it has ended) or when new
    items would start another."""
    last = state.last_job(event)
    if last is None:
        return False
    jid, rec = last
    new = any(s.id not in state.event_items(event) for s in items)
    if rec.get("state") != RUNNING and not new:
        return False
    if _settle(state, submitter, jid, rec, failed):
        return False
    log.info("event %s: job %s is still running: no other job until it ends", event, jid)
    return True


def _settle(state: SchedulerState, submitter: Submitter, jid: str, rec: dict[str, Any], failed: list[str]) -> bool:
    """Ask the backend about job ``jid``; once it has ended, a job recorded as running is settled:
    mapped when it SUCCEEDED and its ``run.json`` names each of its scenes, else failed (its items
    stay new). -> False while it is pending or running."""
    status, message = submitter.state(jid, rec["out"])
    if status in ACTIVE:
        return False
    if rec.get("state") != RUNNING:
        return True
    missing = _unpublished(rec["out"], rec["scenes"])
    mapped = status == "SUCCEEDED" and not missing
    if mapped:
        ended = "published"
    elif status == "SUCCEEDED":
        ended = f"ended without publishing {', '.join(missing)} in {rec['out']}/run.json"
    else:
        ended = f"{status}" + (f": {message}" if message else "")
    state.settle(jid, mapped=mapped, ended=ended)
    log.log(logging.INFO if mapped else logging.ERROR, "job %s of event %s: %s", jid, rec["event"], ended)
    if not mapped:
        failed.append(f"{jid}: {ended}")
    return True


def _unpublished(out: str, scenes: list[str]) -> list[str]:
    """The job's scene entries that ``OUT/run.json`` (complete) does not name: a region names each
    scene it mapped or skipped by what the job named (a STAC item file as ``FILE#item id``)."""
    where = location(out)
    with storage_errors(where, "event output"):
        run = read_manifest(where)
    if run is None or run.get("status") != "complete":
        return list(scenes)
    named = {str(s.get("source")) for s in [*run.get("scenes", []), *run.get("skipped_scenes", [])]}
    return [s for s in scenes if s not in named and not any(n.startswith(f"{s}#") for n in named)]


def _event_job(
    schedule: Schedule,
    state: SchedulerState,
    submitter: Submitter,
    name: str,
    items: list[SceneItem],
    remote: bool,
    failed: list[str],
) -> str | None:
    """Run or submit the job of event ``name`` when any of ``items`` is new; -> its id if started."""
    event = schedule.event(name)
    new = [s.id for s in items if s.id not in state.event_items(event)]
    if not new:
        return None
    ids = [s.id for s in items]
    first = job_id(event, ids)
    job = schedule.submission(name, items, state.attempts(first))
    if remote:
        job = _for_cluster(schedule, job, name)
    assert job.submission_id is not None  # Schedule.submission names every job
    outcome = _submit(submitter, job)
    info = {"aoi": name, "new": new, "out": job.job["out"], "scenes": job.job["scenes"], "first_id": first}
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    submitted = not outcome.startswith("failed")
    jid = job.submission_id
    record = state.record(jid, event, ids, {**info, "outcome": outcome, "at": at}, submitted=submitted)
    log.info("event %s (AOI %s): %d item(s), new: %s; job %s %s", event, name, len(ids), ", ".join(new), jid, outcome)
    if not submitted:
        failed.append(f"{jid}: {outcome.removeprefix('failed: ')}")
        return None
    _settle(state, submitter, jid, record, failed)  # a local run has ended: settled now
    return jid if outcome == "started" else None


def _for_cluster(schedule: Schedule, job: JobSubmission, name: str) -> JobSubmission:
    """``job`` as the cluster may receive it: its paths as they are (``shared_fs``), its local
    inputs uploaded (``upload_to``), or refused while it names a path of this machine."""
    cfg = schedule.config
    shared, upload_to = (cfg.submit.shared_fs, cfg.submit.upload_to) if cfg.submit else (False, None)
    spec, uploads = cluster_locations(
        job.job, f"schedule {cfg.name}, event {name}", upload_to=upload_to, shared_fs=shared
    )
    if uploads is not None:
        log.info("event %s: %s", name, uploads.summary())
    return replace(job, job=spec)


def _find_scenes(schedule: Schedule) -> list[SceneItem]:
    """The items of the schedule's window over its AOIs (see ``_window_items``)."""
    cfg = schedule.config
    start, end = utc(cfg.event_date), utc(cfg.until) if cfg.until else None
    return select_scenes(
        _window_items(schedule, start, end, schedule.aois),
        asset=cfg.asset,
        aois=schedule.aois,
        start=start,
        end=end,
        collection=cfg.collection,
        max_cloud_cover=cfg.max_cloud_cover,
    )


def _window_items(schedule: Schedule, start: datetime, end: datetime | None, aois: dict[str, BaseGeometry]):
    """The schedule's static catalog's items (all: ``select_scenes`` filters them), or its STAC API's
    over the AOIs' bounds from ``start`` to ``end`` (an item without a self link gets its API address)."""
    import pystac

    from ..region.stac_search import api_items

    cfg = schedule.config
    if cfg.stac_search is None:
        assert cfg.catalog is not None  # ScheduleConfig: exactly one of catalog and stac_search
        return catalog_items(cfg.catalog)
    search = cfg.stac_search.model_copy(
        update={
            "datetime": f"{start.isoformat()}/{end.isoformat() if end else '..'}",
            "max_cloud_cover": cfg.max_cloud_cover,
        }
    )
    items = []
    for found in api_items(search, unary_union(list(aois.values())).bounds):
        item = pystac.Item.from_dict(found)
        if item.get_self_href() is None:
            item.set_self_href(f"{search.url.rstrip('/')}/collections/{item.collection_id}/items/{item.id}")
        items.append(item)
    return items


def event_summary(schedule: Schedule) -> dict[str, Any]:
    """Per event mapped so far (its ``run.json``): AOI, objects, AOI share observed, time to map;
    and the median time to map over every event's scenes (``region.timeliness``)."""
    events: dict[str, Any] = {}
    times: list[float] = []
    for name in schedule.aois:
        event = schedule.event(name)
        with storage_errors(schedule.root / event, "event output"):
            run = read_manifest(schedule.root / event)
        if run is None:
            continue
        summary = run.get("summary", {})
        times += [s["time_to_map_s"] for s in run.get("scenes", []) if s.get("time_to_map_s") is not None]
        events[event] = {
            "aoi": name,
            "finished": run.get("finished"),
            "scenes": len(run.get("scenes", [])),
            "objects": summary.get("objects"),
            "observed_share": summary.get("observed_share"),
            "time_to_map": run.get("time_to_map"),
        }
    return {"events": events, "time_to_map": {"scenes": len(times), "median_s": median(times) if times else None}}


def _gather_events(schedule: Schedule) -> None:
    """``ROOT/collection.json``: the event items written so far (a cluster's job writes its own
    when it ends, so a later pass gathers it)."""
    root = schedule.root
    if any((root / n / ITEM_FILE).is_file() for n in root.ls_names()):
        name = schedule.config.name
        write_collection(root, name, f"Landslide maps of schedule {name}: one item per event (AOI)")


def _submit(submitter: Submitter, job: JobSubmission) -> str:
    """Start ``job``; -> its outcome for the state file. An unreachable cluster stops the pass."""
    try:
        submitter.submit(job)
        return "started"
    except JobExistsError:
        return "already known to the cluster"
    except ClusterError:
        raise
    except LandslideBatchError as exc:
        log.error("job %s failed: %s", job.submission_id, exc)
        return f"failed: {exc}"


def run_schedule(schedule: Schedule, submitter: Submitter, *, remote: bool = False) -> None:
    """Pass after pass, ``cadence`` apart, until ``until`` (forever without it)."""
    until = schedule.config.until
    while True:
        run_pass(schedule, submitter, remote=remote)
        if until is not None and datetime.now(timezone.utc) > utc(until):
            return
        time.sleep(schedule.config.cadence.total_seconds())
