"""The three stages of a block: read (+halo) -> predict -> write.

Each stage is a small callable class over one row (a dict holding a block's fields), so
the very same objects run in the local executor and in Ray tasks / actors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ..config import EnsembleConfig
from ..ingest.scene import Scene
from ..plan.tiling import Block, TileGrid
from .heap import release_freed_memory

if TYPE_CHECKING:
    from ray import ObjectRef

    from ..models.card import ModelFiles
    from .predictor import EnsemblePredictor

#: A block on its way through the stages: the block's fields, then its bands, then its result.
Row = dict[str, Any]

#: Probability and spread of a pixel without a prediction (invalid input): the output store's fill.
NODATA = -1.0


class BlockWriter(Protocol):
    """Where predicted blocks go: the job's output store (``outputs.store.BlockStore``), which this
    layer does not know."""

    def write(
        self,
        block: Block,
        prob: npt.NDArray[np.float32],
        spread: npt.NDArray[np.float32],
        agreement: npt.NDArray[np.float32],
    ) -> None: ...


def block_of(row: Row) -> Block:
    return Block(**{k: int(row[k]) for k in Block.__dataclass_fields__})


@dataclass(frozen=True)
class PredictorSpec:
    """Everything an actor needs to build its predictor (models load in the actor).

    ``model_files``: the members' card + weights as read and verified once by the driver
    (:meth:`check`), or a Ray object reference to them (:meth:`shipped`): actors then read no
    model path, so models may live on the driver's disk or in any object store."""

    ensemble: EnsembleConfig
    tile: int
    stride: int
    blend: str
    batch_size: int | None
    device: str
    threads: int | None  # torch CPU threads of a Ray actor, which sets them (the predictor leaves them)
    model_files: tuple[ModelFiles, ...] | ObjectRef[tuple[ModelFiles, ...]] | None = None
    tta: bool = False  # test-time augmentation (flips + 90-degree rotations, averaged)

    def check(self) -> PredictorSpec:
        """Build every member from its files (read here unless the spec holds them; raises
        ModelError): the driver's check before Ray actors load them. -> this spec holding the files."""
        from ..models.card import load_model_folder, read_model_files

        files = self.model_files
        if files is None:
            files = tuple(read_model_files(member.model) for member in self.ensemble.members)
        elif not isinstance(files, tuple):  # shipped: checked before it was
            return self
        for f in files:
            load_model_folder(f)
        return replace(self, model_files=files)

    def shipped(self) -> PredictorSpec:
        """This spec with its model files put into Ray's object store once (inside a Ray session). A
        spec without files has them read and checked here; one holding files is shipped as it is
        (its caller checks it, before or beside: see ``pipeline`` and ``region.job``)."""
        import ray

        files = self.model_files if self.model_files is not None else self.check().model_files
        if not isinstance(files, tuple):  # a Ray object reference already
            return self
        return replace(self, model_files=ray.put(files))

    def build(self) -> EnsemblePredictor:
        from .device import require_device
        from .predictor import EnsemblePredictor

        require_device(self.device)  # a clear error, never a silent CPU run

        files = self.model_files
        if files is not None and not isinstance(files, tuple):  # a Ray object reference
            import ray

            files = ray.get(files)
        return EnsemblePredictor(
            self.ensemble,
            tile=self.tile,
            stride=self.stride,
            blend=self.blend,
            batch_size=self.batch_size,
            device=self.device,
            tta=self.tta,
            model_files=files,
        )


class ReadBlock:
    def __init__(self, scene_path: Path | str, grid: TileGrid):
        self.scene_path, self.grid = scene_path, grid
        self._scene: Scene | None = None

    def __call__(self, row: Row) -> Row:
        if self._scene is None:
            self._scene = Scene(self.scene_path)
        bands, valid = self._scene.read_reflected(*block_of(row).window(self.grid))
        return {**row, "bands": bands, "valid": valid}


class PredictBlock:
    """Holds the ensemble: one per actor / process, models loaded once (from ``spec``, or the
    ``EnsemblePredictor`` given). With a ``reader`` it reads its own blocks (rows without bands).

    A row's ``task`` (``infer.stripes.BlockTask``) says which tiles to keep for later blocks of
    its stripe and which to share; ``imports`` holds the tiles other stripes predicted for it.
    The result carries the shared tiles (``exports``) and how many tiles are kept after it."""

    def __init__(
        self,
        spec: PredictorSpec,
        grid: TileGrid,
        predictor: EnsemblePredictor | None = None,
        reader: ReadBlock | None = None,
    ):
        from .predictor import TileReuse

        self.grid, self.reader = grid, reader
        self.predictor = predictor or spec.build()
        self.reuse = TileReuse()

    def __call__(self, row: Row) -> Row:
        if self.reader is not None:
            row = self.reader(row)
        block = block_of(row)
        task = row["task"]
        before, before_s = self.predictor.forward_passes, self.predictor.forward_s
        self.reuse.begin(task.seq, task.keep, task.share, row.get("imports"))
        prob, spread, agreement = self.predictor.predict_maps(
            row["bands"], row["valid"], first_tile=(block.ty0, block.tx0), reuse=self.reuse
        )
        exports = self.reuse.end()
        wy0, _, wx0, _ = block.window(self.grid)
        core = (slice(block.y0 - wy0, block.y1 - wy0), slice(block.x0 - wx0, block.x1 - wx0))
        valid = row["valid"][core]
        out = {k: v for k, v in row.items() if k not in ("bands", "valid", "imports")}
        out["prob"] = np.where(valid, prob[core], NODATA).astype(np.float32)
        out["spread"] = np.where(valid, spread[core], NODATA).astype(np.float32)
        out["agreement"] = np.where(valid, agreement[core], NODATA).astype(np.float32)
        out["forward_passes"] = self.predictor.forward_passes - before
        out["forward_s"] = self.predictor.forward_s - before_s
        out["exports"], out["kept_tiles"] = exports, len(self.reuse.kept)
        release_freed_memory()  # the block's intermediate buffers: resident memory stays flat block after block
        return out


class WriteBlock:
    def __init__(self, store: BlockWriter):
        self.store = store

    def __call__(self, row: Row) -> Row:
        self.store.write(block_of(row), row["prob"], row["spread"], row["agreement"])
        return {
            "key": row["key"],
            "forward_passes": int(row["forward_passes"]),
            "forward_s": float(row["forward_s"]),
            "tiles": int(row["tiles"]),
        }
