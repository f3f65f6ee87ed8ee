"""Importing the reference study's published checkpoints: the study's exact state-dict layout, strict
loading, identical predictions, and downloads from a loopback HTTP server (progress, checksum, resume)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from loopback_http import serve
from torch import nn

from landslide_batch.cli import main
from landslide_batch.config import EnsembleConfig, EnsembleMember, load_ensemble
from landslide_batch.download import download, partial_path
from landslide_batch.errors import DownloadError, ModelError
from landslide_batch.infer.predictor import EnsemblePredictor
from landslide_batch.models._torchvision_compat import ensure_torchvision
from landslide_batch.models.card import load_model_folder, read_card
from landslide_batch.models.registry import build_model
from landslide_batch.models.study import STUDY_MODELS, import_checkpoint
from landslide_batch.synthetic import synthetic_scene


class _SmpWrapper(nn.Module):
    """The study's ``smp_model_*`` modules: the smp network under ``.model``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.model = net


class _StemWrapper(nn.Module):
    """The study's ``smp_model_mitb1``: a 1x1 ``conv`` (14 -> 3) and the smp U-Net under ``.model``."""

    def __init__(self, conv: nn.Conv2d, net: nn.Module):
        super().__init__()
        self.conv, self.model = conv, net


class LandslideModel(nn.Module):
    """What the study's Lightning ``LandslideModel`` persists: ``model`` and the weighted BCE's
    ``wce.weight`` (torchmetrics states are not persistent)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.model = inner
        self.wce = nn.BCELoss(weight=torch.tensor([5.0]))


def lightning_state(net: nn.Module) -> dict:
    """The state dict of the study's checkpoint file for a bare smp network ``net``."""
    return LandslideModel(_SmpWrapper(net)).state_dict()


def _reference(name: str, seed: int) -> tuple[nn.Module, nn.Module]:
    """(the study's Lightning module, a forward function over raw values built independently with smp)."""
    ensure_torchvision()
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    spec = STUDY_MODELS[name]
    if name == "mitb1":
        conv = nn.Conv2d(14, 3, kernel_size=1)
        net = smp.Unet(encoder_name="mit_b1", encoder_weights=None, in_channels=3, classes=1)
        inner, forward = _StemWrapper(conv, net), nn.Sequential(conv, net)
    else:
        net = getattr(smp, spec.arch)(encoder_name=spec.encoder, encoder_weights=None, in_channels=14, classes=1)
        inner, forward = _SmpWrapper(net), net
    head = net.segmentation_head[0]
    forward.eval()
    with torch.no_grad():  # logits of std 2 around 0 on the test patch: a map that varies, unsaturated
        y = forward(torch.from_numpy(np.nan_to_num(_raw_patch(), nan=1e-6))[None])
        gain = 2.0 / float(y.std())
        head.weight.mul_(gain)
        head.bias.mul_(gain).sub_(float(y.mean()) * gain)
    return LandslideModel(inner).eval(), forward


