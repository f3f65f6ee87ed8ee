"""Loading a model does not import torch's compiler (``torch._dynamo``, about a second), and what
was deferred still works: the real package imports afterwards, and the deferred functions call it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent(
    """
    import sys

    import torch

    from landslide_batch.infer.predictor import _inference_ready
    from landslide_batch.models.card import load_model_folder

    model, card = load_model_folder(sys.argv[1])
    model = _inference_ready(model, card.in_channels, 64)
    with torch.inference_mode():
        y = model(torch.randn(2, card.in_channels, 64, 64))
    assert y.shape == (2, 1, 64, 64) and torch.isfinite(y).all()
    assert "torch._dynamo" not in sys.modules, "loading and running a model imported torch._dynamo"

    from timm.models.naflexvit import NaFlexRopeIterator  # decorated with torch.compiler.disable
    roi = sys.modules["torchvision.ops.roi_align"]
    assert roi.is_compile_supported("cpu") is True  # the deferred helper imports the real one
    assert "torch._dynamo" in sys.modules and sys.modules["torch._dynamo"].__file__.endswith("__init__.py")
    import torch._dynamo

    assert torch._dynamo.is_compiling() is False and hasattr(torch._dynamo, "optimize")
    deferred = NaFlexRopeIterator.__next__
    assert deferred.__name__ == "__next__" and deferred.__wrapped__.__qualname__ == "NaFlexRopeIterator.__next__"
    print("ok")
    """
)


@pytest.mark.slow
def test_model_loads_without_the_compiler_and_deferred_functions_reach_it(tiny_model):
    done = subprocess.run([sys.executable, "-c", CHECK, str(tiny_model)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_an_imported_compiler_is_kept_and_deferred_disable_wraps_at_first_call():
    import torch._dynamo

    from landslide_batch.models._lazy_dynamo import _disable, dynamo_deferred

    real = sys.modules["torch._dynamo"]
    with dynamo_deferred():
        assert sys.modules["torch._dynamo"] is real
    assert sys.modules["torch._dynamo"] is real

    def plus_one(x: int) -> int:
        return x + 1

    for deferred in (_disable(plus_one), _disable(recursive=False, reason="test")(plus_one)):
        assert deferred.__wrapped__ is plus_one and deferred(1) == 2
    assert torch.compile(lambda x: _disable(plus_one)(x) * 2, backend="eager")(torch.ones(1)).item() == 4
