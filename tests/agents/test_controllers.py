"""Controllers (agents/controllers.py): parameter counts, hand-computed actions, a population acting as one batch
equals each candidate alone, the flat vector's layout, env actions, validation, start points."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.controllers import Controller

F, P, E = 5, 4, 3


def random_params(controller: Controller, population: int = P, seed: int = 0) -> torch.Tensor:
    return torch.randn(population, controller.num_params, generator=torch.Generator().manual_seed(seed))


def random_obs(population: int = P, episodes: int = E, seed: int = 1) -> torch.Tensor:
    return torch.randn(population, episodes, F, generator=torch.Generator().manual_seed(seed))


def test_num_params():
    assert Controller(F, spaces.Discrete(3), "linear").num_params == F * 3 + 3
    assert Controller(F, spaces.Box(-1, 1, (2,)), "mlp", hidden=7).num_params == F * 7 + 7 + 7 * 2 + 2
    assert Controller(F, spaces.Discrete(3), "linear", hidden=99).num_params == F * 3 + 3  # linear ignores hidden
    described = Controller(F, spaces.Discrete(3), "mlp", hidden=4).describe()
    assert described == {
        "kind": "mlp",
        "in_dim": F,
        "hidden": 4,
        "action_dim": 3,
        "discrete": True,
        "num_params": F * 4 + 4 + 4 * 3 + 3,
    }


def test_linear_discrete_act_by_hand():
    controller = Controller(3, spaces.Discrete(3), "linear")
    weight = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]])  # (F, A)
    bias = np.array([0.0, -3.0, 0.25])
    params = torch.tensor(np.concatenate([weight.ravel(), bias]))[None]  # (1, n): weight row-major, then bias
    obs = torch.tensor([[[1.0, 2.0, -1.0], [0.0, 1.0, 0.0], [-2.0, 0.0, 2.0]]])  # (1, 3, F)
    # scores: [1 - 0.5, 4 - 0.5 - 3, -1 - 0.5 + 0.25] = [0.5, 0.5, -1.25] -> the first maximum, 0;
    #         [0, 2 - 3, 0.25] -> 2;  [-2 + 1, 1 - 3, 2 + 1 + 0.25] -> 2.
    expected_scores = torch.tensor([[[0.5, 0.5, -1.25], [0.0, -1.0, 0.25], [-1.0, -2.0, 3.25]]])
    torch.testing.assert_close(controller.scores(params, obs), expected_scores)
    actions = controller.act(params, obs)
    assert torch.equal(actions, torch.tensor([[[1.0, 0, 0], [0, 0, 1], [0, 0, 1]]]))
    assert actions.dtype == obs.dtype  # float64 parameters act on float32 observations
    assert controller.env_actions(actions).tolist() == [[0, 2, 2]]


def test_linear_box_act_by_hand_stays_in_bounds():
    low, high = np.array([-2.0, 0.0], dtype=np.float32), np.array([1.0, 4.0], dtype=np.float32)
    controller = Controller(2, spaces.Box(low, high), "linear")
    zero = torch.zeros(1, controller.num_params)
    obs = torch.tensor([[[3.0, -1.0], [0.0, 0.0]]])  # (1, 2, F)
    torch.testing.assert_close(controller.act(zero, obs), torch.tensor([[[-0.5, 2.0], [-0.5, 2.0]]]))  # midpoints
    # weight = identity, bias = (0.5, 0): scores (3.5, -1) and (0.5, 0); a = low + (tanh(s) + 1) / 2 * (high - low).
    params = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.5, 0.0]])
    scores = torch.tensor([[[3.5, -1.0], [0.5, 0.0]]])
    expected = torch.tensor(low) + (torch.tanh(scores) + 1) / 2 * torch.tensor(high - low)
    torch.testing.assert_close(controller.act(params, obs), expected)
    huge = controller.act(1e4 * random_params(controller, 1), torch.randn(1, 64, 2))  # saturated tanh
    assert (huge >= torch.tensor(low)).all() and (huge <= torch.tensor(high)).all()
    assert (huge == torch.tensor(low)).any() and (huge == torch.tensor(high)).any()
    env = controller.env_actions(huge)
    assert env.dtype == np.float32 and env.shape == (1, 64, 2)


def test_mlp_act_by_hand():
    controller = Controller(F, spaces.Box(-1.0, 1.0, (2,)), "mlp", hidden=3)
    params = random_params(controller, 1).double()
    flat = params[0].numpy()
    w1, flat = flat[: F * 3].reshape(F, 3), flat[F * 3 :]
    b1, flat = flat[:3], flat[3:]
    w2, b2 = flat[:6].reshape(3, 2), flat[6:]
    obs = random_obs(1).double()
    expected = np.tanh(np.tanh(obs[0].numpy() @ w1 + b1) @ w2 + b2)  # bounds (-1, 1): a = tanh(scores)
    np.testing.assert_allclose(controller.act(params, obs)[0].numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("space", [spaces.Discrete(4), spaces.Box(-1.0, 2.0, (3,))], ids=["discrete", "box"])
def test_population_acts_like_each_candidate_alone(kind, space):
    controller = Controller(F, space, kind, hidden=6)
    params, obs = 3.0 * random_params(controller), random_obs()
    together = controller.act(params, obs)  # (P, E, A)
    assert together.shape == (P, E, controller.action_dim)
    for p in range(P):
        alone = controller.act(params[p : p + 1], obs[p : p + 1])
        torch.testing.assert_close(together[p : p + 1], alone, rtol=1e-6, atol=1e-6)
        for e in range(E):  # and each episode alone
            single = controller.act(params[p : p + 1], obs[p : p + 1, e : e + 1])  # (1, 1, A)
            torch.testing.assert_close(together[p, e], single[0, 0])
    # The dream policy: rows candidate-major, (P*E, F) -> (P*E, A).
    flat = controller.policy(params, E)(obs.reshape(P * E, F))
    assert torch.equal(flat, together.reshape(P * E, -1))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_unflatten_round_trip(kind):
    controller = Controller(F, spaces.Discrete(3), kind, hidden=4)
    params = random_params(controller)
    blocks = controller.unflatten(params)
    assert [name for name, _ in controller.blocks] == list(blocks)
    for name, shape in controller.blocks:
        assert blocks[name].shape == (P, *shape)
    assert torch.equal(torch.cat([b.reshape(P, -1) for b in blocks.values()], dim=1), params)
    with pytest.raises(ValueError, match="shape"):
        controller.unflatten(params[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        controller.unflatten(params[0])
    with pytest.raises(ValueError, match="obs"):
        controller.scores(params, random_obs()[:, :, :-1])
    with pytest.raises(ValueError, match="obs"):
        controller.scores(params, random_obs(population=P - 1))


def test_env_actions():
    controller = Controller(F, spaces.Discrete(3, start=-1), "linear")
    one_hot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    actions = controller.env_actions(one_hot)
    assert actions.tolist() == [1, -1, 0] and actions.dtype == np.int64
    assert all(spaces.Discrete(3, start=-1).contains(a) for a in actions)
    box = Controller(F, spaces.Box(-1.0, 1.0, (2,)), "linear")
    values = torch.tensor([[0.25, -0.5]], dtype=torch.float64)
    assert box.env_actions(values).dtype == np.float32 and box.env_actions(values).tolist() == [[0.25, -0.5]]


@pytest.mark.parametrize(
    "args, message",
    [
        ((F, spaces.Discrete(2), "rnn"), "kind"),
        ((0, spaces.Discrete(2), "linear"), "in_dim"),
        ((F, spaces.Discrete(2), "mlp", 0), "hidden"),
        ((F, spaces.Box(-np.inf, np.inf, (2,)), "linear"), "finite"),
        ((F, spaces.Box(-1.0, 1.0, (2, 2)), "linear"), "1-D Box"),
        ((F, spaces.MultiDiscrete([2, 2]), "linear"), "Discrete"),
    ],
)
def test_invalid_spaces_and_kinds_raise(args, message):
    with pytest.raises(ValueError, match=message):
        Controller(*args)


def test_initial_parameters():
    linear = Controller(F, spaces.Discrete(2), "linear")
    assert np.array_equal(linear.initial_parameters(0), np.zeros(linear.num_params))
    mlp = Controller(64, spaces.Discrete(2), "mlp", hidden=32)
    first = mlp.initial_parameters(3)
    assert first.shape == (mlp.num_params,) and first.dtype == np.float64
    assert np.array_equal(first, mlp.initial_parameters(3))  # deterministic per seed
    assert not np.array_equal(first, mlp.initial_parameters(4))
    size = 64 * 32
    assert np.all(first[size:] == 0)  # only the first layer is random
    assert first[:size].std() == pytest.approx(1 / np.sqrt(64), rel=0.1)  # fan-in scaled
    # Its hidden layer varies with the observation, so the output layer's parameters change the action.
    hidden = torch.tanh(torch.randn(10, 64) @ torch.tensor(first[:size]).reshape(64, 32).float())
    assert hidden.std(dim=0).min() > 0.1
