"""An ensemble of model folders, loaded once, with weights and a decision threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from ..storage import path_or_uri
from .card import ModelCard, ModelFiles, load_model_folder
from .ensemble_config import EnsembleConfig


@dataclass
class Member:
    path: Path | str
    weight: float
    card: ModelCard
    model: torch.nn.Module
    mean: torch.Tensor  # (F, 1, 1) on the device
    std: torch.Tensor


class Ensemble:
    """``files``: the members' model files already read (by the driver, shipped through Ray's
    object store), in member order; None: each member's folder is read here."""

    def __init__(
        self,
        cfg: EnsembleConfig,
        device: str,
        files: tuple[ModelFiles, ...] | None = None,
    ):
        self.device = torch.device(device)
        self.members: list[Member] = []
        for i, m in enumerate(cfg.members):
            model, card = load_model_folder(files[i] if files else m.model, device=str(self.device))
            norm = card.normalization
            self.members.append(
                Member(
                    path_or_uri(m.model),
                    m.weight,
                    card,
                    model,
                    torch.tensor(norm.mean, dtype=torch.float32, device=self.device)[:, None, None],
                    torch.tensor(norm.std, dtype=torch.float32, device=self.device)[:, None, None],
                )
            )
        if not self.members:
            raise ModelError("the ensemble has no members")
        self.threshold = cfg.decision_threshold([m.card.threshold for m in self.members])


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but torch sees no CUDA GPU")
    return device
