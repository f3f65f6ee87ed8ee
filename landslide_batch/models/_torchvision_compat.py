"""Make torchvision importable beside a CPU-only torch build.

smp's encoders subclass torchvision's model classes (pure Python). PyPI's torchvision
wheel links its C++ ops against CUDA torch; on the CPU build of torch those ops cannot
load, and torchvision's import-time ``register_fake("torchvision::nms")`` then fails
because the operator was never defined. Declaring the two schemas it registers fakes for
lets the import finish; the ops themselves (detection NMS) are never used here. Where
torchvision's extension loads (a matching CUDA install), this does nothing.
"""

from __future__ import annotations

import sys

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def ensure_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    import torch

    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    for op, schema in _SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, op):
            torch.library.define(f"torchvision::{op}", schema)
    import torchvision  # noqa: F401,F811
