"""The planner (agents/planner.py): oracles on a hand-made line world whose best first action is known (CEM and MPPI,
continuous and discrete), its score by hand, planning B envs at once equals planning each alone, and on real tiny
world models of both kinds the properties: shapes, actions in the space, same seed same actions, no warm start left
after reset, exact resume from a state dict, and one-line refusals of bad settings."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.agent import filter_observation
from agents.planner import Planner, PlannerSettings, PlanningAgent
from envs import EpisodeStore, collect, make_vector_env
from worldmodel.dream.rollout import DreamState
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.rssm import RSSMWorldModel
from worldmodel.dynamics.world_model import WorldModel

OBS_DIM, LATENT, HIDDEN = 4, 8, 16
TINY = dict(latent_dim=LATENT, hidden_dim=HIDDEN, mlp_dim=16, ensemble_size=2)
SMALL = PlannerSettings(horizon=4, candidates=32, elites=4, iterations=2)
KINDS = {"deterministic": JEPAWorldModel, "stochastic": RSSMWorldModel}
SPACES = {"discrete": spaces.Discrete(3, start=1), "continuous": spaces.Box(-2.0, 0.5, (2,), dtype=np.float32)}


class LineWorld:
    """A world-model stand-in with known dynamics: z' = z + action @ moves, h unchanged, reward -|z - target|, and a
    continue probability sigmoid(cont_logit) everywhere. With moves = [[1]] a continuous action moves z by itself;
    with moves = [[-0.25], [0.25]] the discrete action 0 moves left and 1 right."""

    samples_prior = False

    def __init__(self, moves: list[list[float]], target: float = 0.5, cont_logit: float = 20.0):
        self.moves = torch.tensor(moves)  # (A, 1)
        self.action_dim, self.latent_dim, self.target, self.cont_logit = len(moves), 1, target, cont_logit

    def step(self, h, z, action, prior_noise=None):
        return h, z + action @ self.moves.to(action)

    def reward(self, h, z):
        return -(z - self.target).abs().squeeze(-1)

    def cont(self, h, z):
        return torch.full(z.shape[:-1], self.cont_logit)

    def disagreement(self, h):
        return torch.zeros(h.shape[0])


def line_state(*positions: float) -> DreamState:
    """B line-world states at these positions: h (B, 1) zeros, z (B, 1)."""
    return DreamState(torch.zeros(len(positions), 1), torch.tensor(positions)[:, None])


def make_model(kind: str, action_dim: int) -> WorldModel:
    torch.manual_seed(0)
    return KINDS[kind]((OBS_DIM,), action_dim, **TINY).eval()


def make_agent(kind: str, space: str, num_envs: int = 2, **changes) -> PlanningAgent:
    action_space = SPACES[space]
    dims = int(action_space.n) if space == "discrete" else action_space.shape[0]
    settings = dataclasses.replace(SMALL, **changes)
    return PlanningAgent(Planner(make_model(kind, dims), action_space, settings, num_envs))


def observations(steps: int, num_envs: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, num_envs, OBS_DIM)).astype(np.float32)


def drive(agent: PlanningAgent, obs: np.ndarray) -> np.ndarray:
    """Env actions (T, N, ...) of the agent on observations (T, N, S), episodes starting at step 0."""
    actions = []
    for t, frame in enumerate(obs):
        agent.reset(np.full(agent.num_envs, t == 0))
        actions.append(agent(frame))
    return np.stack(actions)


# ------------------------------------------------------------------ oracles


@pytest.mark.parametrize("method", ["cem", "mppi"])
@pytest.mark.parametrize(("positions", "best"), [((0.0,), (0.5,)), ((0.0, 1.0, -0.8, 0.3), (0.5, -0.5, 1.0, 0.2))])
def test_continuous_planner_finds_the_best_first_action(method, positions, best):
    # Target 0.5 and actions in [-1, 1]: reward 0 at the first step only with a_0 = 0.5 - z (clipped to the bounds).
    settings = PlannerSettings(method=method, horizon=5, candidates=256, elites=16, iterations=6, discount=1.0)
    planner = Planner(LineWorld([[1.0]]), spaces.Box(-1.0, 1.0, (1,)), settings, len(positions))
    action = planner.plan(line_state(*positions))
    assert action.shape == (len(positions), 1)
    torch.testing.assert_close(action[:, 0], torch.tensor(best, dtype=torch.float32), atol=0.06, rtol=0)


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_discrete_planner_moves_towards_the_target(method):
    settings = dataclasses.replace(SMALL, method=method, horizon=6, candidates=64, elites=8, iterations=3)
    space = spaces.Discrete(2, start=5)
    planner = Planner(LineWorld([[-0.25], [0.25]], target=0.0), space, settings, 4)
    action = planner.plan(line_state(-1.0, 2.0, -0.6, 0.6))
    torch.testing.assert_close(action, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_array_equal(planner.env_actions(action), [6, 5, 6, 5])


@pytest.mark.parametrize("cont_mode", ["expected", "ignore"])
def test_score_is_the_discounted_expected_return(cont_mode):
    # Reward -|z - 0.5| along z_t = z_0 + t * a; continue probability sigmoid(0) = 1/2 at every step.
    settings = dataclasses.replace(SMALL, horizon=3, discount=0.9, cont_mode=cont_mode)
    planner = Planner(LineWorld([[1.0]], cont_logit=0.0), spaces.Box(-2.0, 2.0, (1,)), settings, 1)
    samples = torch.tensor([0.25, -0.5])[None, :, None, None].expand(1, 2, 3, 1)  # (B, N, H, A): a = 0.5 and -1
    returns = planner.score(line_state(0.0), samples)
    weight = [1.0, 0.5, 0.25] if cont_mode == "expected" else [1.0, 1.0, 1.0]
    expected = [sum(0.9**t * weight[t] * -abs((t + 1) * a - 0.5) for t in range(3)) for a in (0.5, -1.0)]
    torch.testing.assert_close(returns, torch.tensor([expected]))


# ------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_planning_envs_at_once_equals_planning_each_alone(method):
    settings = dataclasses.replace(SMALL, method=method, seed=7)
    positions = (0.0, 1.0, -0.8)
    together = Planner(LineWorld([[1.0]]), spaces.Box(-1.0, 1.0, (1,)), settings, len(positions))
    alone = [
        Planner(LineWorld([[1.0]]), spaces.Box(-1.0, 1.0, (1,)), dataclasses.replace(settings, seed=7 + row), 1)
        for row in range(len(positions))
    ]
    for step in range(3):  # warm-started decisions, each from states moved by the step
        state = line_state(*(p + 0.1 * step for p in positions))
        batched = together.plan(state)
        for row, planner in enumerate(alone):
            torch.testing.assert_close(planner.plan(line_state(state.latent[row, 0].item())), batched[row : row + 1])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_real_model_planning_envs_at_once_equals_each_alone(kind):
    model = make_model(kind, 2)
    state = DreamState(torch.randn(3, HIDDEN), torch.randn(3, LATENT))
    together = Planner(model, spaces.Box(-1.0, 1.0, (2,)), SMALL, 3).plan(state)
    for row in range(3):
        planner = Planner(model, spaces.Box(-1.0, 1.0, (2,)), dataclasses.replace(SMALL, seed=row), 1)
        alone = planner.plan(DreamState(state.hidden[row : row + 1], state.latent[row : row + 1]))
        torch.testing.assert_close(alone, together[row : row + 1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ properties on real models


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_agent_shapes_and_actions_in_the_space(kind, space, method):
    agent = make_agent(kind, space, num_envs=3, method=method)
    actions = drive(agent, observations(4, num_envs=3))
    assert actions.shape == ((4, 3) if space == "discrete" else (4, 3, 2))
    flat = actions.reshape(12) if space == "discrete" else actions.reshape(12, 2)  # (T, N, ...) -> (T*N, ...)
    assert all(SPACES[space].contains(action) for action in flat)
    assert agent.action.shape == (3, agent.model.action_dim)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("space", sorted(SPACES))
def test_same_seed_same_actions(kind, space):
    obs = observations(5)
    first, second = drive(make_agent(kind, space), obs), drive(make_agent(kind, space), obs)
    np.testing.assert_array_equal(first, second)
    other = drive(make_agent(kind, space, seed=3), obs)
    if space == "continuous":
        assert not np.array_equal(first, other)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_exploration_noise_on_the_plans_is_seeded_and_stays_in_the_space(space):
    """A cycle collects with the planner plus `wm cycle`'s exploration noise (agents.agent.explore)."""
    obs = observations(6, num_envs=3)

    def actions(exploration: float, seed: int) -> np.ndarray:
        agent = make_agent("stochastic", space, num_envs=3)
        agent = PlanningAgent(agent.planner, exploration, seed)
        return drive(agent, obs)

    greedy, noisy = actions(0.0, 0), actions(1.0, 0)
    assert not np.array_equal(greedy, noisy) and np.array_equal(noisy, actions(1.0, 0))
    flat = noisy.reshape(18) if space == "discrete" else noisy.reshape(18, 2)  # (T, N, ...) -> (T*N, ...)
    assert all(SPACES[space].contains(action) for action in flat)
    with pytest.raises(ValueError, match="exploration"):
        PlanningAgent(make_agent("stochastic", space).planner, 1.5)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_warm_start_changes_nothing_after_reset_of_all(space):
    # Both draw the same noise per decision, so after a reset of every env the warm-started one plans as the other.
    warm, cold = make_agent("stochastic", space), make_agent("stochastic", space, warm_start=False)
    obs = observations(6)
    np.testing.assert_array_equal(drive(warm, obs[:1]), drive(cold, obs[:1]))  # nothing to warm-start from yet
    for frame in obs[1:3]:
        warm.reset(np.zeros(2, dtype=bool))
        warm(frame)
        cold.reset(np.zeros(2, dtype=bool))
        cold(frame)
    assert warm.planner.mean.abs().sum() > 0 and cold.planner.mean.abs().sum() == 0
    assert (warm.planner.mean[:, -1] == 0).all()  # shifted one step: the last step starts afresh
    warm.reset()
    assert warm.planner.mean.abs().sum() == 0
    cold.reset()
    for frame in obs[3:]:
        np.testing.assert_array_equal(warm(frame), cold(frame))
        warm.reset(np.ones(2, dtype=bool))
        cold.reset(np.ones(2, dtype=bool))


