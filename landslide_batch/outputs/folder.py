"""The output folder's protocol, one for scene jobs and region jobs, local or on object storage:
the lock (a file lock locally, a lease object on object storage), and the result already there:
this job's (found finished), or another job's (refused unless overwriting, which first removes
the ``run.json`` that vouched for it); for commands that work on a finished job (``vectorize``,
``compare``), that job's result. Products are published by ``publish.publish_products``,
``run.json`` last."""

from __future__ import annotations

from contextlib import AbstractContextManager

from ..errors import ConfigError, InputError, OutputLockedError
from ..storage import Location, exclusive_location
from .manifest import read_manifest
from .publish import product_names


def output_lock(out: Location) -> AbstractContextManager[None]:
    """Hold ``OUT/.lock`` for the block; OutputLockedError at once when another job holds it."""

    def busy() -> OutputLockedError:
        return OutputLockedError(
            f"{out} is being written by another job (lock {out / '.lock'} is held); "
            "wait for it or choose another output folder"
        )

    return exclusive_location(out / ".lock", busy)


def previous_result(out: Location, jhash: str, overwrite: bool, kind: str) -> tuple[dict | None, dict[str, str]]:
    """-> (the ``run.json`` in ``out`` when it is the result of the job ``jhash``, else None; the
    products it names, each inside ``out``). Another job's result (``kind``: ``scene job`` or
    ``region job``, for the message) is refused with ConfigError, unless overwriting: then its
    ``run.json`` goes first, so that nothing vouches for the products it named."""
    previous = read_manifest(out)
    if previous is None:
        return None, {}
    names = product_names(out, previous)  # a run.json naming files outside ``out``: refused here
    if previous.get("job_hash") == jhash:
        return previous, names
    if not overwrite:
        raise ConfigError(
            f"{out} holds the result of a different job (hash {previous.get('job_hash')}, this {kind} "
            f"{jhash}); use another output folder or --overwrite"
        )
    (out / "run.json").rm()
    return None, names


def finished_result(out: Location) -> tuple[dict, dict[str, str]]:
    """-> (the ``run.json`` of the finished job in ``out``, the products it names, each inside
    ``out``) for a command that works on it; InputError where ``out`` holds no finished job."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("status") != "complete":
        found = "no run.json" if manifest is None else f"run.json with status {manifest.get('status')!r}"
        raise InputError(
            f"{out} holds no finished job: expected a run.json with status 'complete' (written by "
            f"`landslide-batch run`), found {found}"
        )
    return manifest, product_names(out, manifest)  # every name inside ``out``: nothing outside is replaced
