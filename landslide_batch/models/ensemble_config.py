"""An ensemble's members (model folders with weights) and its decision threshold: the schema of an
ensemble YAML. Light (no torch), so that the job config can hold one and the ensemble be built
from one without the model layer knowing the job config."""

from __future__ import annotations

from pydantic import Field

from ..schema import PathOrUri, StrictModel


class EnsembleMember(StrictModel):
    model: PathOrUri
    #: Finite: an infinite weight makes every probability inf / inf = NaN (a map of nodata).
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)


class EnsembleConfig(StrictModel):
    members: list[EnsembleMember] = Field(min_length=1)
    #: Probability threshold for the binary mask; default: members' card thresholds, weighted.
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    def decision_threshold(self, member_thresholds: list[float]) -> float:
        """``threshold``, else the members' (tuned) thresholds, weighted like their probabilities."""
        if self.threshold is not None:
            return self.threshold
        weights = [m.weight for m in self.members]
        return sum(w * t for w, t in zip(weights, member_thresholds)) / sum(weights)