def test_reset_clears_only_the_envs_that_start_an_episode():
    agent = make_agent("deterministic", "continuous", num_envs=3)
    drive(agent, observations(2, num_envs=3))
    before = agent.planner.mean.clone()
    agent.reset(np.array([False, True, False]))
    assert agent.planner.mean[1].abs().sum() == 0
    torch.testing.assert_close(agent.planner.mean[[0, 2]], before[[0, 2]])


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("space", sorted(SPACES))
def test_state_dict_round_trip_gives_identical_next_actions(kind, space):
    obs = observations(7)
    agent = make_agent(kind, space)
    drive(agent, obs[:3])
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)  # plain tensors: loads with weights_only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = [agent(frame) for frame in obs[3:]]
    resumed = make_agent(kind, space)
    resumed.load_state_dict(state)
    for frame, action in zip(obs[3:], expected, strict=True):
        np.testing.assert_array_equal(resumed(frame), action)
    planner = Planner(resumed.model, SPACES[space], SMALL, 3)
    with pytest.raises(ValueError, match="planner state is for"):
        planner.load_state_dict(agent.planner.state_dict())


def test_agent_filters_as_the_latent_agent_does():
    agent = make_agent("stochastic", "discrete")
    obs = observations(3)
    drive(agent, obs[:2])
    hidden, latent, action = agent.hidden, agent.latent, agent.action
    agent.reset(np.array([False, True]))
    agent(obs[2])
    first = torch.tensor([[False], [True]])
    expected = filter_observation(agent.model, hidden, latent, action, first, torch.as_tensor(obs[2]))
    torch.testing.assert_close((agent.hidden, agent.latent), expected)


