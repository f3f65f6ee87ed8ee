"""The B10 rule: what fills layer B10 (cirrus) when the inputs lack it, as every L2A product does.

``inputs.b10: model_mean`` fills it with the models' training mean of B10. Ingest reads no model
card: the caller (the pipeline, which holds the cards) passes each model's mean as a
:class:`ModelB10` and ingest combines them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..errors import InputError
from .inputs import SceneInputs


class ModelB10(NamedTuple):
    """One ensemble member's training mean of B10 (its card's normalisation) and its weight."""

    model: str
    mean: float
    weight: float


def model_mean_fill(means: Sequence[ModelB10]) -> tuple[float, str, list[str]]:
    """Weighted mean of the members' B10 means -> (fill value, the rule as recorded, warnings).
    No member using B10 (``means`` empty): zero-filled."""
    if not means:
        return 0.0, "zero-filled (inputs.b10 = 'model_mean', but no model of the job uses B10)", []
    value = sum(m.mean * m.weight for m in means) / sum(m.weight for m in means)
    values = [m.mean for m in means]
    notes = []
    if max(values) - min(values) > 1e-6 * max(1.0, abs(value)):
        notes.append(
            f"B10 training means differ between models ({ {m.model: m.mean for m in means} }); "
            f"B10 is filled with their weighted mean {value:.6g}"
        )
    return value, f"filled with {value:.6g}, the models' B10 training mean (inputs.b10 = 'model_mean')", notes


def resolve_model_mean(
    inputs: SceneInputs, means: Sequence[ModelB10] | None
) -> tuple[SceneInputs, str | None, list[str]]:
    """``inputs.b10: model_mean`` with the models' ``means`` -> ``constant`` with their mean;
    -> (inputs, the rule as recorded or None, warnings). Anything else passes unchanged (without
    ``means``, :func:`b10_fill` refuses ``model_mean`` if B10 turns out to be missing)."""
    if inputs.b10 != "model_mean" or means is None:
        return inputs, None, []
    value, rule, notes = model_mean_fill(means)
    return inputs.model_copy(update={"b10": "constant", "b10_value": value}), rule, notes


def b10_fill(inputs: SceneInputs, rule: str | None) -> tuple[float, str]:
    """The B10 fill value and the rule as recorded (``rule`` when the caller resolved it)."""
    if inputs.b10 == "error":
        raise InputError(
            "layer B10 (cirrus) is missing from the inputs (Sentinel-2 L2A products do not carry it) "
            "and inputs.b10 is 'error'; map B10 to a file in inputs.bands (e.g. from the L1C product) "
            "or choose another B10 rule (zero, constant, model_mean)"
        )
    if inputs.b10 == "model_mean":
        raise InputError(
            "inputs.b10 'model_mean' needs the B10 training means of the job's models, which a job passes "
            "to ingest (ingest_job(..., b10_means=...)); for a plain ingest choose another B10 rule (zero, constant)"
        )
    value = 0.0 if inputs.b10 == "zero" else float(inputs.b10_value)
    return value, rule or (
        "zero-filled (inputs.b10 = 'zero')"
        if inputs.b10 == "zero"
        else f"filled with {value:g} (inputs.b10 = 'constant')"
    )
