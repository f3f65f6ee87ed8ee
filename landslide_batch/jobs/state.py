"""The scheduler's memory between passes: the newest scene it processed and every job it started.

A JSON file, held under a file lock for a whole pass so that two passes (a slow one and the
next cron tick) never pick the same scene, and saved after every job so that a crash loses at
most the job in flight. On a cluster, keep it on a volume with working locks (not every NFS
has them); the CronJob's ``concurrencyPolicy: Forbid`` is the first guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LandslideBatchError
from ..locking import exclusive
from ..outputs.manifest import write_json_atomic


class SchedulerBusyError(LandslideBatchError):
    """Another scheduler pass holds the state file."""

    exit_code = 3


class SchedulerState:
    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self._data = data

    @classmethod
    @contextmanager
    def open(cls, path: Path) -> Iterator["SchedulerState"]:
        """Lock ``path`` for the duration of a pass and load it (empty when new)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = path.with_name(path.name + ".lock")
        busy = lambda: SchedulerBusyError(f"another scheduler pass holds {path} (lock {lock_file}); "  # noqa: E731
                                          "wait for it to finish")
        with exclusive(lock_file, busy):
            yield cls(path, cls._load(path))

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        if not path.exists():
            return {"watermark": None, "jobs": {}}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"scheduler state {path} is not valid JSON ({exc}); restore or delete it "
                              "(deleting re-submits past scenes, which a Ray cluster that still knows "
                              "their job ids refuses)") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise ConfigError(f"scheduler state {path} is not a state file (no 'jobs' mapping)")
        return data

    @property
    def watermark(self) -> datetime | None:
        """Time of the newest scene processed so far; later passes look at this time and after."""
        w = self._data.get("watermark")
        return datetime.fromisoformat(w) if w else None

    def has(self, job_id: str) -> bool:
        return job_id in self._data["jobs"]

    def record(self, job_id: str, scene_time: datetime, info: dict[str, Any]) -> None:
        """Remember a started job and move the watermark up to its scene; saved at once."""
        self._data["jobs"][job_id] = info
        if self.watermark is None or scene_time > self.watermark:
            self._data["watermark"] = scene_time.isoformat()
        write_json_atomic(self.path, self._data)