@pytest.mark.parametrize(("env_id", "space"), [("CartPole-v1", "discrete"), ("Pendulum-v1", "continuous")])
def test_agent_collects_in_a_real_vector_env(env_id, space, tmp_path):
    envs, spec = make_vector_env(env_id, 2, obs="state", seed=0)
    settings = dataclasses.replace(SMALL, horizon=3, candidates=16, elites=4)
    model = KINDS["deterministic"](spec.obs_shape, spec.action_dim, **TINY).eval()
    agent = PlanningAgent(Planner(model, envs.single_action_space, settings, 2))
    stats = collect(envs, agent, 60, store=EpisodeStore(tmp_path), cut_partial=False)
    envs.close()
    assert stats.steps >= 60


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "ilqr"),
        ("horizon", 0),
        ("candidates", 0),
        ("elites", 0),
        ("elites", 300),
        ("iterations", 0),
        ("temperature", 0.0),
        ("initial_std", 0.0),
        ("min_std", 2.0),
        ("momentum", 1.0),
        ("discount", 0.0),
        ("cont_mode", "sample"),
        ("seed", -1),
    ],
)
def test_bad_settings_are_refused_in_one_line(field, value):
    with pytest.raises(ValueError, match=f"^{field} must") as error:
        PlannerSettings(**{field: value})
    assert "\n" not in str(error.value)


def test_bad_spaces_and_sizes_are_refused():
    model = make_model("deterministic", 2)
    with pytest.raises(ValueError, match="Discrete or 1-D Box"):
        Planner(model, spaces.MultiDiscrete([2, 2]), SMALL, 1)
    with pytest.raises(ValueError, match="3 dims but the model takes 2"):
        Planner(model, spaces.Discrete(3), SMALL, 1)
    with pytest.raises(ValueError, match="finite bounds"):
        Planner(model, spaces.Box(-np.inf, np.inf, (2,)), SMALL, 1)
    with pytest.raises(ValueError, match="plans for 2 envs"):
        Planner(model, spaces.Discrete(2), SMALL, 2).plan(DreamState(torch.zeros(3, HIDDEN), torch.zeros(3, LATENT)))
