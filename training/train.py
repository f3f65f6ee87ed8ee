"""Train one zoo model with Ray Train (TorchTrainer, DDP; gloo on CPU, NCCL on GPU) -> a model folder.

The driver validates both splits and computes normalisation statistics before any worker
starts. Each epoch every worker trains on its shard, then scores its shard of the validation
split into probability histograms; these are summed across workers, so the threshold sweep
and the validation F1 (early stopping) are exact over the whole split. Rank 0 reports a
checkpoint every epoch holding the latest state *and* the best weights so far, so only one
checkpoint is kept on disk and a rerun with the same ``out``/``run_dir`` resumes from it
(Ray Train 2 restores a run from its storage folder; ``TorchTrainer.restore`` is gone).

Data, ``out`` and the run storage may be object-store URIs: workers read patches through
fsspec, Ray Train keeps its checkpoints and run snapshot on the store (through the same fsspec
filesystem, so the same ``AWS_*`` variables configure it), and a remote model folder is
written locally, then uploaded with its card last. Nothing then needs a disk shared by the
driver and the workers, and a driver killed mid-run resumes from the store.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landslide_batch.errors import ConfigError, InputError
from landslide_batch.metrics import best_threshold, prob_histograms, scores
from landslide_batch.models.card import CARD_FILE, ModelCard, Normalization, save_model_folder
from landslide_batch.models.registry import MODEL_ZOO, build_model
from landslide_batch.storage import Location, location, storage_errors

from .augment import random_dihedral
from .config import TrainConfig
from .dataset import Pair, PatchDataset, SplitSummary, find_pairs, scan_split
from .losses import make_loss

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LOG_FILE = "train_log.csv"
RUN_FILE = "landslide_run.json"  # in the Ray Train run folder: what the checkpoints were trained on


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, done_steps: int):
    """Per-step LR schedule, rebuilt at ``done_steps`` on resume: a pure function of the config and
    the step, so a resumed run may also be given more epochs."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps, last_epoch=done_steps - 1
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, last_epoch=done_steps - 1)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@torch.no_grad()
def _validate(net: torch.nn.Module, loader, device: torch.device, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """This worker's validation shard -> (positive, negative) probability histograms, summed over workers."""
    net.eval()
    hist = np.zeros((2, bins), np.int64)
    for x, y in loader:
        prob = torch.sigmoid(net(x.to(device)))
        hist += np.stack(prob_histograms(prob, y, bins))
    total = _all_reduce(torch.from_numpy(hist).to(device)).cpu().numpy()
    return total[0], total[1]


@dataclass
class _Progress:
    """What a run has done so far; checkpointed every epoch so a rerun continues from it."""

    epoch: int = 0  # epochs finished
    bad_epochs: int = 0  # epochs since the validation F1 last improved
    best: dict[str, Any] | None = None  # weights, threshold, metrics and epoch of the best F1
    history: list[dict[str, Any]] = field(default_factory=list)  # one log row per epoch

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        """From a checkpoint's ``state.pt`` (which holds the model and optimizer state too)."""
        return cls(state["epoch"], state["bad_epochs"], state["best"], state["history"])

    def note(self, net: torch.nn.Module, val: dict[str, float], threshold: float) -> None:
        """Count one more epoch; keep its weights when its F1 beats the best so far."""
        self.epoch += 1
        if self.best is None or val["val_f1"] > self.best["metrics"]["val_f1"]:
            weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            self.best = {"weights": weights, "threshold": threshold, "metrics": val, "epoch": self.epoch}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    @property
    def best_epoch(self) -> dict[str, Any]:
        """The best epoch's weights, threshold, metrics and number (once an epoch has finished)."""
        if self.best is None:
            raise RuntimeError("no epoch has finished: there is no best model yet")
        return self.best


def _worker_loaders(
    ctx: dict[str, Any], cfg: TrainConfig, rank: int, world: int
) -> tuple[torch.utils.data.DistributedSampler, torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """-> (sampler, training loader, validation loader) over this worker's shards."""
    norm = Normalization.model_validate(ctx["normalization"])
    train_ds = PatchDataset(ctx["train_pairs"], ctx["features"], norm)
    val_ds = PatchDataset(ctx["val_pairs"][rank::world], ctx["features"], norm)
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.loader_workers, pin_memory=cfg.use_gpu
    )
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.loader_workers)
    return sampler, loader, val_loader


def _restore(net: torch.nn.Module, opt: torch.optim.Optimizer, rank: int) -> _Progress:
    """The run's last checkpoint loaded into ``net`` and ``opt``; a fresh start when there is none."""
    import ray.train

    if (ckpt := ray.train.get_checkpoint()) is None:
        return _Progress()
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if rank == 0:
        log.info("resumed from the checkpoint after epoch %d", state["epoch"])
    return _Progress.from_state(state)


def _train_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    steps: int,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    augment: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """One pass of at most ``steps`` batches -> (summed loss, patches), summed over workers.

    ``augment``: the generator of this epoch's random flips and rotations; None for none.
    """
    model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        if augment is not None:
            x, y = random_dihedral(x, y, augment)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum[0] += loss.detach().double() * len(x)
        loss_sum[1] += len(x)
    return _all_reduce(loss_sum)


