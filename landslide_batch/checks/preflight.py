"""Checks before a job writes anything: the output folder, free space, every model folder, units.

``resolve_job`` runs first in ``run_job``: it reads every model once and fails in seconds on what
would otherwise fail after a long ingest (a model folder without weights, weights that do not
match their card's hash), and it resolves ``inputs.units: auto`` from the models' cards, so that
ingest writes the units the models were trained in where the conversion is known. ``preflight``
then refuses what would leave a traceback (``--out`` naming a file or the scene, a full disk).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..bands import N_BANDS, resolve_features
from ..config import EnsembleConfig, JobConfig, ensemble_members
from ..errors import ConfigError
from ..ingest.b10 import ModelB10
from ..ingest.units import INPUTS_UNITS
from ..models.card import ModelCard, ModelFiles, read_model_files
from ..outputs.manifest import read_manifest
from ..outputs.publish import product_names
from ..plan.limits import check_work
from ..resolved import ResolvedJob
from ..storage import location
from .output import ZARR_MARKERS, check_free_space, check_inputs_outside, check_out_path

log = logging.getLogger(__name__)

#: A card's ``input_units`` -> the ``inputs.units`` that makes ingest write them.
_INPUTS_FOR = {card: inputs for inputs, card in INPUTS_UNITS.items()}


def resolve_job(cfg: JobConfig) -> ResolvedJob:
    """The job's ensemble parsed and every member's files read once (card, weights present, hash:
    ModelError otherwise), ``inputs.units: auto`` resolved from the cards. Nothing here imports
    torch: a scene job builds the models from these files beside hashing and ingest (over a second
    of imports beside work that mostly runs without the GIL). The device stays the configured one
    until the executor's session answers ``auto`` (``ResolvedJob.on_device``)."""
    members = ensemble_members(cfg)
    files = read_models(members)
    return ResolvedJob(resolve_inputs_units(cfg, [f.card for f in files]), members, files, cfg.device)


def preflight(job: ResolvedJob, overwrite: bool) -> None:
    """Check a scene job's ``out``, its scene's size and the free space before anything is written
    (the models were read and checked when the job was resolved)."""
    cfg = job.cfg
    if cfg.scene is None:
        raise ConfigError("preflight checks a scene job, and this job has no 'scene'")
    out = location(cfg.out)
    scene = location(cfg.scene)
    if out.is_local and scene.is_local:
        check_out_path(out.path, scene.path)
    if out.is_local and (previous := read_manifest(out)) is not None:
        product_names(out, previous)  # a manifest naming files outside ``out``: refused before any work
    shape = scene_shape(scene.path) if scene.is_local else None
    if shape is not None:  # tiles, block memory, pixels: refused at once, not after an ingest
        n = len(job.members.members)
        check_work(*shape, tile=cfg.tile, stride=cfg.stride, block=cfg.block, members=n, max_pixels=cfg.max_pixels)
    if out.is_local:
        inputs = [("scene", scene), *(("model", location(m.model)) for m in job.members.members)]
        inputs += [("ensemble file", location(cfg.ensemble))] if cfg.ensemble else []
        check_inputs_outside(out.path, [(what, loc.path) for what, loc in inputs if loc.is_local])
    if out.is_local and shape is not None and (overwrite or not (out.path / "run.json").is_file()):
        check_free_space(out.path, *shape)


def read_models(ensemble: EnsembleConfig) -> tuple[ModelFiles, ...]:
    """Read every member once (card, weights present, hash): ModelError otherwise. -> the files
    read, so that nothing reads or verifies them again."""
    return tuple(read_model_files(member.model) for member in ensemble.members)


def resolve_inputs_units(cfg: JobConfig, cards: list[ModelCard]) -> JobConfig:
    """``inputs.units: auto`` -> the convention the models were trained in (``physical`` when no card
    says); ConfigError when the members were trained in different ones (one scene cannot serve both)."""
    if cfg.inputs is None or cfg.inputs.units != "auto":
        return cfg
    wanted = {c.name: _INPUTS_FOR[c.input_units] for c in cards if c.input_units in _INPUTS_FOR}
    if len(set(wanted.values())) > 1:
        raise ConfigError(
            f"the models were trained on different input units ({wanted}); one scene cannot serve "
            "them all: set inputs.units to one of them, or run the members as separate jobs"
        )
    units = next(iter(wanted.values()), "physical")
    log.info("inputs.units: auto -> %s (%s)", units, "from the model cards" if wanted else "no card states its units")
    return cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"units": units})})


def model_b10_means(ensemble: EnsembleConfig, cards: list[ModelCard]) -> list[ModelB10]:
    """The B10 training means of the members that use B10, for ingest's ``inputs.b10: model_mean``
    (ingest reads no card: the job passes it these)."""
    means = []
    for member, card in zip(ensemble.members, cards):
        features = list(resolve_features(card.features))
        if "B10" in features:
            means.append(ModelB10(card.name, card.normalization.mean[features.index("B10")], member.weight))
    return means


def scene_shape(scene: Path) -> tuple[int, int] | None:
    """(height, width) of a scene GDAL, h5py or zarr can tell cheaply; None for band-file folders and
    STAC items (their grid is known only when assembled) and for files ingest will reject anyway."""
    import h5py
    import rasterio
    import zarr
    from rasterio.errors import RasterioError

    try:
        if scene.is_dir():
            if not any((scene / m).is_file() for m in ZARR_MARKERS):
                return None
            arrays = [a for _, a in zarr.open_group(str(scene), mode="r").arrays() if a.ndim == 3]
            return (arrays[0].shape[1], arrays[0].shape[2]) if arrays else None
        if scene.suffix.lower() in (".h5", ".hdf5"):
            with h5py.File(scene, "r") as f:
                shape = f["img"].shape if "img" in f else None
            if not shape or len(shape) != 3:
                return None
            return tuple(shape[:2]) if shape[-1] == N_BANDS else tuple(shape[1:])  # channels last, as L4S
        if scene.suffix.lower() == ".json":
            return None
        with rasterio.open(scene) as ds:
            return ds.height, ds.width
    except (OSError, RasterioError, KeyError, ValueError):
        return None  # unreadable: ingest says why, with the file's name
