"""GPU readiness, checked on a CPU: torch operator calls per block outside the models' forward.

On a GPU every torch operator is at least one kernel launch (~5-10 µs of host time each). A
predictor that issues a few operators per tile (cutting it, deriving its features, blending it)
is launch-bound there, however fast the model. So the count of operators a block costs beyond
the models' own forward must not grow with the block's tiles.

How it is counted: each member's model is wrapped so that its forward runs inside a
``torch.profiler.record_function`` range; one ``predict_window`` call is profiled on the CPU, and
every ``aten::`` operator event is counted (nested ones too: a composite operator and the
operators it dispatches each count, as each may launch a kernel) except those inside a forward
range. The models are real (their forward is merely not counted), so the predictor runs exactly
as in a job. Blocks are all valid, so every tile of the grid runs.

Batch size: by default the predictor's on a GPU (64 tiles), where launches matter. Whatever the
batch size, the model runs once per batch, and the predictor hands it each batch as a view of
the block's tiles (one ``aten::as_strided`` per batch, metadata only: no kernel); so at the CPU
batch size of 16 the count grows by one operator per extra batch, at 64 by a quarter of that.

    .venv/bin/python benchmarks/op_counts.py                   # 16 and 256 tiles, batches of 64 and 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORWARD = "model forward"
TILE, STRIDE = 128, 64


class _MarkedForward(torch.nn.Module):
    """A model whose forward is one named profiler range: its operators are the model's own."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function(FORWARD):
            return self.inner(x)


@contextmanager
def marked_forwards(predictor: Any) -> Iterator[None]:
    """Wrap every member's model for the duration (restored after)."""
    members = predictor.ensemble.members
    originals = [m.model for m in members]
    for m in members:
        m.model = _MarkedForward(m.model)
    try:
        yield
    finally:
        for m, model in zip(members, originals):
            m.model = model


def _inside_forward(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == FORWARD:
            return True
        parent = parent.cpu_parent
    return False


def count_block_ops(predictor: Any, tiles_per_side: int, seed: int = 0) -> dict[str, int]:
    """Profile ``predictor.predict_window`` on a block of ``tiles_per_side``² tiles ->
    ``{"outside": aten operators outside the forward, "top_level": those called from Python (not
    from another operator), "forward_calls": forward ranges}``."""
    from landslide_batch.synthetic import synthetic_scene

    side = TILE + (tiles_per_side - 1) * STRIDE
    bands, _ = synthetic_scene(side, side, seed=seed)
    valid = np.ones((side, side), bool)
    predictor.predict_window(bands, valid)  # warm-up: first-call set-up is not a block's cost
    with marked_forwards(predictor), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        predictor.predict_window(bands, valid)
    events = list(prof.events())
    outside = [e for e in events if e.name.startswith("aten::") and not _inside_forward(e)]
    top = [e for e in outside if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {
        "outside": len(outside),
        "top_level": len(top),
        "forward_calls": sum(e.name == FORWARD for e in events),
    }


def default_predictor(work: Path, batch_size: int | None = None) -> Any:
    """A one-member predictor on the CPU, batches of ``batch_size`` (default: the GPU's), with an
    untrained U-Net-MobileNetV2 on the 14 bands (its forward is not counted: a light one will do)."""
    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.infer.predictor import GPU_BATCH, EnsemblePredictor
    from landslide_batch.models.card import init_model_folder

    folder = work / "unet_mobilenet_v2"
    if not folder.exists():
        init_model_folder("Unet", "mobilenet_v2", folder, seed=0)
    cfg = EnsembleConfig(members=[EnsembleMember(model=folder)])
    return EnsemblePredictor(cfg, device="cpu", batch_size=batch_size or GPU_BATCH)


def op_counts(predictor: Any = None, batch_size: int | None = None) -> dict[str, Any]:
    """Operators per block outside the forward at 16 and 256 tiles ->
    ``{tiles_16, tiles_256, ratio (tiles_256 / tiles_16), growth (ratio - 1; the gate: ≤ 0.10),
    batch_size, detail}``."""
    with tempfile.TemporaryDirectory(prefix="lsb-ops-") as tmp:
        predictor = predictor or default_predictor(Path(tmp), batch_size)
        small, large = count_block_ops(predictor, 4), count_block_ops(predictor, 16)
    return {
        "tiles_16": small["outside"],
        "tiles_256": large["outside"],
        "ratio": large["outside"] / small["outside"],
        "growth": large["outside"] / small["outside"] - 1,
        "batch_size": predictor.batch_size,
        "detail": {"tiles_16": small, "tiles_256": large},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 16])
    args = ap.parse_args()
    for batch in args.batch_size:
        r = op_counts(batch_size=batch)
        print(
            f"torch operators per block outside the models' forward (batch {r['batch_size']}): "
            f"16 tiles {r['tiles_16']}, 256 tiles {r['tiles_256']}, growth {100 * r['growth']:.1f} % (gate ≤ 10 %)"
        )
        print(json.dumps(r["detail"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