def _report(
    row: dict[str, Any], net: torch.nn.Module, opt: torch.optim.Optimizer, progress: _Progress, rank: int
) -> None:
    """Report the epoch's row to Ray Train; rank 0 attaches the checkpoint (latest state and best weights)."""
    import ray.train

    if rank != 0:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as d:
        # vars(), not dataclasses.asdict(): that would deep-copy the best weights every epoch
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), **vars(progress)}
        torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


def train_loop(ctx: dict[str, Any]) -> None:
    """Body of each Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(ctx["config"])
    torch.set_num_threads(cfg.cpus_per_worker)
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    device = ray.train.torch.get_device()
    sampler, loader, val_loader = _worker_loaders(ctx, cfg, rank, world)

    spec = MODEL_ZOO[cfg.model]
    torch.manual_seed(cfg.seed)  # same initial weights on every worker
    net = build_model(spec.arch, spec.encoder, len(ctx["features"]))
    model = ray.train.torch.prepare_model(net)  # moves net to the device; DDP wrapper when world > 1
    steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = make_loss(cfg)
    progress = _restore(net, opt, rank)
    sched = _scheduler(opt, cfg, cfg.epochs * steps, progress.epoch * steps)

    for epoch in range(progress.epoch, cfg.epochs):
        if cfg.patience and progress.bad_epochs >= cfg.patience:
            break
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * world + rank) if cfg.augment else None
        loss_sum = _train_epoch(model, loader, steps, opt, sched, loss_fn, gen, device)
        train_s = time.perf_counter() - t0
        pos, neg = _validate(net, val_loader, device, cfg.threshold_bins)
        threshold, counts = best_threshold(pos, neg)
        val = {f"val_{k}": v for k, v in scores(counts).items()}
        progress.note(net, val, threshold)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum[0] / loss_sum[1]),
            **val,
            "threshold": threshold,
            "lr": sched.get_last_lr()[0],
            "train_s": round(train_s, 3),
            "val_s": round(time.perf_counter() - t0 - train_s, 3),
            "patches": int(loss_sum[1]),
        }
        progress.history.append(row)
        _report(row, net, opt, progress, rank)


def _ensure_ray(cfg: TrainConfig) -> None:
    """Join the cluster named by RAY_ADDRESS (or an already initialised one), else start a local one.

    On a local Ray the cluster's size is fixed, so a worker group that can never fit is an
    error here instead of Ray Train waiting for resources forever.
    """
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        ray.init(ignore_reinit_error=True)
        return
    ray.init()  # keep the dashboard: Ray Train 2 watches its controller through the state API
    have = ray.cluster_resources()
    need = {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers if cfg.use_gpu else 0}
    if short := {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0)}:
        ray.shutdown()
        raise ConfigError(
            "this machine's Ray has too few resources for the worker group: "
            + ", ".join(f"{k} needs {n:g} (num_workers x per-worker), has {h:g}" for k, (n, h) in short.items())
            + "; lower num_workers / cpus_per_worker, or drop use_gpu"
        )


def _check_run_identity(run: Location, identity: dict[str, Any]) -> None:
    """Refuse to resume a run on other data or another model: its checkpoint's weights were
    fitted to other normalisation statistics. The identity is recorded when a run starts."""
    path = run / RUN_FILE
    if path.is_file():
        if (found := json.loads(path.read_text())) != identity:
            raise ConfigError(
                f"{run} holds checkpoints of a run on other data or another model "
                f"({found['model']}, train data {found['data']['train'][:12]}…); "
                "use --overwrite to start afresh, or another run_dir / out"
            )
        log.info("continuing the run in %s (from its last checkpoint, if it has one)", run)
        return
    run.makedirs()
    path.write_text(json.dumps(identity, indent=2))


def _ray_storage(storage: Location) -> dict[str, Any]:
    """``RunConfig`` storage arguments: a local folder as is; a URI as its fsspec filesystem
    wrapped for pyarrow, so Ray Train's workers use the very client (and variables) we do."""
    if storage.is_local:
        return {"storage_path": str(storage)}
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return {"storage_path": storage.fs_path, "storage_filesystem": PyFileSystem(FSSpecHandler(storage.fs))}


def _write_model_folder(
    model: torch.nn.Module, card: ModelCard, history: list[dict[str, Any]], out: Location, overwrite: bool
) -> ModelCard:
    """The model folder + training log at ``out``; on object storage written here, then uploaded
    with ``card.json`` last (a reader that finds the card finds the weights it describes)."""
    if out.is_local:
        card = save_model_folder(model, card, out.path, overwrite=overwrite)
        write_log(history, out.path / LOG_FILE)
        return card
    with tempfile.TemporaryDirectory(prefix="landslide-model-") as tmp:
        folder = Path(tmp) / "model"
        card = save_model_folder(model, card, folder)
        write_log(history, folder / LOG_FILE)
        if overwrite:
            out.rm(recursive=True)
        for name in sorted(p.name for p in folder.iterdir() if p.name != CARD_FILE) + [CARD_FILE]:
            (out / name).put_file(folder / name)
    return card


