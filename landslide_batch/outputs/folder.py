"""The output folder's protocol, one for scene jobs and region jobs, local or on object storage:
the lock (a file lock locally, a lease object on object storage), and the result already there:
this job's (found finished), or another job's (refused unless overwriting, which first removes
the ``run.json`` that vouched for it); for commands that work on a finished job (``vectorize``,
``compare``), that job's result; the job's working folder ``OUT/.work`` claimed for it
(another job's unfinished work discarded); its result published (``publish.publish_products``,
``run.json`` last) and its working folder removed."""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

from ..checks.output import disk_full_is_clear
from ..errors import ConfigError, InputError, OutputLockedError
from ..storage import Location, exclusive_location, storage_errors
from .manifest import read_manifest, write_json_atomic
from .publish import product_names, publish_products

log = logging.getLogger(__name__)


def output_lock(out: Location) -> AbstractContextManager[None]:
    """Hold ``OUT/.lock`` for the block; OutputLockedError at once when another job holds it."""

    def busy() -> OutputLockedError:
        return OutputLockedError(
            f"{out} is being written by another job (lock {out / '.lock'} is held); "
            "wait for it or choose another output folder"
        )

    return exclusive_location(out / ".lock", busy)


def enter_output(held: ExitStack, out: Location) -> None:
    """Open ``out`` for a job for as long as ``held``: locally, running out of space anywhere below
    ends in one clear error (exit 4; entered first, so left last); the first contact with ``out``
    (a bad bucket, key or endpoint) fails clearly; then the lock is held (:func:`output_lock`)."""
    if out.is_local:
        held.enter_context(disk_full_is_clear(out.path))
    with storage_errors(out, "out"):
        out.makedirs()
        held.enter_context(output_lock(out))


def stage_folder(held: ExitStack, out: Location, inside: str) -> Path:
    """Where a job writes its products before publishing them into ``out``: locally the folder
    ``inside`` of ``out`` (on its file system, so they move in by rename), else a local temporary
    folder that lives as long as ``held``."""
    if out.is_local:
        return out.path / inside
    return Path(held.enter_context(tempfile.TemporaryDirectory(prefix="landslide-products-")))


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


def finished_before(out: Location, jhash: str, overwrite: bool, outputs: dict[str, str], kind: str) -> dict | None:
    """The manifest of this very job when ``out`` holds its finished result (nothing to do: no
    block computed, no forward pass), else None; ConfigError for another job's result unless
    overwriting (:func:`previous_result`), which also removes another format's polygons."""
    previous, old_outputs = previous_result(out, jhash, overwrite, kind)
    if previous is not None and not overwrite:
        missing = [f for f in (old_outputs or outputs).values() if not (out / f).exists()]
        if missing:
            raise ConfigError(
                f"{out} holds this job's run.json but {', '.join(missing)} is missing; "
                "use --overwrite to compute the job again"
            )
        log.info("%s already holds the finished result of this job (hash %s): nothing to do", out, jhash)
        _log_kept_derivation(previous, outputs, out)
        return {
            **previous,
            "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]},
            "tiles": {**previous["tiles"], "forward_passes": 0},
        }
    if overwrite:  # from now on nothing may vouch for the folder's old products
        (out / "run.json").rm()
        old_polygons = old_outputs.get("polygons")
        # another format's file (or one this job does not write) would outlive the job it came from
        if old_polygons and old_polygons != outputs.get("polygons"):
            (out / old_polygons).rm()
    return None


def claim_work(out: Location, jhash: str, fresh: bool = False) -> Location:
    """``OUT/.work`` for the job ``jhash``: another job's unfinished work there is discarded
    (``fresh``: the job created it itself before its hash was known); -> its location."""
    work = out / ".work"
    state = work / "job.json"
    if not fresh and work.exists() and (not state.is_file() or json.loads(state.read_text()).get("job_hash") != jhash):
        log.info("discarding unfinished work of a different job in %s", work)
        work.rm()
    work.makedirs()
    write_json_atomic(state, {"job_hash": jhash})
    return work


def publish_result(manifest: dict, stage: Path, store: Location, out: Location, work: Location) -> None:
    """Write ``run.json`` beside the products in ``stage/final``, move them all and ``store`` into
    ``out`` (``run.json`` last), then remove the job's working folder ``work``."""
    (stage / "final").mkdir(parents=True, exist_ok=True)  # a region's scene map has no other product
    write_json_atomic(stage / "final" / "run.json", manifest)
    publish_products(stage / "final", store, out, manifest["outputs"])
    work.rm()


def _log_kept_derivation(previous: dict, outputs: dict[str, str], out: Location) -> None:
    """A finished job found re-derived products (``vectorize``): they are kept, and the log says so."""
    derived = previous.get("derivations") or []
    if derived:
        last = derived[-1]
        log.info(
            "%s: mask and polygons were re-derived on %s (threshold %s, min area %s m², %s) and are kept; "
            "`landslide-batch vectorize` derives them again",
            out,
            last["time"],
            last["threshold"],
            last["min_area_m2"],
            last["polygons"],
        )
    current = previous.get("outputs", {}).get("polygons")
    if current and "polygons" in outputs and current != outputs["polygons"]:
        log.warning(
            "%s: polygons stay in %s; `landslide-batch vectorize %s --format %s` writes %s without running the models",
            out,
            current,
            out,
            Path(outputs["polygons"]).suffix[1:],
            outputs["polygons"],
        )
