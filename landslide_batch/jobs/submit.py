"""Region jobs on a Ray cluster through the Job Submission API, or in this process.

A submission carries a resolved job spec (every path absolute, as the cluster sees it) as the
only file of the job's ``working_dir``; the entrypoint is ``landslide-batch run job.yaml
--executor ray``. The cluster must have this project installed (the image in ``cluster/``, or
the venv of a local ``ray start``); ``ship_code`` overlays the local source tree as a
``py_module`` for trying changes on a running cluster (pure Python only: dependencies come
from the image).
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

import landslide_batch

from ..config import job_from_dict, load_yaml
from ..errors import LandslideBatchError, OutputLockedError
from ..outputs.folder import output_lock
from ..storage import Location, location
from .stac import write_item

ENTRYPOINT = "landslide-batch"
JOB_FILE = "job.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")
UNKNOWN = "UNKNOWN"


class ClusterError(LandslideBatchError):
    """The Ray Job API is unreachable, or refused or failed a request."""


class JobExistsError(ClusterError):
    """The cluster already knows a job with this submission id (so it was mapped or is being mapped)."""


@dataclass(frozen=True)
class StacOptions:
    """Describe the outputs as a STAC item after the run (and publish them): the job's last step."""

    item_id: str | None = None
    when: datetime | None = None
    derived_from: tuple[str, ...] = ()  # the source scenes' STAC items
    publish_to: str | None = None

    def command(self, out: str) -> list[str]:
        args = [ENTRYPOINT, "stac-item", out]
        for flag, value in (
            ("--id", self.item_id),
            ("--datetime", self.when and self.when.isoformat()),
            *(("--derived-from", href) for href in self.derived_from),
            ("--publish", self.publish_to),
        ):
            if value:
                args += [flag, value]
        return args


@dataclass(frozen=True)
class JobSubmission:
    job: dict[str, Any]  # a JobConfig as JSON; paths absolute, as the cluster sees them
    submission_id: str | None = None  # None: Ray picks one
    stac: StacOptions | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Submitter(Protocol):
    def submit(self, job: JobSubmission) -> str:
        """Start ``job``; -> its id. Raises :class:`JobExistsError` for an id the backend already knows."""
        ...

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        """What the backend says of a job writing ``out``: one of ``ACTIVE``, ``TERMINAL`` or
        ``UNKNOWN`` (the backend does not know it), and a message."""
        ...


def prepare_job(path: Path) -> dict[str, Any]:
    """Validate a job YAML here, before the cluster sees it; -> the spec: URIs as given, paths
    relative to the YAML made absolute on this machine (whether the cluster may receive those
    is :func:`.upload.cluster_locations`' decision)."""
    path = Path(path).absolute()
    return job_from_dict(load_yaml(path), path.parent, str(path)).model_dump(mode="json")


def cluster_spec(job: dict[str, Any]) -> dict[str, Any]:
    """The spec as run on the cluster: Ray executor, and the driver joins the cluster it runs on
    (``RAY_ADDRESS``, set by the job supervisor) whatever address the YAML names."""
    return {**job, "executor": "ray", "ray": {**job.get("ray", {}), "address": None}}


