"""The scheduler's memory between passes: the catalog items each event's region job holds, and
every job it started with the items that job included.

A JSON file, held under a file lock for a whole pass so that two passes (a slow one and the
next cron tick) never submit the same items, and saved after every job so that a crash loses at
most the job in flight. On a cluster, keep it on a volume with working locks (not every NFS
has them); the CronJob's ``concurrencyPolicy: Forbid`` is the first guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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
    def open(cls, path: Path) -> Iterator[SchedulerState]:
        """Lock ``path`` for the duration of a pass and load it (empty when new)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = path.with_name(path.name + ".lock")

        def busy():
            return SchedulerBusyError(
                f"another scheduler pass holds {path} (lock {lock_file}); "  # noqa: E731
                "wait for it to finish"
            )

        with exclusive(lock_file, busy):
            yield cls(path, cls._load(path))

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        if not path.exists():
            return {"events": {}, "jobs": {}}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"scheduler state {path} is not valid JSON ({exc}); restore or delete it "
                "(deleting re-submits past scenes, which a Ray cluster that still knows "
                "their job ids refuses)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise ConfigError(f"scheduler state {path} is not a state file (no 'jobs' mapping)")
        return data

    def event_items(self, event: str) -> set[str]:
        """Ids of the catalog items already in ``event``'s region job (mapped, or submitted)."""
        return set(self._data.setdefault("events", {}).get(event, {}).get("items", []))

    def record(self, job_id: str, event: str, items: list[str], info: dict[str, Any], *, included: bool) -> None:
        """Remember a job of ``event`` over ``items``; with ``included`` (it ran or reached the
        cluster) the event now holds them, so no later pass maps them again. Saved at once."""
        self._data["jobs"][job_id] = {**info, "event": event, "items": items}
        if included:
            entry = self._data.setdefault("events", {}).setdefault(event, {"items": []})
            entry["items"] = sorted(set(entry["items"]) | set(items))
        write_json_atomic(self.path, self._data)
