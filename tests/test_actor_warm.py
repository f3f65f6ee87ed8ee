"""A predictor actor loads its models when the pool starts it (``warm``), beside the driver's
ingest, not with its first block; a failure there comes back with the first block instead."""

from __future__ import annotations

import pytest
import torch

from landslide_batch.config import EnsembleConfig
from landslide_batch.errors import DeviceError
from landslide_batch.infer.actor_pool import PredictBlockActor
from landslide_batch.infer.stages import PredictorSpec


def spec(model, device: str) -> PredictorSpec:
    return PredictorSpec(EnsembleConfig(members=[{"model": str(model)}]), 128, 64, "gaussian", 4, device, 1)


def test_warm_loads_the_models_once_and_blocks_use_them(tiny_model):
    actor = PredictBlockActor(spec(tiny_model, "cpu"))
    assert actor.predictor is None and actor.models_loaded == 0
    actor.warm()
    loaded = actor.predictor
    assert loaded is not None and actor.models_loaded == 1
    assert actor._predictor() is loaded and actor.models_loaded == 1  # what each block then takes


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_a_warm_failure_is_raised_with_the_first_block(tiny_model):
    actor = PredictBlockActor(spec(tiny_model, "cuda"))
    actor.warm()  # no error here: nothing would receive it
    assert actor.predictor is None and isinstance(actor.failed, DeviceError)
    with pytest.raises(DeviceError, match="device cuda was asked for"):
        actor.predict({}, {}, "scene", None, None)  # type: ignore[arg-type]