def _scan(data: Path | str, what: str, features: list[str]) -> tuple[list[Pair], SplitSummary]:
    """List and check one split (a folder or URI): its pairs and statistics; store errors name the URI."""
    with storage_errors(str(data), what):
        pairs = find_pairs(data)
        log.info("checking %d %s patches in %s, computing feature statistics", len(pairs), what, data)
        return pairs, scan_split(pairs, features)


def _scan_splits(cfg: TrainConfig) -> tuple[list[Pair], SplitSummary, list[Pair], SplitSummary]:
    """Both splits listed and checked before any worker starts -> (train pairs, summary, val pairs, summary)."""
    features = cfg.feature_names
    t0 = time.perf_counter()
    train_pairs, tr = _scan(cfg.train_data, "training data", features)
    val_pairs, va = _scan(cfg.val_data, "validation data", features)
    if tr.size != va.size:
        raise InputError(f"training patches are {tr.size} px but validation patches {va.size} px")
    if tr.positives == 0:
        raise InputError(f"{cfg.train_data}: no landslide pixel in any training mask; nothing to learn")
    log.info(
        "data checked in %.1fs; landslide pixels: %.2f%% (train), %.2f%% (val)",
        time.perf_counter() - t0,
        100 * tr.positives / tr.pixels,
        100 * va.positives / va.pixels,
    )
    return train_pairs, tr, val_pairs, va


def _fit(cfg: TrainConfig, name: str, norm: Normalization, train_pairs: list[Pair], val_pairs: list[Pair]) -> _Progress:
    """Run the Ray Train worker group (run ``name`` in ``cfg.storage``) -> the last checkpoint's progress."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    _ensure_ray(cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "features": cfg.feature_names,
            "normalization": norm.model_dump(),
            "train_pairs": train_pairs,
            "val_pairs": val_pairs,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name=name, **_ray_storage(cfg.storage), checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError(f"training of {cfg.model} reported no checkpoint; see the log above")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    return _Progress.from_state(state)


def _model_card(cfg: TrainConfig, tr: SplitSummary, va: SplitSummary, progress: _Progress) -> ModelCard:
    """The card of the best epoch's model: its data, normalisation, threshold, scores and training config."""
    spec, best, history = MODEL_ZOO[cfg.model], progress.best_epoch, progress.history
    return ModelCard(
        name=cfg.model,
        arch=spec.arch,
        encoder=spec.encoder,
        features=cfg.feature_names,
        in_channels=len(cfg.feature_names),
        normalization=tr.normalization,
        threshold=best["threshold"],
        trained=True,
        metrics=best["metrics"],
        training={
            **cfg.model_dump(mode="json"),
            "result": {
                "best_epoch": best["epoch"],
                "epochs_run": len(history),
                "early_stopped": len(history) < cfg.epochs,
                "train_patches": tr.patches,
                "val_patches": va.patches,
                "train_seconds": round(sum(r["train_s"] + r["val_s"] for r in history), 1),
            },
        },
        data_hashes={"train": tr.sha256, "val": va.sha256},
        notes=f"validation metrics at the tuned threshold, best of {len(history)} epoch(s)",
    )


def train(cfg: TrainConfig, overwrite: bool = False) -> ModelCard:
    """Train ``cfg.model``, write the model folder ``cfg.out`` (+ ``train_log.csv``); return its card.

    An interrupted run resumes when run again with the same config. ``overwrite`` replaces
    an existing ``out`` and discards the run's checkpoints: a fresh start.
    """
    out = location(cfg.out)
    out.require_writable("--out")
    with storage_errors(str(out), "model folder"):
        if out.exists() and not overwrite:
            raise ConfigError(f"{out} already exists; choose another --out, or --overwrite to retrain from scratch")
    run = cfg.storage / out.name
    if overwrite and run.exists():
        run.rm(recursive=True)
    train_pairs, tr, val_pairs, va = _scan_splits(cfg)
    identity = {"model": cfg.model, "features": cfg.feature_names, "data": {"train": tr.sha256, "val": va.sha256}}
    _check_run_identity(run, identity)
    progress = _fit(cfg, out.name, tr.normalization, train_pairs, val_pairs)

    spec, best = MODEL_ZOO[cfg.model], progress.best_epoch
    model = build_model(spec.arch, spec.encoder, len(cfg.feature_names))
    model.load_state_dict(best["weights"])
    card = _write_model_folder(model, _model_card(cfg, tr, va, progress), progress.history, out, overwrite)
    log.info(
        "wrote %s: val F1 %.3f (precision %.3f, recall %.3f, IoU %.3f) at threshold %.2f, epoch %d",
        out,
        *(best["metrics"][f"val_{k}"] for k in ("f1", "precision", "recall", "iou")),
        best["threshold"],
        best["epoch"],
    )
    return card


def write_log(history: list[dict[str, Any]], path: Path) -> None:
    """Per-epoch CSV log (offline; no tracking service)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(
            {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()}
            for r in history
        )