def _raw_patch(seed: int = 4) -> np.ndarray:
    bands, _ = synthetic_scene(128, 128, seed=seed)
    bands[12] /= 30.0  # slope and DEM at magnitudes like the released patches' other bands
    bands[13] /= 1000.0
    bands[:, 5:9, 40:43] = np.nan  # the study sets NaN to 1e-6
    return bands


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Study-layout checkpoints of three architectures + their independent reference networks."""
    root = tmp_path_factory.mktemp("study")
    made = {}
    for seed, name in enumerate(("resnet34", "mitb1", "deeplabv3")):
        lightning, forward = _reference(name, seed)
        path = root / STUDY_MODELS[name].file
        torch.save(lightning.state_dict(), path)
        made[name] = (path, forward)
    return made


@pytest.mark.parametrize("name", ["resnet34", "mitb1", "deeplabv3"])
def test_import_predicts_like_the_study_network_on_raw_values(checkpoints, tmp_path, name):
    path, forward = checkpoints[name]
    assert "wce.weight" in torch.load(path, weights_only=True)  # the study's layout, training-only key included
    card = import_checkpoint(name, path, tmp_path / name)
    assert card.normalization.mean == [0.0] * 14 and card.normalization.std == [1.0] * 14
    assert (card.threshold, card.nan_fill, card.trained, card.input_units) == (0.5, 1e-6, True, "l4s")
    assert card.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.training["dropped_keys"] == ["wce.weight"]

    bands = _raw_patch()
    x = torch.from_numpy(np.nan_to_num(bands, nan=1e-6))[None]
    with torch.no_grad():
        want = torch.sigmoid(forward(x))[0, 0].numpy()
    assert want.std() >= 0.05
    model, _ = load_model_folder(tmp_path / name)
    with torch.no_grad():
        got = torch.sigmoid(model(x))[0, 0].numpy()
    assert np.abs(got - want).max() <= 1e-6
    # The predictor run, evaluate and the app use: the same map up to float reordering (BatchNorm
    # folded into convolutions, channels_last), which moves logits by ~1e-5 relative.
    predictor = EnsemblePredictor(
        EnsembleConfig(members=[EnsembleMember(model=tmp_path / name)]),
        tile=128,
        stride=128,
        blend="mean",
        device="cpu",
    )
    prob, _ = predictor.predict_window(bands, np.isfinite(bands).all(0))
    assert np.abs(prob - want).max() <= 5e-5


def test_missing_and_unexpected_keys_are_refused_by_name(checkpoints, tmp_path):
    path, _ = checkpoints["resnet34"]
    state = torch.load(path, weights_only=True)
    gone = "model.model.decoder.blocks.0.conv1.0.weight"
    del state[gone]
    state["model.model.extra.bias"] = torch.zeros(1)
    bad = tmp_path / "resnet34.pth"
    torch.save(state, bad)
    with pytest.raises(
        ModelError,
        match=r"1 missing: model\.model\.decoder\.blocks\.0\.conv1\.0\.weight.*"
        r"1 unexpected: model\.model\.extra\.bias",
    ):
        import_checkpoint("resnet34", bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The right file under the wrong name: every key is named as not fitting.
    with pytest.raises(ModelError, match="does not fit the study's vgg16"):
        import_checkpoint("vgg16", path, tmp_path / "out")


def test_lightning_checkpoint_layout_imports_too(checkpoints, tmp_path):
    path, _ = checkpoints["resnet34"]
    wrapped = tmp_path / "resnet34.ckpt"
    torch.save({"epoch": 99, "state_dict": torch.load(path, weights_only=True)}, wrapped)
    import_checkpoint("resnet34", wrapped, tmp_path / "m")
    a, _ = load_model_folder(tmp_path / "m")
    ref = build_model("Unet", "resnet34", 14)
    ref.load_state_dict(
        {
            k.removeprefix("model.model."): v
            for k, v in torch.load(path, weights_only=True).items()
            if k.startswith("model.model.")
        }
    )
    assert all(torch.equal(a.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_import_from_url_shows_progress_verifies_and_resumes(checkpoints, tmp_path, capsys):
    path, _ = checkpoints["resnet34"]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with serve(path.parent) as (base, state):
        state.drop_once.add("/resnet34.pth")
        url = f"{base}/resnet34.pth"
        assert main(["import-model", "resnet34", url, "--out", str(tmp_path / "m"), "--sha256", sha]) == 0
        err = capsys.readouterr().err
        assert "resnet34.pth" in err and "100%" in err  # tqdm's bar on stderr
        assert [(p, s) for p, _, s in state.requests] == [("/resnet34.pth", 200), ("/resnet34.pth", 206)]
        assert state.requests[1][1] == f"bytes={path.stat().st_size // 2}-"  # resumed where the drop cut it
        assert read_card(tmp_path / "m").source == {
            "study": "https://github.com/HarshShinde0/Deepslide",
            "model": "resnet34",
            "url": url,
            "sha256": sha,
        }

        cache = tmp_path / "cache"
        code = main(
            [
                "import-model",
                "resnet34",
                url,
                "--out",
                str(tmp_path / "bad"),
                "--sha256",
                "0" * 64,
                "--cache",
                str(cache),
            ]
        )
        assert code == 2 and "checksum mismatch" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists() and list(cache.iterdir()) == []  # nothing half-written

        assert main(["import-model", "resnet34", f"{base}/nope.pth", "--out", str(tmp_path / "x")]) == 2
        assert "HTTP 404" in capsys.readouterr().err


def test_interrupted_download_resumes_on_the_next_call(tmp_path):
    (tmp_path / "srv").mkdir()
    blob = np.random.default_rng(0).bytes(3_000_000)
    (tmp_path / "srv" / "blob.bin").write_bytes(blob)
    dest = tmp_path / "dl" / "blob.bin"
    with serve(tmp_path / "srv") as (base, state):
        state.drop_once.add("/blob.bin")
        with pytest.raises(DownloadError, match="interrupted.*run again to resume"):
            download(f"{base}/blob.bin", dest, retries=0, progress=False)
        assert not dest.exists() and partial_path(dest).stat().st_size == len(blob) // 2
        download(f"{base}/blob.bin", dest, checksums={"md5": hashlib.md5(blob).hexdigest()}, progress=False)
        assert state.requests[-1][1:] == (f"bytes={len(blob) // 2}-", 206)
    assert dest.read_bytes() == blob and not partial_path(dest).exists()


def test_offline_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot reach .*offline"):
        download(f"http://127.0.0.1:{port}/resnet34.pth", tmp_path / "r.pth", progress=False)


def test_import_all_writes_folders_and_an_ensemble(checkpoints, tmp_path, capsys):
    skip = [n for n in STUDY_MODELS if n not in ("resnet34", "mitb1")]
    with serve(checkpoints["resnet34"][0].parent) as (base, _):
        args = ["import-model", "--all", "--base-url", base, "--out", str(tmp_path / "zoo")]
        assert main(args + sum((["--skip", n] for n in skip), [])) == 0
        if "segformer" in skip:  # transformers absent: --all without --skip segformer says so before downloading
            import importlib.util

            if importlib.util.find_spec("transformers") is None:
                assert main(args) == 2
                assert "--skip segformer" in capsys.readouterr().err
    ens = load_ensemble(tmp_path / "zoo" / "ensemble.yaml")
    assert [m.model.name for m in ens.members] == ["study_mitb1", "study_resnet34"]
    assert ens.threshold == 0.5
    assert all(read_card(m.model).source["model"] in ("resnet34", "mitb1") for m in ens.members)
