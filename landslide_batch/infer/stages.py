"""The three stages of a block: read (+halo) -> predict -> write.

Each stage is a small callable class over one row (a dict holding a block's fields), so
the very same objects run in the local executor and as Ray Data tasks / actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import EnsembleConfig
from ..ingest.scene import Scene
from ..outputs.store import NODATA, BlockStore
from ..plan.tiling import Block, TileGrid


def block_of(row: dict) -> Block:
    return Block(**{k: int(row[k]) for k in Block.__dataclass_fields__})


@dataclass(frozen=True)
class PredictorSpec:
    """Everything an actor needs to build its predictor (models load in the actor)."""

    ensemble: EnsembleConfig
    tile: int
    stride: int
    blend: str
    batch_size: int | None
    device: str
    threads: int | None

    def check(self) -> None:
        """Load every member once (raises ModelError): a driver's check before Ray actors load them."""
        from ..models.card import load_model_folder

        for member in self.ensemble.members:
            load_model_folder(member.model)

    def build(self):
        from .predictor import EnsemblePredictor

        return EnsemblePredictor(self.ensemble, tile=self.tile, stride=self.stride, blend=self.blend,
                                 batch_size=self.batch_size, device=self.device, threads=self.threads)


class ReadBlock:
    def __init__(self, scene_path: Path, grid: TileGrid):
        self.scene_path, self.grid = scene_path, grid
        self._scene: Scene | None = None

    def __call__(self, row: dict) -> dict:
        if self._scene is None:
            self._scene = Scene(self.scene_path)
        bands, valid = self._scene.read_reflected(*block_of(row).window(self.grid))
        return {**row, "bands": bands, "valid": valid}


class PredictBlock:
    """Holds the ensemble: one per actor / process, models loaded once (from ``spec``, or the
    ``EnsemblePredictor`` given). With a ``reader`` it reads its own blocks (rows without bands)."""

    def __init__(self, spec: PredictorSpec, grid: TileGrid, tile_uses: np.ndarray, predictor=None,
                 reader: ReadBlock | None = None):
        from .predictor import TileReuse

        self.grid, self.reader = grid, reader
        self.predictor = predictor or spec.build()
        self.reuse = TileReuse(tile_uses)

    def __call__(self, row: dict) -> dict:
        if self.reader is not None:
            row = self.reader(row)
        block = block_of(row)
        before = self.predictor.forward_passes
        prob, spread = self.predictor.predict_window(row["bands"], row["valid"], first_tile=(block.ty0, block.tx0),
                                                     reuse=self.reuse)
        wy0, _, wx0, _ = block.window(self.grid)
        core = (slice(block.y0 - wy0, block.y1 - wy0), slice(block.x0 - wx0, block.x1 - wx0))
        valid = row["valid"][core]
        out = {k: v for k, v in row.items() if k not in ("bands", "valid")}
        out["prob"] = np.where(valid, prob[core], NODATA).astype(np.float32)
        out["spread"] = np.where(valid, spread[core], NODATA).astype(np.float32)
        out["forward_passes"] = self.predictor.forward_passes - before
        return out


class WriteBlock:
    def __init__(self, store: BlockStore):
        self.store = store

    def __call__(self, row: dict) -> dict:
        self.store.write(block_of(row), row["prob"], row["spread"])
        return {"key": row["key"], "forward_passes": int(row["forward_passes"]), "tiles": int(row["tiles"])}
