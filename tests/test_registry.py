import pytest
import torch

from landslide_batch.errors import ConfigError, ModelError
from landslide_batch.models.card import init_model_folder, load_model_folder, read_card
from landslide_batch.models.registry import MODEL_ZOO, build_zoo_model

REFERENCE_ZOO = {
    "unet_resnet34",
    "unet_vgg16",
    "unet_efficientnet_b0",
    "unet_resnext50_32x4d",
    "unet_se_resnet50",
    "unet_densenet121",
    "unet_se_resnext50_32x4d",
    "unet_inceptionv4",
    "unet_inceptionresnetv2",
    "unet_mobilenet_v2",
    "unet_mit_b1",
    "deeplabv3plus_resnet50",
    "unet_plain",
}


def test_registry_holds_the_reference_zoo():
    assert set(MODEL_ZOO) == REFERENCE_ZOO
    assert MODEL_ZOO["unet_plain"].features == "rgb_ndvi_slope_dem"


@pytest.mark.parametrize("name", sorted(REFERENCE_ZOO))
def test_every_zoo_model_builds_and_predicts_a_tile(name):
    torch.manual_seed(0)
    model, spec, features = build_zoo_model(name)
    model.eval()
    x = torch.randn(1, len(features), 128, 128)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 1, 128, 128)
    assert torch.isfinite(y).all()


def test_unknown_model_names_fail_clearly():
    with pytest.raises(ConfigError, match="unknown model"):
        build_zoo_model("unet_resnet9000")


def test_model_folder_round_trip_and_checks(tmp_path):
    card = init_model_folder("Unet", "mobilenet_v2", tmp_path / "m", seed=3)
    assert card.trained is False and "UNTRAINED" in card.notes and len(card.weights_sha256) == 64
    model, loaded = load_model_folder(tmp_path / "m")
    assert loaded == read_card(tmp_path / "m")
    # Same seed, same weights.
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m2", seed=3)
    assert read_card(tmp_path / "m2").weights_sha256 == card.weights_sha256


@pytest.mark.parametrize("name", ["unet_resnet34", "unet_mit_b1", "unet_plain"])  # mit_b1: built on the CPU
def test_loaded_model_computes_what_the_saved_one_did(tmp_path, name):
    """Loading builds on the meta device and takes the checkpoint's tensors: same outputs,
    nothing left on meta, and trainable parameters (training resumes from model folders)."""
    spec = MODEL_ZOO[name]
    torch.manual_seed(5)
    saved, _, features = build_zoo_model(name)
    init_model_folder(spec.arch, spec.encoder, tmp_path / "m", seed=5, features=spec.features)
    model, _ = load_model_folder(tmp_path / "m")
    x = torch.randn(2, len(features), 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), saved.eval()(x))
    assert all(p.requires_grad and not p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())


def test_checkpoint_with_other_channel_count_is_refused(tmp_path):
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m14", seed=0)
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m6", seed=0, features="rgb_ndvi_slope_dem")
    # Put the 6-channel weights under the 14-channel card (hash updated so only the shape is wrong).
    card = read_card(tmp_path / "m14")
    (tmp_path / "m14" / "weights.pt").write_bytes((tmp_path / "m6" / "weights.pt").read_bytes())
    from landslide_batch.hashing import sha256_file

    card = card.model_copy(update={"weights_sha256": sha256_file(tmp_path / "m14" / "weights.pt")})
    (tmp_path / "m14" / "card.json").write_text(card.model_dump_json())
    with pytest.raises(ModelError, match="expects 6 input channels"):
        load_model_folder(tmp_path / "m14")


def test_tampered_weights_and_bad_cards_are_refused(tmp_path):
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m", seed=0)
    with open(tmp_path / "m" / "weights.pt", "ab") as f:
        f.write(b"junk")
    with pytest.raises(ModelError, match="does not match"):
        load_model_folder(tmp_path / "m")
    (tmp_path / "m" / "card.json").write_text('{"name": "x"}')
    with pytest.raises(ModelError, match="card is invalid"):
        read_card(tmp_path / "m")
    with pytest.raises(ModelError, match="not a model folder"):
        read_card(tmp_path / "nowhere")


def test_model_folder_is_readable_by_others(tmp_path):
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m", seed=0)
    assert (tmp_path / "m").stat().st_mode & 0o755 == 0o755
