"""The two classes against the single `WorldModel` class they were split from (reference captured from it, before the
split, into single_class_reference.json): each kind's state_dict has the same names, shapes and order (a checkpoint
saved before the split loads after it), and under the same seed the same losses and the same dream step."""

import json
from pathlib import Path

import pytest
import torch

from worldmodel.dynamics.build import build_world_model, world_model_class
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.rssm import RSSMWorldModel
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

REFERENCE = json.loads((Path(__file__).parent / "single_class_reference.json").read_text())
ACTIONS = 2


def build(case: dict) -> WorldModel:
    """The case's model under seed 0; the single class took every keyword, the kind's class takes its own."""
    options = dict(case["options"])
    model_class = world_model_class(options.pop("latent", "deterministic"))
    torch.manual_seed(0)
    return build_world_model(
        tuple(case["obs_shape"]),
        ACTIONS,
        latent=model_class.latent,
        **{key: value for key, value in options.items() if key in model_class.keywords()},
    )


def windows(obs_shape: tuple[int, ...], batch: int = 2, time: int = 6, seed: int = 1) -> WorldModelBatch:
    generator = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (batch, time, *obs_shape), generator=generator, dtype=torch.uint8)
    else:
        obs = torch.randn(batch, time, *obs_shape, generator=generator)
    is_first = torch.zeros(batch, time, dtype=torch.bool)
    is_first[0, 0] = is_first[1, 3] = True
    action = torch.randn(batch, time, ACTIONS, generator=generator).masked_fill(is_first[..., None], 0.0)
    reward = torch.randn(batch, time, generator=generator).masked_fill(is_first, 0.0)
    cont = (torch.rand(batch, time, generator=generator) > 0.3).float().masked_fill(is_first, 1.0)
    return WorldModelBatch(obs, action, reward, cont, is_first)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_names_shapes_and_order_are_the_single_class_s(name):
    model = build(REFERENCE[name])
    assert isinstance(model, JEPAWorldModel if name.startswith("deterministic") else RSSMWorldModel)
    shapes = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert shapes == list(REFERENCE[name]["state_dict"].items())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_losses_and_a_dream_step_equal_the_single_class_s(name):
    """Bit for bit on the machine that captured them; within float32 rounding on another CPU's kernels."""
    case = REFERENCE[name]
    model = build(case)
    batch = windows(tuple(case["obs_shape"]))
    torch.manual_seed(5)
    model.set_feature_statistics(model.encode_features(batch.obs) * 1.5 + 0.25)
    losses = model.loss(batch, horizon=3, burn_in=1, generator=torch.Generator().manual_seed(2))
    assert set(losses) == set(case["loss"]) == set(model.loss_keys)
    for key, value in case["loss"].items():
        torch.testing.assert_close(losses[key].item(), value, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        hidden, z, targets = model.real_states(batch)
        action = torch.randn(2, ACTIONS, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(4))
        h, latent = model.step(hidden[:, -1], z[:, -1], action, noise)
        step = {
            "hidden": h,
            "latent": latent,
            "reward": model.reward(h, latent),
            "cont": model.cont(h, latent),
            "disagreement": model.disagreement(h),
            "targets": targets[:, -1],
        }
    for key, values in case["step"].items():
        torch.testing.assert_close(step[key].flatten(), torch.tensor(values), rtol=1e-5, atol=1e-5)


def test_the_interface_answers_what_callers_asked_of_the_kind():
    assert (JEPAWorldModel.latent, JEPAWorldModel.frame_latents, JEPAWorldModel.samples_prior) == (
        "deterministic",
        True,
        False,
    )
    assert (RSSMWorldModel.latent, RSSMWorldModel.frame_latents, RSSMWorldModel.samples_prior) == (
        "stochastic",
        False,
        True,
    )
    with pytest.raises(TypeError):
        WorldModel((4,), 2)  # the interface alone is abstract


@pytest.mark.parametrize(
    ("model_class", "options", "key"),
    [
        (JEPAWorldModel, dict(latent_dim=0), "latent_dim"),
        (JEPAWorldModel, dict(sigreg_points=1), "sigreg_points"),
        (JEPAWorldModel, dict(image_size=32, patch_size=5), "patch_size"),
        (RSSMWorldModel, dict(free_nats=-1.0), "free_nats"),
        (RSSMWorldModel, dict(kl_balance=1.5), "kl_balance"),
    ],
)
def test_options_are_checked_by_the_class_without_building_it(model_class, options, key):
    with pytest.raises(ValueError, match=f"^{key}: "):
        model_class.check_options(**options)
    with pytest.raises(ValueError, match=f"^{key}: "):
        model_class((4,), 2, **options)
