"""The actor-critic trained in imagination (agents/actor_critic.py): oracles on hand-made dreams whose best action is
known (discrete, learned by REINFORCE; continuous, through the dynamics), lambda-returns by hand, and on real tiny
world models of both kinds the properties: shapes, actions in the space, same seed same training, exact resume from a
state dict that survives a safe load, and refusals of bad settings and of a state of other shapes."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.actor_critic import ActorCritic, ActorCriticAgent, ActorCriticSettings, lambda_returns, symexp
from worldmodel.dream.rollout import DreamSettings, DreamState
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.rssm import RSSMWorldModel
from worldmodel.dynamics.world_model import WorldModel, symlog

OBS_DIM, LATENT, HIDDEN = 4, 8, 16
TINY = dict(latent_dim=LATENT, hidden_dim=HIDDEN, mlp_dim=16, ensemble_size=2)
SMALL = ActorCriticSettings(horizon=4, starts=16, width=16, layers=1)
KINDS = {"deterministic": JEPAWorldModel, "stochastic": RSSMWorldModel}
SPACES = {"discrete": spaces.Discrete(3, start=1), "continuous": spaces.Box(-2.0, 0.5, (2,), dtype=np.float32)}


class SignWorld:
    """A dream with a known best action: z in R^1 flips its sign at every step (z' = -z); the action is remembered in
    h (h' = the action vector) and the reward of arriving is +1 when the action matched the sign of the z it was taken
    at (action 1 for z > 0, action 0 for z < 0), else 0. The episode never ends."""

    samples_prior = False
    action_dim, latent_dim, hidden_dim = 2, 1, 2

    def step(self, h, z, action, prior_noise=None):
        matched = torch.where(z > 0, action[:, 1:], action[:, :1])  # (N, 1): the action fitted the sign
        return torch.cat([matched, 1 - matched], dim=-1), -z

    def reward(self, h, z):
        return h[:, 0]

    def cont(self, h, z):
        return torch.full(z.shape[:-1], 20.0)

    def disagreement(self, h):
        return torch.zeros(h.shape[0])


class TargetWorld:
    """A continuous dream: z in R^1 stays, h' = the action, and the reward of arriving is -(h' - z / 2)^2: the best
    action is z / 2 (within the bounds [-1, 1] for z in [-1, 1])."""

    samples_prior = False
    action_dim, latent_dim, hidden_dim = 1, 1, 1

    def step(self, h, z, action, prior_noise=None):
        return action, z

    def reward(self, h, z):
        return -(h - z / 2).pow(2).squeeze(-1)

    def cont(self, h, z):
        return torch.full(z.shape[:-1], 20.0)

    def disagreement(self, h):
        return torch.zeros(h.shape[0])


def pool(world, rows: int = 256, seed: int = 0) -> DreamState:
    """Start states of a hand-made world: z uniform in [-1, 1] away from 0, h zeros."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = 0.1 + 0.9 * torch.rand(rows, 1, generator=generator)
    sign = torch.where(torch.rand(rows, 1, generator=generator) < 0.5, -1.0, 1.0)
    return DreamState(torch.zeros(rows, world.hidden_dim), sign * magnitude)


def train(learner: ActorCritic, starts: DreamState, steps: int) -> list[dict]:
    results = [learner.train_step(starts) for _ in range(steps)]
    assert not any(result.skipped for result in results)
    return [result.metrics for result in results]


def make_model(kind: str, action_dim: int) -> WorldModel:
    torch.manual_seed(0)
    return KINDS[kind]((OBS_DIM,), action_dim, **TINY).eval()


def make_learner(kind: str, space: str, **changes) -> ActorCritic:
    action_space = SPACES[space]
    dims = int(action_space.n) if space == "discrete" else action_space.shape[0]
    dream = DreamSettings(latent_noise=0.1, disagreement_penalty=0.5)
    return ActorCritic(make_model(kind, dims), action_space, dataclasses.replace(SMALL, **changes), dream)


def real_pool(learner: ActorCritic, rows: int = 32) -> DreamState:
    generator = torch.Generator().manual_seed(3)
    model = learner.model
    return DreamState(
        torch.randn(rows, model.hidden_dim, generator=generator),
        torch.randn(rows, model.latent_dim, generator=generator),
    )


# ------------------------------------------------------------------ oracles


def test_discrete_actor_learns_the_action_that_pays_by_reinforce():
    world = SignWorld()
    settings = ActorCriticSettings(horizon=5, starts=64, width=32, layers=1, actor_lr=3e-3, critic_lr=3e-3)
    learner = ActorCritic(world, spaces.Discrete(2), settings)
    metrics = train(learner, pool(world), 150)
    test = pool(world, 200, seed=1)
    probabilities = torch.softmax(learner.actor(test.observation()), dim=-1).detach()  # (200, 2)
    best = (test.latent[:, 0] > 0).long()  # action 1 for z > 0
    assert probabilities[torch.arange(200), best].min() > 0.9
    torch.testing.assert_close(learner.act(test.observation()).argmax(dim=-1), best)
    # the value of always being right: sum of 0.99^t over the horizon's bootstrapped infinity, about 100
    assert metrics[-1]["dream/reward_mean"] > 0.95 and metrics[0]["dream/reward_mean"] < 0.7


def test_continuous_actor_learns_the_best_action_through_the_dynamics():
    world = TargetWorld()
    settings = ActorCriticSettings(horizon=3, starts=64, width=32, layers=1, actor_lr=3e-3, critic_lr=3e-3)
    learner = ActorCritic(world, spaces.Box(-1.0, 1.0, (1,)), settings)
    train(learner, pool(world), 200)
    test = pool(world, 200, seed=1)
    action = learner.act(test.observation())  # (200, 1) the squashed mean
    torch.testing.assert_close(action, test.latent / 2, atol=0.06, rtol=0)


def test_lambda_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0]])
    continues = torch.tensor([[0.5, 1.0]])
    values = torch.tensor([[10.0, 20.0, 30.0]])
    discount, lam = 0.9, 0.5
    last = 2.0 + discount * 1.0 * 30.0  # R_1: the bootstrap at the horizon is v(s_2) whatever lambda
    first = 1.0 + discount * 0.5 * ((1 - lam) * 20.0 + lam * last)
    torch.testing.assert_close(lambda_returns(rewards, continues, values, discount, lam), torch.tensor([[first, last]]))
    # lambda 0: one-step TD targets; lambda 1: the discounted rewards plus the discounted last value
    torch.testing.assert_close(
        lambda_returns(rewards, continues, values, discount, 0.0), torch.tensor([[1 + 0.45 * 20.0, last]])
    )
    torch.testing.assert_close(
        lambda_returns(rewards, continues, values, discount, 1.0), torch.tensor([[1 + 0.45 * last, last]])
    )


