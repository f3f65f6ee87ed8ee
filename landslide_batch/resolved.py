"""One job's inputs, resolved once: its settings, ensemble, model files, device and identity.

``checks.preflight.resolve_job`` builds a :class:`ResolvedJob` at the start of a scene job or a
region job (the ensemble file parsed, each card and weights file read and verified once); every
later step takes it as an argument. A region hands its own to each scene's job, so that no scene
parses the ensemble again or reads a card or a weights file (models on object storage would
otherwise be downloaded once per scene).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from .config import EnsembleConfig, JobConfig
from .infer.device import PRECISION
from .infer.stages import PredictorSpec
from .models.card import ModelCard, ModelFiles

#: The settings that change a map (besides the models, device and TTA): :func:`map_identity`.
MAP_SETTINGS = {"tile", "overlap", "blend", "block", "threshold", "min_area_m2", "min_pixels", "nodata", "inputs"}


@dataclass(frozen=True)
class ResolvedJob:
    """A job as resolved before any scene is read.

    ``cfg``: the job's settings with ``inputs.units`` resolved from the cards; ``members``: its
    ensemble; ``files``: each member's card, weights and weights hash, read and verified once;
    ``device``: the device type that computes the map (``cpu`` / ``cuda``), or ``auto`` until the
    executor's session says which (:meth:`on_device`)."""

    cfg: JobConfig
    members: EnsembleConfig
    files: tuple[ModelFiles, ...]
    device: str

    @property
    def cards(self) -> list[ModelCard]:
        return [f.card for f in self.files]

    @property
    def model_shas(self) -> list[str]:
        return [f.sha256 for f in self.files]

    @property
    def precision(self) -> str:
        return PRECISION.get(self.device, "the device's")

    def on_device(self, device: str) -> ResolvedJob:
        """This job once its device type is known (Ray's ``auto`` is answered by the cluster)."""
        return replace(self, device=device)

    def with_config(self, cfg: JobConfig) -> ResolvedJob:
        """This job's models and device for other settings of the same ensemble (a region's scene)."""
        return replace(self, cfg=cfg)

    def identity(self) -> dict:
        """See :func:`map_identity`."""
        return map_identity(self.cfg, self.members, self.model_shas, self.device)

    def threshold(self) -> float:
        """The job's threshold, else the one its members' cards decide on together."""
        cfg = self.cfg
        return (
            cfg.threshold
            if cfg.threshold is not None
            else self.members.decision_threshold([c.threshold for c in self.cards])
        )

    def predictor_spec(self) -> PredictorSpec:
        """What builds the job's ensemble predictor, holding the files read once."""
        cfg = self.cfg
        return PredictorSpec(
            self.members,
            cfg.tile,
            cfg.stride,
            cfg.blend,
            cfg.batch_size,
            cfg.device,
            cfg.threads,
            model_files=self.files,
            tta=cfg.tta,
        )

    def model_records(self) -> list[dict]:
        """run.json's ``models``: each member's folder, card (name, architecture, features, whether
        trained, threshold), weight and weights hash; scene and region jobs record them alike."""
        return [
            {
                "path": str(m.model),
                "name": c.name,
                "arch": c.arch,
                "encoder": c.encoder,
                "features": c.features,
                "weight": m.weight,
                "trained": c.trained,
                "threshold": c.threshold,
                "sha256": sha,
            }
            for m, c, sha in zip(self.members.members, self.cards, self.model_shas)
        ]


def map_identity(cfg: JobConfig, members: EnsembleConfig, model_shas: list[str], device: str) -> dict:
    """What makes two maps of the same input the same map: the models, the device type (``cpu`` /
    ``cuda``) with its arithmetic, and every setting that changes the map. Scene jobs and region
    jobs both hash it (``scene_job.job_hash``, ``region.job.region_hash``)."""
    return {
        "models": model_shas,
        "weights": [m.weight for m in members.members],
        "device": device,
        "precision": PRECISION.get(device, "the device's"),
        **cfg.model_dump(mode="json", include=MAP_SETTINGS),
        **({"tta": True} if cfg.tta else {}),  # only when set: earlier jobs keep their hashes
    }


def identity_hash(key: dict) -> str:
    """The short hash a job's identity is known by (``run.json``'s ``job_hash``)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
