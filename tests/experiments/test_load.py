"""The loaders of experiments/load.py and `Encoder.embed`, without subprocesses: the embedding equals the manual path
(equivalence), and what cannot be loaded is refused in one line naming the file and the problem. (docs/api.md's
examples run on real debug runs in test_api_docs.py.)"""

import numpy as np
import pytest
import torch

import experiments
from experiments import config as config_lib
from experiments.checkpoint import CheckpointError, save_checkpoint
from experiments.load import load_encoder, load_policy, load_world_model
from experiments.pretraining import build_model
from experiments.rundir import RunError
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.perception import Encoder
from worldmodel.perception.augment import IMAGENET_MEAN, IMAGENET_STD, normalize, resize


@pytest.fixture
def pretrained(tmp_path):
    """A `wm pretrain` checkpoint of the debug preset's I-JEPA (as `Pretrainer.state_dict` holds it) and the model."""
    cfg = config_lib.load_config(["debug"])
    torch.manual_seed(0)
    model = build_model(cfg.pretrain)
    with torch.no_grad():  # a target encoder that differs from the context encoder, as after training
        for parameter in model.target_encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "checkpoints" / "latest.pt"
    save_checkpoint(
        path, {"command": "pretrain", "step": 10, "config": config_lib.to_dict(cfg), "model": model.state_dict()}
    )
    return tmp_path, model


def images(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(batch, height, width, channels), dtype=np.uint8)


def test_embedding_equals_the_target_encoder_on_resized_imagenet_normalised_images(pretrained):
    run, model = pretrained
    encoder = load_encoder(run)
    frames = images(5, 48, 40)  # (B, H, W, C), not the encoder's 32 x 32
    chw = torch.as_tensor(frames).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    with torch.no_grad():
        manual = model.target_encoder(normalize(resize(chw, 32), IMAGENET_MEAN, IMAGENET_STD)).mean(dim=1)  # (B, D)
    features = encoder.embed(frames)
    assert features.shape == (5, encoder.feature_dim) == (5, 64) and features.dtype == torch.float32
    torch.testing.assert_close(features, manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(encoder.embed(torch.as_tensor(frames)), features, rtol=0, atol=0)  # torch in: the same
    # The target encoder, not the context encoder: the one whose probes `wm pretrain` reports.
    assert not torch.allclose(features, model.encoder.pooled(normalize(resize(chw, 32))), atol=1e-4)


def test_the_context_encoder_is_loaded_when_asked_and_a_wrong_choice_is_refused(pretrained):
    run, model = pretrained
    frames = images(4, 32, 32)
    chw = torch.as_tensor(frames).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    with torch.no_grad():
        manual = model.encoder.pooled(normalize(resize(chw, 32), IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(load_encoder(run, which="context").embed(frames), manual, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"which must be one of \('target', 'context'\), got 'online'"):
        load_encoder(run, which="online")


def test_embedding_equals_the_world_model_s_features_with_its_blur_and_pooling():
    torch.manual_seed(0)
    shape = {"latent_dim": 8, "hidden_dim": 8, "mlp_dim": 8, "ensemble_size": 2, "vit_size": "micro", "image_size": 32}
    options = dict(patch_size=4, freeze_encoder=True, input_blur=1.0, pooling="mean_std")
    model = JEPAWorldModel((40, 40, 6), 2, **shape, **options)
    model.eval()
    encoder = Encoder(model.backbone, model.image_size, model.pooling, model.input_blur)
    frames = images(3, 40, 40, channels=6)  # a stack of two RGB frames
    expected = model.encode_features(torch.as_tensor(frames))
    torch.testing.assert_close(encoder.embed(frames), expected, rtol=0, atol=0)
    assert encoder.feature_dim == model.feature_dim == 128


@pytest.mark.parametrize(
    ("shape", "dtype"), [((2, 32, 32), np.uint8), ((2, 32, 32, 1), np.uint8), ((2, 32, 32, 3), np.float32)]
)
def test_images_of_another_layout_or_dtype_are_refused_naming_the_expected_one(pretrained, shape, dtype):
    encoder = load_encoder(pretrained[0])
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(B, H, W, 3\)"):
        encoder.embed(np.zeros(shape, dtype))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_missing_checkpoint_is_refused_in_one_line(tmp_path):
    for load in (load_encoder, load_world_model):
        with pytest.raises(CheckpointError) as error:
            load(tmp_path / "nothing")
        assert f"checkpoint {tmp_path / 'nothing'} does not exist" in one_line(error)


def test_a_checkpoint_of_the_wrong_kind_is_refused_in_one_line_naming_its_kind(pretrained, tmp_path):
    run, _ = pretrained
    with pytest.raises(CheckpointError) as error:
        load_world_model(run)
    assert "latest.pt is a checkpoint of 'pretrain', not of 'train' or 'cycle'" in one_line(error)
    evolved = tmp_path / "evolve.pt"
    save_checkpoint(evolved, {"command": "evolve", "parameters": torch.zeros(3)})
    with pytest.raises(CheckpointError) as error:
        load_encoder(evolved)
    assert f"{evolved} is a checkpoint of 'evolve'; an encoder is in a checkpoint of 'pretrain'" in one_line(error)


def test_a_policy_from_a_directory_that_is_no_run_is_refused_in_one_line(pretrained):
    run, _ = pretrained  # checkpoints, but no config.yaml or summary.json
    with pytest.raises(RunError) as error:
        load_policy(run)
    assert f"{run}: not a run directory (it needs config.yaml and summary.json)" in one_line(error)


def test_the_api_names_import_from_the_package():
    for name in experiments.__all__:
        assert callable(getattr(experiments, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        experiments.nothing  # noqa: B018
