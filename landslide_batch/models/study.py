"""The reference study's 13 published checkpoints -> model folders, loaded strictly.

Source: github.com/HarshShinde0/Deepslide, ``src/*_model.py`` (architectures) and
``src/model_downloader.py`` (files on the Hugging Face repository ``harshinde/Sims``).
Each file is the state dict of a PyTorch Lightning ``LandslideModel`` whose ``model``
attribute is the network: for a bare smp model it is a small wrapper module whose own
``model`` is the smp network (keys ``model.model.*``); for MiT-B1 the wrapper also holds a
1x1 ``conv`` (``model.conv.*``); for SegFormer ``model`` is Hugging Face's SegFormer.
Inputs are the 14 raw bands, unnormalised, with NaN set to 1e-6; one sigmoid output,
threshold 0.5. The study's app loads them with ``strict=False``, which silently keeps
random weights for anything that does not match; here a mismatch is an error.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..bands import L4S_BANDS
from ..download import download, file_digest
from ..errors import ModelError
from .card import ModelCard, Normalization, save_model_folder
from .registry import build_model

#: Where the study's app downloads its checkpoints from.
STUDY_BASE_URL = "https://huggingface.co/harshinde/Sims/resolve/main/models/"
STUDY_REPO = "https://github.com/HarshShinde0/Deepslide"
#: NaN inputs become this raw value in the study's app (``data[np.isnan(data)] = 0.000001``).
STUDY_NAN_FILL = 1e-6
STUDY_THRESHOLD = 0.5
#: Entries of the Lightning module's state dict that only training uses (the weighted BCE's weight).
TRAINING_ONLY_KEYS = frozenset({"wce.weight"})


@dataclass(frozen=True)
class StudyModel:
    name: str  # the study's model name, as its files are named
    file: str  # file name in the Hugging Face repository
    arch: str  # registry architecture
    encoder: str | None
    prefix: str  # what precedes the network's own keys in the Lightning state dict

    @property
    def folder(self) -> str:
        return f"study_{self.name}"


def _unet(name: str, encoder: str, file: str | None = None) -> StudyModel:
    return StudyModel(name, file or f"{name}.pth", "Unet", encoder, "model.model.")


STUDY_MODELS: dict[str, StudyModel] = {
    m.name: m
    for m in (
        StudyModel("deeplabv3", "deeplabv3.pth", "DeepLabV3Plus", "resnet50", "model.model."),
        _unet("densenet121", "densenet121"),
        _unet("efficientnetb0", "efficientnet-b0"),
        _unet("inceptionresnetv2", "inceptionresnetv2"),
        _unet("inceptionv4", "inceptionv4"),
        StudyModel("mitb1", "mitb1.pth", "ConvStemUnet", "mit_b1", "model."),
        _unet("mobilenetv2", "mobilenet_v2"),
        _unet("resnet34", "resnet34"),
        _unet("resnext50-32x4d", "resnext50_32x4d"),
        _unet("se_resnet50", "se_resnet50"),
        _unet("se_resnext50_32x4d", "se_resnext50_32x4d"),
        StudyModel("segformer", "segformer.pth", "SegformerB2", None, ""),
        _unet("vgg16", "vgg16"),
    )
}


def study_model(name: str) -> StudyModel:
    if name not in STUDY_MODELS:
        raise ModelError(f"unknown study model {name!r}; the study published {sorted(STUDY_MODELS)}")
    return STUDY_MODELS[name]


def network_state(checkpoint: dict, spec: StudyModel, source: str) -> tuple[dict, list[str], list[str]]:
    """The Lightning state dict (bare, or under ``state_dict`` as Lightning's own checkpoints hold
    it) -> (the network's state dict, dropped training-only keys, keys outside the network)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{source}: not a state dict (found {type(checkpoint).__name__})")
    net, dropped, outside = {}, [], []
    for key, value in state.items():
        if key in TRAINING_ONLY_KEYS:
            dropped.append(key)
        elif key.startswith(spec.prefix):
            net[key.removeprefix(spec.prefix)] = value
        else:
            outside.append(key)
    return net, dropped, outside


def load_strict(model, state: dict, spec: StudyModel, source: str, outside: Sequence[str] = ()) -> None:
    """Fill ``model`` from ``state``; ModelError listing missing, unexpected and misshapen keys
    (named as the checkpoint names them)."""
    own = model.state_dict()
    missing = sorted(spec.prefix + k for k in set(own) - set(state))
    unexpected = sorted([spec.prefix + k for k in set(state) - set(own)] + list(outside))
    shapes = sorted(
        f"{spec.prefix}{k} {tuple(state[k].shape)} (network: {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{len(keys)} {what}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if keys
        ]
        raise ModelError(
            f"{source}: does not fit the study's {spec.name} ({spec.arch}/{spec.encoder}, "
            f"{len(L4S_BANDS)} bands); keys " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def _read_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ModelError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def import_checkpoint(
    name: str, path: Path, out: str | Path, *, source: str | None = None, overwrite: bool = False
) -> ModelCard:
    """A study checkpoint file -> model folder ``out`` (raw 14-band inputs, NaN -> 1e-6, threshold 0.5)."""
    spec = study_model(name)
    path = Path(path)
    state, dropped, outside = network_state(_read_checkpoint(path), spec, str(path))
    model = build_model(spec.arch, spec.encoder, len(L4S_BANDS))
    load_strict(model, state, spec, str(path), outside)
    card = ModelCard(
        name=spec.folder,
        arch=spec.arch,
        encoder=spec.encoder,
        features=list(L4S_BANDS),
        in_channels=len(L4S_BANDS),
        normalization=Normalization.identity(len(L4S_BANDS)),
        threshold=STUDY_THRESHOLD,
        nan_fill=STUDY_NAN_FILL,
        trained=True,
        input_units="l4s",  # trained on the Landslide4Sense patches as released, fed raw
        source={
            "study": STUDY_REPO,
            "model": spec.name,
            "url": source or str(path.resolve()),
            "sha256": file_digest(path, "sha256"),
        },
        training={"imported": True, "dropped_keys": dropped},
        notes=f"the study's published {spec.name} checkpoint, imported strictly; raw band values in, "
        "NaN -> 1e-6, threshold 0.5",
    )
    return save_model_folder(model.eval(), card, out, overwrite=overwrite)


def import_model(
    name: str,
    location: str,
    out: str | Path,
    *,
    sha256: str | None = None,
    cache: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ModelCard:
    """``location`` is a local file or an http(s) URL (downloaded, resumable, into ``cache``)."""
    if "://" not in location:
        path = Path(location)
        if not path.is_file():
            raise ModelError(f"checkpoint {path} does not exist")
        if sha256 and (got := file_digest(path, "sha256")) != sha256.lower():
            raise ModelError(f"{path}: sha256 {got} does not match the expected {sha256}")
        return import_checkpoint(name, path, out, overwrite=overwrite)
    spec = study_model(name)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(cache or tmp) / spec.file
        download(location, target, checksums={"sha256": sha256} if sha256 else None, progress=progress)
        return import_checkpoint(name, target, out, source=location, overwrite=overwrite)


def study_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + study_model(name).file


def ensemble_yaml(names: list[str], threshold: float = STUDY_THRESHOLD) -> str:
    lines = [
        "# The reference study's published models, imported with `landslide-batch import-model --all`.",
        "# Paths are relative to this file; equal weights, the study's threshold.",
        "members:",
    ]
    lines += [f"  - {{model: {STUDY_MODELS[n].folder}, weight: 1.0}}" for n in names]
    return "\n".join(lines + [f"threshold: {threshold}", ""])