class RaySubmitter:
    """Job Submission API client for one cluster; ``address`` is the dashboard, http://HEAD:8265
    (None: Ray's lookup, RAY_API_SERVER_ADDRESS / RAY_ADDRESS / a local cluster)."""

    def __init__(self, address: str | None = None, *, env: dict[str, str] | None = None, ship_code: bool = False):
        self.address = address
        self.env = dict(env or {})
        self.ship_code = ship_code
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from ray.exceptions import AuthenticationError
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)
            except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as exc:
                raise ClusterError(f"cannot reach the Ray Job API at {self._where}: {exc}") from None
        return self._client

    @property
    def _where(self) -> str:
        return self.address or "the default address (RAY_ADDRESS or a local cluster)"

    def request(self, job: JobSubmission, workdir: Path) -> dict[str, Any]:
        """``submit_job`` arguments for ``job``; writes its spec into ``workdir`` (the working_dir)."""
        (workdir / JOB_FILE).write_text(yaml.safe_dump(cluster_spec(job.job), sort_keys=False))
        entrypoint = shlex.join([ENTRYPOINT, "run", JOB_FILE, "--executor", "ray"])
        if job.stac:
            entrypoint += " && " + shlex.join(job.stac.command(job.job["out"]))
        runtime_env: dict[str, Any] = {"working_dir": str(workdir)}
        if self.env:
            runtime_env["env_vars"] = self.env
        if self.ship_code:
            runtime_env["py_modules"] = [str(Path(landslide_batch.__file__).parent)]
            runtime_env["excludes"] = ["__pycache__"]
        return {
            "entrypoint": entrypoint,
            "runtime_env": runtime_env,
            "submission_id": job.submission_id,
            "metadata": {
                "scene": str(job.job.get("scene") or ",".join(job.job.get("scenes") or [])),
                "out": str(job.job["out"]),
                **job.metadata,
            },
        }

    def submit(self, job: JobSubmission) -> str:
        with tempfile.TemporaryDirectory(prefix="landslide-job-") as tmp:
            try:
                return self.client.submit_job(**self.request(job, Path(tmp)))
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    raise JobExistsError(
                        f"job {job.submission_id} was already submitted to {self._where}; "
                        f"see `landslide-batch status {job.submission_id}`"
                    ) from None
                raise ClusterError(f"{self._where} refused the job: {exc}") from None
            except _network_errors() as exc:
                raise ClusterError(
                    f"{self._where}: the connection failed while submitting the job "
                    f"({type(exc).__name__}: {exc}); check that the cluster is up, then run "
                    "the same submit again (an id that reached the cluster is refused, not "
                    "mapped twice)"
                ) from None

    def status(self, job_id: str) -> tuple[str, str]:
        """-> (PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED, the cluster's message)."""
        info = self._call(self.client.get_job_info, job_id)
        return info.status.value, info.message or ""

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        """The cluster's status of ``job_id`` (``out`` is the cluster's to check); UNKNOWN for a
        job the cluster does not know (a restarted head forgets its jobs)."""
        try:
            return self.status(job_id)
        except ClusterError as exc:
            if "does not exist" not in str(exc):
                raise
            return UNKNOWN, f"{self._where} does not know job {job_id}"

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 2.0) -> tuple[str, str]:
        """Poll until the job ends; -> its final status and message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status, message = self.status(job_id)
            if status in TERMINAL:
                return status, message
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"job {job_id} still {status} after {timeout:.0f} s")
            time.sleep(poll)

    def logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id)

    def follow(self, job_id: str, write: Callable[[str], Any]) -> None:
        """Stream the logs until the job ends."""

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        self._call(lambda _: asyncio.run(tail()), job_id)

    def _call(self, fn: Callable[[str], Any], job_id: str) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return fn(job_id)
        except (RuntimeError, AuthenticationError) as exc:
            raise ClusterError(f"{self._where}: job {job_id}: {exc}") from None
        except _network_errors() as exc:
            raise ClusterError(
                f"{self._where}: job {job_id}: the connection to the Ray Job API failed "
                f"({type(exc).__name__}: {exc}); the job itself runs on, check that the "
                "cluster is up and ask again"
            ) from None


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a broken connection raises in the Job API client: requests' errors (``OSError``s) for
    HTTP calls, aiohttp's for the log stream."""
    import aiohttp

    return OSError, aiohttp.ClientError, asyncio.TimeoutError


class LocalRunner:
    """Runs each job in this process (``schedule --local``): the same submissions, no cluster."""

    def __init__(self) -> None:
        self._succeeded: set[str] = set()

    def submit(self, job: JobSubmission) -> str:
        from ..pipeline import run_job

        job_id = job.submission_id or location(job.job["out"]).name
        cfg = job_from_dict(job.job, where=job_id)
        run_job(cfg)
        if job.stac:
            write_item(
                location(cfg.out),
                item_id=job.stac.item_id,
                when=job.stac.when,
                derived_from=job.stac.derived_from,
                publish_to=job.stac.publish_to,
            )
        self._succeeded.add(job_id)
        return job_id

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        """RUNNING while a job (of any process) holds ``out``'s lock; SUCCEEDED for a job this
        runner finished; else UNKNOWN (a job of another process, not running)."""
        if _output_busy(location(out)):
            return "RUNNING", f"{out} is locked by a job writing it"
        if job_id in self._succeeded:
            return "SUCCEEDED", ""
        return UNKNOWN, "not run by this process, and nothing writes its output folder"


def _output_busy(out: Location) -> bool:
    """Whether a job holds ``out``'s lock (a file lock locally, a lease on object storage)."""
    if not out.exists():
        return False
    try:
        with output_lock(out):
            return False
    except OutputLockedError:
        return True
