"""Model folders: ``weights.pt`` (a state dict) + ``card.json`` (everything needed to use it).

The card is the contract between training and inference: architecture, encoder, the input
features and their normalisation statistics, the decision threshold, validation metrics,
and hashes. Loading checks the weights' hash and that the weights fit the architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..bands import resolve_features
from ..errors import ModelError
from ..hashing import sha256_file
from ..storage import location, storage_errors
from .registry import build_model

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pt"
#: What a model's input values are: a known convention, ``raw`` (used as read) or ``unknown``.
InputUnits = Literal["l4s", "reflectance", "dn", "raw", "unknown"]


class Normalization(BaseModel):
    """Per-feature statistics: the model sees ``(x - mean) / std``."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        bad = [i for i, pair in enumerate(zip(self.mean, self.std)) if not all(map(math.isfinite, pair))]
        if bad:  # a NaN mean turns its feature into the fill value everywhere: a map without a word
            raise ValueError(
                "mean and std must be finite numbers; NaN or infinity for the feature(s) at position "
                + ", ".join(f"{i} (mean {self.mean[i]}, std {self.std[i]})" for i in bad)
            )
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be > 0 for every feature, found {self.std}")
        return self

    @classmethod
    def identity(cls, n: int) -> Normalization:
        return cls(mean=[0.0] * n, std=[1.0] * n)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    name: str
    arch: str
    encoder: str | None
    features: list[str]
    in_channels: int
    normalization: Normalization
    threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    #: Value a NaN input takes after normalisation. 0 (the feature's mean) for this project's
    #: training; the study's imported models saw raw values with NaN set to 1e-6.
    nan_fill: float = Field(0.0, allow_inf_nan=False)
    #: Units of the layers the model was trained on (``ingest/units.py``): ``reflectance`` (0..1,
    #: slope in degrees, DEM in metres), ``dn`` (reflectance x 10000), ``l4s`` (as the L4S .h5
    #: patches), ``raw`` (no known convention), ``unknown``. A card without it (older cards) gets
    #: the convention its training statistics fit, else ``unknown``.
    input_units: InputUnits | None = None
    trained: bool
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    data_hashes: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str = ""
    #: Where imported weights came from: url (or path), sha256 of the file as downloaded, ...
    source: dict[str, str] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        resolve_features(self.features)
        n = len(self.features)
        if self.in_channels != n or len(self.normalization.mean) != n:
            raise ValueError(
                f"features ({n}), in_channels ({self.in_channels}) and normalisation "
                f"({len(self.normalization.mean)} values) must agree"
            )
        if self.input_units is None:
            self.input_units = self._units_from_statistics()
        return self

    @property
    def has_statistics(self) -> bool:
        """Whether the normalisation holds training statistics (not the identity of an untrained card)."""
        norm = self.normalization
        return self.trained and norm != Normalization.identity(len(norm.mean))

    def _units_from_statistics(self) -> InputUnits:
        from ..ingest.units import guess_units

        guess = guess_units(self.features, self.normalization.mean) if self.has_statistics else None
        return guess or "unknown"


def read_card(folder: str | Path) -> ModelCard:
    """The card of a model folder (a local path or a URI)."""
    path = location(folder) / CARD_FILE
    with storage_errors(location(folder), "model"):
        found = path.is_file()
        text = path.read_text() if found else ""
    if not found:
        raise ModelError(f"{folder}: not a model folder (expected {CARD_FILE} and {WEIGHTS_FILE})")
    try:
        return ModelCard.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: model card is not valid JSON ({exc})") from None
    except ValidationError as exc:  # one line per field, without pydantic's input dump and links
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ModelError(f"{path}: model card is invalid:\n" + "\n".join(lines)) from None