def test_symexp_inverts_symlog():
    x = torch.tensor([-300.0, -1.0, 0.0, 0.5, 120.0])
    torch.testing.assert_close(symexp(symlog(x)), x)


# ------------------------------------------------------------------ properties on real models


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("space", sorted(SPACES))
def test_imagination_and_actions_have_their_shapes_and_stay_in_the_space(kind, space):
    learner = make_learner(kind, space)
    starts = real_pool(learner)
    imagined = learner.imagine(starts.select(torch.arange(5)))
    X, A = LATENT + HIDDEN, learner.action_dim
    assert imagined.features.shape == (5, 5, X) and imagined.actions.shape == (5, 4, A)
    assert imagined.rewards.shape == imagined.continues.shape == (5, 4)
    assert ((imagined.continues >= 0) & (imagined.continues <= 1)).all()
    result = learner.train_step(starts)
    assert not result.skipped and learner.steps == 1
    assert all(np.isfinite(value) for value in result.metrics.values())
    agent = ActorCriticAgent(learner, 3)
    frames = np.random.default_rng(0).standard_normal((3, OBS_DIM)).astype(np.float32)
    agent.reset()
    actions = agent(frames)
    assert agent.decisions == 1 and agent.seconds > 0
    action_space = SPACES[space]
    for action in actions:
        assert action_space.contains(action.astype(action_space.dtype)), action


def test_training_freezes_the_world_model_only_while_it_steps():
    """`wm cycle` trains the same world model between two imaginations: a step must hand back its own flags."""
    learner = make_learner("stochastic", "continuous")
    model = learner.model
    model.backbone.requires_grad_(False)  # a frozen encoder beside trained parts
    flags = [parameter.requires_grad for parameter in model.parameters()]
    assert any(flags) and not all(flags)
    train(learner, real_pool(learner), 2)
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())  # no gradient reached the model's weights


@pytest.mark.parametrize("space", sorted(SPACES))
def test_the_same_seed_trains_the_same_networks_and_another_seed_others(space):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        learner = make_learner("stochastic", space, seed=seed)
        train(learner, real_pool(learner), 3)
        runs[name] = learner.state_dict()
    for key in ("actor", "critic", "target_critic"):
        assert all(torch.equal(runs["a"][key][k], runs["b"][key][k]) for k in runs["a"][key])
    assert not torch.equal(runs["a"]["actor"]["0.weight"], runs["c"]["actor"]["0.weight"])


@pytest.mark.parametrize("space", sorted(SPACES))
def test_a_saved_state_resumes_training_exactly(space):
    whole = make_learner("stochastic", space)
    starts = real_pool(whole)
    train(whole, starts, 3)
    buffer = io.BytesIO()
    torch.save(whole.state_dict(), buffer)  # as a checkpoint holds it: plain tensors and numbers only
    train(whole, starts, 3)

    resumed = make_learner("stochastic", space)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.steps == 3
    train(resumed, starts, 3)
    a, b = whole.state_dict(), resumed.state_dict()
    for key in ("actor", "critic", "target_critic"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert torch.equal(a["generator"], b["generator"]) and torch.equal(a["return_scale"], b["return_scale"])
    for name in ("actor_optimizer", "critic_optimizer"):
        for slot, state in a[name]["state"].items():
            assert all(torch.equal(state[k], b[name]["state"][slot][k]) for k in state), name


def test_a_state_of_other_shapes_is_refused():
    state = make_learner("deterministic", "discrete").state_dict()
    with pytest.raises(ValueError, match="the actor-critic state is for"):
        make_learner("deterministic", "discrete", width=32).load_state_dict(state)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"horizon": 0}, "horizon must be >= 1"),
        ({"discount": 0.0}, "discount must be in"),
        ({"return_lambda": 1.5}, "return_lambda must be in"),
        ({"actor_lr": 0.0}, "actor_lr must be > 0"),
        ({"entropy": -1.0}, "entropy must be >= 0"),
    ],
)
def test_impossible_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **changes)


def test_spaces_the_actor_cannot_act_in_are_refused():
    model = make_model("deterministic", 2)
    with pytest.raises(ValueError, match="Discrete or 1-D Box"):
        ActorCritic(model, spaces.MultiBinary(2), SMALL)
    with pytest.raises(ValueError, match="the model takes 2"):
        ActorCritic(model, spaces.Discrete(3), SMALL)
