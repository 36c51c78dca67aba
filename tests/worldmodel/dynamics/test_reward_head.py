"""The reward head's two losses (`world_model.reward_loss`): the two-hot encoding and symlog against hand-computed
answers, the two-hot head learning a known reward function, both kinds training it, save -> load, and the config's
refusal of a loss it does not know."""

import io

import pytest
import torch
from test_world_model import TINY, make_batch

from experiments.config import ConfigError, load_config
from worldmodel.dynamics.build import build_world_model
from worldmodel.dynamics.world_model import TWOHOT_BINS, TWOHOT_LIMIT, symexp, symlog, twohot

KINDS = {"deterministic": {}, "stochastic": dict(freeze_encoder=True)}
BINS = torch.linspace(-2.0, 2.0, 5)  # -2, -1, 0, 1, 2


def tiny(latent: str, reward_loss: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_world_model((5,), 2, latent=latent, reward_loss=reward_loss, **TINY, **KINDS[latent])


# ---------------------------------------------------------------------------------------------- oracle


def test_twohot_puts_all_weight_on_a_bin_a_value_sits_on():
    encoding = twohot(torch.tensor([-2.0, 0.0, 1.0, 2.0]), BINS)
    torch.testing.assert_close(encoding, torch.eye(5)[[0, 2, 3, 4]])


def test_twohot_splits_a_value_between_its_two_bins_by_closeness():
    encoding = twohot(torch.tensor([0.25, -1.5, 1.9]), BINS)
    expected = torch.zeros(3, 5)
    expected[0, 2], expected[0, 3] = 0.75, 0.25  # 0.25 lies a quarter of the way from 0 to 1
    expected[1, 0], expected[1, 1] = 0.5, 0.5
    expected[2, 3], expected[2, 4] = 0.1, 0.9
    torch.testing.assert_close(encoding, expected)


def test_twohot_reconstructs_values_at_and_between_bins_and_clamps_outside():
    bins = torch.linspace(-TWOHOT_LIMIT, TWOHOT_LIMIT, TWOHOT_BINS, dtype=torch.float64)
    values = torch.cat([bins, (bins[:-1] + bins[1:]) / 2, torch.linspace(-19.9, 19.9, 101, dtype=torch.float64)])
    encoding = twohot(values, bins)  # (N, 255)
    assert (encoding >= 0).all() and (encoding > 0).sum(-1).max() <= 2
    torch.testing.assert_close(encoding.sum(-1), torch.ones(len(values), dtype=torch.float64))
    torch.testing.assert_close(encoding @ bins, values)
    torch.testing.assert_close(twohot(torch.tensor([-7.0, 9.0]), BINS) @ BINS, torch.tensor([-2.0, 2.0]))


def test_symlog_and_symexp_invert_each_other():
    x = torch.tensor([-1e6, -5.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 5.0, 1e6], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    y = torch.linspace(-20.0, 20.0, 41, dtype=torch.float64)  # the two-hot bins' range in symlog space
    torch.testing.assert_close(symlog(symexp(y)), y)
    assert symlog(torch.tensor(torch.e - 1)).item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- learning


def test_the_twohot_head_learns_a_known_reward_of_z():
    """r = 2 sin(z_0) + z_1 (std about 1.7): the head, trained alone on `reward_error` for 300 steps, predicts it on
    fresh states to a root-mean-square error of under 0.25 and a mean error (what adds up over a dream) of under
    0.05."""
    torch.manual_seed(0)
    model = build_world_model((5,), 2, latent="stochastic", reward_loss="twohot", **dict(TINY, mlp_dim=64))
    generator = torch.Generator().manual_seed(0)

    def states(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.randn(n, TINY["latent_dim"], generator=generator)
        return torch.zeros(n, TINY["hidden_dim"]), z, 2 * torch.sin(z[:, 0]) + z[:, 1]

    assert model.reward(*states(4)[:2]).abs().max() < 1e-6  # the zero-initialised output predicts 0
    optimizer = torch.optim.Adam(model.reward_head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model.reward_error(*states(256)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    h, z, reward = states(2000)
    with torch.no_grad():
        error = model.reward(h, z) - reward
    assert error.pow(2).mean().sqrt() < 0.25 and error.mean().abs() < 0.05, (error.pow(2).mean(), error.mean())


def test_mse_reward_error_is_the_squared_error_of_the_prediction():
    model = tiny("deterministic", "mse")
    h, z, reward = torch.randn(6, TINY["hidden_dim"]), torch.randn(6, TINY["latent_dim"]), torch.randn(6)
    torch.testing.assert_close(model.reward_error(h, z, reward), (model.reward(h, z) - reward).pow(2))


@pytest.mark.parametrize("latent", KINDS)
def test_both_kinds_train_the_twohot_head_through_their_loss(latent):
    model = tiny(latent, "twohot")
    losses = model.loss(make_batch((5,)), horizon=3, burn_in=1, generator=torch.Generator().manual_seed(0))
    assert set(losses) == set(model.loss_keys) and all(torch.isfinite(v) for v in losses.values())
    # Zero logits: the cross-entropy against any two-hot target is log(bins).
    assert losses["reward"].item() == pytest.approx(torch.log(torch.tensor(float(TWOHOT_BINS))).item(), rel=1e-5)
    losses["reward"].backward()
    assert model.reward_head[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("latent", KINDS)
def test_save_then_load_gives_identical_twohot_rewards(latent):
    model = tiny(latent, "twohot")
    with torch.no_grad():
        for parameter in model.reward_head.parameters():
            parameter.add_(torch.randn_like(parameter))  # away from the zero initialisation
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny(latent, "twohot", seed=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    h, z = torch.randn(7, TINY["hidden_dim"]), torch.randn(7, TINY["latent_dim"])
    assert torch.equal(model.reward(h, z), restored.reward(h, z))
    assert "reward_bins" not in model.state_dict()  # fixed, rebuilt: a checkpoint holds only the head
    with pytest.raises(RuntimeError, match="reward_head"):  # an mse model refuses a two-hot head, and back
        tiny(latent, "mse").load_state_dict(model.state_dict())


def test_a_config_without_reward_loss_is_an_mse_one_and_a_bad_loss_is_refused():
    """Old runs' configs have no reward_loss: they build the MSE head their checkpoints hold."""
    assert load_config(["debug"]).world_model.reward_loss == "mse"
    assert load_config(["debug"], ["world_model.reward_loss=twohot"]).world_model.model_keywords()["reward_loss"] == (
        "twohot"
    )
    with pytest.raises(ConfigError, match=r"^world_model\.reward_loss: must be one of 'mse', 'twohot', got 'huber'$"):
        load_config(["debug"], ["world_model.reward_loss=huber"])
    with pytest.raises(ValueError, match="reward_loss: must be one of"):
        tiny("deterministic", "huber")
