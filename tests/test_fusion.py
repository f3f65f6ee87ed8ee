"""BatchNorm folding for inference: same outputs, per-model hooks (no process-wide patching)."""

import threading

import pytest
import torch

from landslide_batch.models.fusion import fold_batchnorm
from landslide_batch.models.registry import build_model


def randomised(model):
    """Non-trivial running statistics and affine terms: folding identity BatchNorms proves nothing."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in (
                (m.running_mean, -0.5, 0.5),
                (m.running_var, 0.5, 2.0),
                (m.weight.data, 0.5, 1.5),
                (m.bias.data, -0.2, 0.2),
            ):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


def n_batchnorm(model):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "arch,encoder", [("Unet", "resnet34"), ("DeepLabV3Plus", "resnet50"), ("Unet", "mit_b1"), ("PlainUnet", None)]
)
def test_folded_model_gives_the_same_logits(arch, encoder):
    torch.manual_seed(0)
    model = randomised(build_model(arch, encoder, 14 if encoder else 6))
    x = torch.randn(2, model_in := (14 if encoder else 6), 128, 128)
    with torch.no_grad():
        want = model(x)
    before = n_batchnorm(model)
    folded = fold_batchnorm(model, torch.zeros(1, model_in, 128, 128))
    assert folded > 0 and n_batchnorm(model) == before - folded
    with torch.no_grad():
        got = model(x)
    assert want.std() > 0.01  # the logits vary: a constant map would hide a misplaced fold
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_folding_in_one_thread_leaves_forward_passes_in_another_untouched():
    """torch.fx patched Module.__call__ process-wide, so a forward pass in another thread during
    tracing failed; hooks sit on the folded model's own modules only."""
    torch.manual_seed(1)
    busy = randomised(build_model("Unet", "mobilenet_v2", 14))
    x = torch.randn(1, 14, 64, 64)
    with torch.no_grad():
        want = busy(x)
    errors, stop = [], threading.Event()

    def forward_loop():
        try:
            while not stop.is_set():
                with torch.no_grad():
                    torch.testing.assert_close(busy(x), want)
        except BaseException as exc:  # surfaced in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=forward_loop)
    worker.start()
    try:
        for seed in range(3):
            torch.manual_seed(seed)
            assert fold_batchnorm(randomised(build_model("Unet", "resnet34", 14)), torch.zeros(1, 14, 64, 64)) == 46
    finally:
        stop.set()
        worker.join()
    assert not errors, errors


def test_training_mode_model_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("Unet", "mobilenet_v2", 14).train(), torch.zeros(1, 14, 64, 64))
