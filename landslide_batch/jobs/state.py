"""The scheduler's memory between passes: the catalog items each event's map holds, and every
job it started with the items that job was given.

One JSON object, a local file or an object on object storage, held for a whole pass (a file
lock locally, a lease object on object storage: ``storage.exclusive_location``) so that two
passes (a slow one and the next cron tick) never submit the same items, and saved after every
change so that a crash loses at most the job in flight.

A job's items count as mapped only once the job has published them: it ended SUCCEEDED and its
``run.json`` names them (``settle``). Until then the job is *running* and the event gets no other
job; a job that ends without publishing them is *failed* and its items stay new.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..errors import ConfigError, LandslideBatchError
from ..outputs.manifest import write_json_atomic
from ..storage import Location, Where, exclusive_location, location, storage_errors

RUNNING, MAPPED, FAILED = "running", "mapped", "failed"


class SchedulerBusyError(LandslideBatchError):
    """Another scheduler pass holds the state."""

    exit_code = 3


class SchedulerState:
    def __init__(self, where: Location, data: dict[str, Any]):
        self.where = where
        self._data = data

    @classmethod
    @contextmanager
    def open(cls, where: Where) -> Iterator[SchedulerState]:
        """Lock ``where`` (a path or URI) for the duration of a pass and load it (empty when new)."""
        where = location(where)
        lock = where.parent / (where.name + ".lock")

        def busy() -> SchedulerBusyError:
            return SchedulerBusyError(f"another scheduler pass holds {where} (lock {lock}); wait for it to finish")

        with ExitStack() as held:
            with storage_errors(where, "scheduler state"):  # the store's errors here, not the pass's
                where.parent.makedirs()
                held.enter_context(exclusive_location(lock, busy))
                data = cls._load(where)
            yield cls(where, data)

    @staticmethod
    def _load(where: Location) -> dict[str, Any]:
        try:
            text = where.read_text()
        except FileNotFoundError:
            return {"events": {}, "jobs": {}}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"scheduler state {where} is not valid JSON ({exc}); restore or delete it "
                "(deleting re-submits past scenes, which a Ray cluster that still knows "
                "their job ids refuses)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise ConfigError(f"scheduler state {where} is not a state file (no 'jobs' mapping)")
        data.setdefault("events", {})
        return data

    def event_items(self, event: str) -> set[str]:
        """Ids of the catalog items ``event``'s published map holds."""
        return set(self._data["events"].get(event, {}).get("items", []))

    def last_job(self, event: str) -> tuple[str, dict[str, Any]] | None:
        """``event``'s latest job (id, record), if it had one."""
        jobs = [(jid, rec) for jid, rec in self._data["jobs"].items() if rec.get("event") == event]
        return jobs[-1] if jobs else None

    def attempts(self, first_id: str) -> int:
        """How many jobs over the same items reached the backend (a retry needs a new id there)."""
        return sum(
            1 for rec in self._data["jobs"].values() if rec.get("first_id") == first_id and rec.get("submitted", True)
        )

    def record(
        self, job_id: str, event: str, items: list[str], info: dict[str, Any], *, submitted: bool
    ) -> dict[str, Any]:
        """Remember a job of ``event`` over ``items``: *running* when it reached the backend, else
        *failed* (its items stay new). Saved at once; -> the record."""
        self._data["jobs"].pop(job_id, None)  # a retry of a refused submission: last in order
        state = RUNNING if submitted else FAILED
        rec = {**info, "event": event, "items": items, "submitted": submitted, "state": state}
        self._data["jobs"][job_id] = rec
        self._save()
        return rec

    def settle(self, job_id: str, *, mapped: bool, ended: str) -> None:
        """A running job ended: with ``mapped`` (it published its items) the event's map now holds
        them, so no later pass maps them again; else its items stay new. Saved at once."""
        rec = self._data["jobs"][job_id]
        rec.update(state=MAPPED if mapped else FAILED, ended=ended)
        if mapped:
            entry = self._data["events"].setdefault(rec["event"], {"items": []})
            entry["items"] = sorted(set(entry["items"]) | set(rec["items"]))
        self._save()

    def _save(self) -> None:
        with storage_errors(self.where, "scheduler state"):
            write_json_atomic(self.where, self._data)