def save_model_folder(model, card: ModelCard, out: str | Path, overwrite: bool = False) -> ModelCard:
    """Write weights + card to ``out`` atomically (a temporary folder renamed into place)."""
    import torch

    out = Path(out)
    if out.exists() and not overwrite:
        raise ModelError(f"{out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
        card = card.model_copy(update={"weights_sha256": sha256_file(tmp / WEIGHTS_FILE)})
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


@dataclass(frozen=True)
class ModelFiles:
    """A model folder's card and weights as read (and verified) once, e.g. by the driver: what
    travels to Ray actors through the object store, so that they read no model path."""

    folder: str
    card: ModelCard
    weights: bytes
    sha256: str  # of ``weights``: the model's identity in a job's hash, so nothing hashes the file again


def read_model_files(folder: str | Path) -> ModelFiles:
    """Read a model folder (a local path or a URI); the weights' hash must match the card's."""
    card = read_card(folder)
    weights = location(folder) / WEIGHTS_FILE
    with storage_errors(location(folder), "model"):
        found = weights.is_file()
        data = weights.read_bytes() if found else b""
    if not found:
        raise ModelError(f"{folder}: missing {WEIGHTS_FILE}")
    digest = hashlib.sha256(data).hexdigest()
    if card.weights_sha256 and digest != card.weights_sha256:
        raise ModelError(
            f"{weights}: sha256 {digest[:12]}… does not match the card's {card.weights_sha256[:12]}…; "
            "the weights were changed or truncated"
        )
    return ModelFiles(str(folder), card, data, digest)


def load_model_folder(folder: str | Path | ModelFiles, device: str = "cpu"):
    """-> (eval-mode torch module on ``device``, card), from a folder (path or URI) or from
    :class:`ModelFiles` already read. Raises ModelError with specifics."""
    import io

    import torch

    files = folder if isinstance(folder, ModelFiles) else read_model_files(folder)
    card, weights = files.card, location(files.folder) / WEIGHTS_FILE
    try:
        state = torch.load(io.BytesIO(files.weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt pickles/zips
        raise ModelError(f"{weights}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    # Built on the meta device and filled with the checkpoint's own tensors: no random
    # initialisation to throw away (a fifth of the load time of a ResNet34 U-Net). Encoders
    # that compute with tensors while being built (MiT reads drop-path rates) build on the CPU.
    try:
        with torch.device("meta"):
            model = build_model(card.arch, card.encoder, card.in_channels)
    except (RuntimeError, NotImplementedError):
        model = build_model(card.arch, card.encoder, card.in_channels)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        first = next((k for k, v in state.items() if getattr(v, "ndim", 0) == 4), None)
        found = f"; its first conv expects {state[first].shape[1]} input channels" if first else ""
        raise ModelError(
            f"{weights}: weights do not fit {card.arch}/{card.encoder} with {card.in_channels} "
            f"input channels as the card says{found}.\n{str(exc).splitlines()[0]}"
        ) from None
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # tensors no checkpoint holds (non-persistent buffers): an architecture we cannot load this way
        raise ModelError(f"{weights}: {card.arch}/{card.encoder} has tensors outside its checkpoint: {left[:3]}")
    return model.to(device).eval(), card


def init_model_folder(
    arch: str,
    encoder: str | None,
    out: str | Path,
    seed: int = 0,
    features: str | list[str] | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """An *untrained* model folder (random weights from ``seed``) for smoke tests and benchmarks."""
    import torch

    from .registry import spec_for

    spec = spec_for(arch, encoder)
    feats = list(resolve_features(features if features is not None else spec.features))
    torch.manual_seed(seed)
    model = build_model(spec.arch, encoder, len(feats))
    name = f"{spec.arch.lower()}_{encoder or 'plain'}".replace("-", "_")
    card = ModelCard(
        name=name,
        arch=spec.arch,
        encoder=encoder,
        features=feats,
        in_channels=len(feats),
        normalization=Normalization.identity(len(feats)),
        trained=False,
        training={"seed": seed},
        notes="UNTRAINED: random weights, for smoke tests and benchmarks only",
    )
    return save_model_folder(model, card, out, overwrite=overwrite)
