"""`train_step` trains on the loss its config describes: world_model.start_stride reaches `WorldModel.loss`."""

import torch

from experiments.config import load_config
from experiments.inputs import env_spec
from experiments.train import build_model, build_optimizer, train_step
from worldmodel.dynamics.world_model import WorldModelBatch


def test_train_step_reports_the_loss_of_the_configured_start_stride():
    cfg = load_config(
        ["configs/debug.yaml"],
        ["env.obs=state", "world_model.sequence_length=12", "world_model.horizon=11", "world_model.start_stride=4"],
    )
    wcfg, spec = cfg.world_model, env_spec(cfg.env)
    torch.manual_seed(0)
    model = build_model(wcfg, spec)
    generator = torch.Generator().manual_seed(0)
    B, T = 3, wcfg.sequence_length
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    batch = WorldModelBatch(
        obs=torch.randn(B, T, *spec.obs_shape, generator=generator),
        action=torch.eye(spec.action_dim)[torch.randint(0, spec.action_dim, (B, T), generator=generator)],
        reward=torch.ones(B, T),
        cont=torch.ones(B, T),
        is_first=is_first,
    )
    expected = {
        stride: model.loss(batch, wcfg.horizon, wcfg.burn_in, torch.Generator().manual_seed(1), start_stride=stride)
        for stride in (1, wcfg.start_stride)
    }
    assert not torch.isclose(expected[1]["latent"], expected[4]["latent"])  # the stride changes the loss here

    weights = wcfg.loss_weight_dict(model.loss_keys)
    result = train_step(
        model, build_optimizer(model, wcfg), None, batch, weights, 0.99, wcfg,
        torch.Generator().manual_seed(1), torch.device("cpu"), "float32",
    )  # fmt: skip
    for key, value in expected[4].items():
        assert abs(result.losses[key] - value.item()) <= 1e-5 * max(1.0, abs(value.item())), key
