"""LatentAgent (agents/agent.py) on a real tiny WorldModel: stepping it equals `WorldModel.observe` over the same
observations and its own actions (also inside `envs.collect` on a real vector env), each sub-env runs its own
controller, and exploration is reproducible and valid."""

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.agent import LatentAgent
from agents.controllers import Controller
from envs import EpisodeStore, RandomPolicy, collect, make_vector_env
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel

TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=3)
OBS_DIM, LATENT_DIM, HIDDEN_DIM = 4, 8, 16
FEATURES = LATENT_DIM + HIDDEN_DIM
N, T = 3, 12


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel((OBS_DIM,), 2, **TINY).eval()


def make_controller(space: spaces.Space | None = None) -> Controller:
    return Controller(FEATURES, spaces.Discrete(2) if space is None else space, "linear")


def random_params(controller: Controller, rows: int | None = None, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    shape = (controller.num_params,) if rows is None else (rows, controller.num_params)
    return scale * np.random.default_rng(seed).standard_normal(shape)


def observations(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, N, OBS_DIM)).astype(np.float32)  # (T, N, S)


def drive(
    agent: LatentAgent, obs: np.ndarray, is_first: np.ndarray, always_reset: bool = True
) -> tuple[np.ndarray, list, list]:
    """Feed obs (T, N, S) one step at a time; return env actions (T, N, ...) and the agent's h_t and z_t.

    `always_reset=False` calls `reset` only at steps where some sub-env starts an episode."""
    actions, hidden, latent = [], [], []
    for t in range(len(obs)):
        if always_reset or is_first[t].any():
            agent.reset(is_first[t])
        actions.append(agent(obs[t]))
        hidden.append(agent.hidden.clone())
        latent.append(agent.latent.clone())
    return np.stack(actions), hidden, latent


@torch.no_grad()
def test_agent_follows_observe_step_by_step(model):
    controller = make_controller()
    params = random_params(controller, N)
    agent = LatentAgent(model, controller, params, N)
    obs = observations()
    is_first = np.zeros((T, N), dtype=bool)
    is_first[0] = True
    is_first[5, 1] = True  # sub-env 1 starts a new episode at step 5
    actions, hidden, latent = drive(agent, obs, is_first)
    assert actions.shape == (T, N) and actions.dtype == np.int64

    # observe over the same observations; action[t] is the one that led to obs[t] (the agent's choice at t - 1).
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(actions), 2).float()  # (T, N, A)
    led_to = torch.cat([torch.zeros(1, N, 2), one_hot[:-1]]).transpose(0, 1)  # (T, N, A) -> (N, T, A)
    latents = model.encode(torch.as_tensor(obs).transpose(0, 1))  # (N, T, D)
    expected, _ = model.observe(latents, led_to, torch.as_tensor(is_first).T)  # (N, T, hd)
    for t in range(T):
        torch.testing.assert_close(hidden[t], expected[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(latent[t], latents[:, t])
    # ... and the controller acted on [z_t, h_t].
    features = torch.cat([latents, expected], dim=-1)  # (N, T, F): N candidates, T episodes-worth of inputs
    chosen = controller.act(torch.as_tensor(params, dtype=torch.float32), features).argmax(dim=-1)  # (N, T)
    assert np.array_equal(chosen.T.numpy(), actions)
    assert len(np.unique(actions)) == 2, "a constant controller would test little"
    # Without a reset call, a sub-env goes on with its episode.
    sparse, _, _ = drive(LatentAgent(model, controller, params, N), obs, is_first, always_reset=False)
    assert np.array_equal(sparse, actions)


@torch.no_grad()
def test_agent_inside_collect_matches_observe_over_stored_episodes(model, tmp_path: Path):
    """In a real NEXT_STEP vector env, every stored action is what the controller picks from observe's states."""
    controller = make_controller()
    envs, spec = make_vector_env("CartPole-v1", 2, obs="state", seed=0)

    def features_of(store: EpisodeStore):
        for episode in store:
            obs, action, is_first = (torch.tensor(x)[None] for x in (episode.obs, episode.action, episode.is_first))
            latents = model.encode(obs)  # (1, L+1, D)
            hidden, _ = model.observe(latents, action, is_first)  # (1, L+1, hd)
            yield episode, torch.cat([latents, hidden], dim=-1)  # (1, L+1, F)

    # A random controller over an untrained model's CartPole latents picks one action throughout, which would test
    # nothing: centre a random direction of [z, h] on its median over random-policy episodes instead.
    random_store = EpisodeStore(tmp_path / "random", spec=spec)
    collect(envs, RandomPolicy(spec, seed=0), 100, store=random_store)
    direction = torch.randn(FEATURES, generator=torch.Generator().manual_seed(2))
    projections = torch.cat([(features @ direction)[0] for _, features in features_of(random_store)])
    weight = torch.stack([direction, torch.zeros(FEATURES)], dim=1) / projections.std()  # (F, A)
    bias = torch.tensor([-projections.median().item() / projections.std().item(), 0.0])
    params = torch.cat([weight.flatten(), bias])  # (n,)

    store = EpisodeStore(tmp_path / "agent", spec=spec)
    stats = collect(envs, LatentAgent(model, controller, params.numpy(), 2), 150, store=store, cut_partial=False)
    envs.close()
    assert stats.episodes >= 3
    taken = np.concatenate([episode.action[1:, 0] for episode in store])
    assert 0.1 < taken.mean() < 0.9, "the controller should pick both actions"
    for episode, features in features_of(store):
        chosen = controller.act(params[None], features)[0]  # (L+1, A)
        assert np.array_equal(chosen[:-1].numpy(), episode.action[1:])  # the action at t led to obs[t + 1]


@torch.no_grad()
def test_each_sub_env_runs_its_own_controller(model):
    controller = make_controller()
    params = random_params(controller, N, seed=3)
    obs = observations(seed=4)
    is_first = np.zeros((T, N), dtype=bool)
    is_first[0] = True
    together, _, _ = drive(LatentAgent(model, controller, params, N), obs, is_first)
    for i in range(N):  # each alone, with the same observations
        alone, _, _ = drive(LatentAgent(model, controller, params[i], 1), obs[:, i : i + 1], is_first[:, i : i + 1])
        assert np.array_equal(alone[:, 0], together[:, i])
    assert not all(np.array_equal(together[:, 0], together[:, i]) for i in range(1, N))

    # set_parameters switches only the named sub-envs, from their next step on.
    agent = LatentAgent(model, controller, params, N)
    first_half, _, _ = drive(agent, obs[:6], is_first[:6])
    agent.set_parameters(np.array([1]), params[0])
    second_half, _, _ = drive(agent, obs[6:], is_first[6:])
    switched = np.concatenate([first_half, second_half])
    assert np.array_equal(switched[:, [0, 2]], together[:, [0, 2]])
    assert np.array_equal(switched[:6, 1], together[:6, 1])
    one = LatentAgent(model, controller, params[1], 1)
    drive(one, obs[:6, 1:2], is_first[:6, 1:2])  # same history as sub-env 1, then sub-env 0's controller
    one.set_parameters(np.array([0]), params[0])
    rest, _, _ = drive(one, obs[6:, 1:2], is_first[6:, 1:2])
    assert np.array_equal(switched[6:, 1], rest[:, 0])
    with pytest.raises(ValueError, match="parameters"):
        agent.set_parameters(np.array([0]), params[0, :-1])


@torch.no_grad()
def test_exploration(model):
    controller = make_controller()
    params = random_params(controller, seed=5)
    obs = np.random.default_rng(6).standard_normal((200, N, OBS_DIM)).astype(np.float32)
    is_first = np.zeros((200, N), dtype=bool)
    is_first[::20] = True
    greedy_a, _, _ = drive(LatentAgent(model, controller, params, N), obs, is_first)
    greedy_b, _, _ = drive(LatentAgent(model, controller, params, N, seed=9), obs, is_first)
    assert np.array_equal(greedy_a, greedy_b)  # exploration=0: deterministic, the seed does not matter

    def explore(exploration: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        agent = LatentAgent(model, controller, params, N, exploration=exploration, seed=seed)
        taken, controller_choice = [], []
        for t in range(len(obs)):
            agent.reset(is_first[t])
            taken.append(agent(obs[t]))
            features = torch.cat([agent.latent, agent.hidden], dim=-1)[:, None]  # what the controller saw
            weights = agent.parameters
            controller_choice.append(controller.act(weights, features)[:, 0].argmax(dim=-1).numpy())
            assert np.array_equal(agent.action.argmax(dim=-1).numpy(), taken[-1])  # the action taken is fed back
        return np.stack(taken), np.stack(controller_choice)

    taken, choice = explore(1.0, seed=0)
    assert np.isin(taken, [0, 1]).all()
    assert 0.4 < (taken != choice).mean() < 0.6  # uniformly random: differs half the time with 2 actions
    again, _ = explore(1.0, seed=0)
    assert np.array_equal(taken, again)  # same seed, same exploration
    some, choice = explore(0.2, seed=1)
    assert 0.04 < (some != choice).mean() < 0.16


@torch.no_grad()
def test_continuous_exploration_stays_in_bounds(model):
    low, high = np.array([-1.0, 0.0], dtype=np.float32), np.array([1.0, 0.5], dtype=np.float32)
    controller = make_controller(spaces.Box(low, high))
    params = random_params(controller, seed=7, scale=0.1)
    obs = observations(seed=8)
    is_first = np.zeros((T, N), dtype=bool)
    is_first[0] = True
    greedy, _, _ = drive(LatentAgent(model, controller, params, N), obs, is_first)
    noisy, _, _ = drive(LatentAgent(model, controller, params, N, exploration=0.5, seed=0), obs, is_first)
    for actions in (greedy, noisy):
        assert actions.shape == (T, N, 2) and actions.dtype == np.float32
        assert (actions >= low).all() and (actions <= high).all()
    assert not np.allclose(greedy, noisy)
    assert ((noisy == low) | (noisy == high)).any()  # noise of half the range gets clipped


@pytest.mark.parametrize("exploration", [-0.1, 1.5, float("nan")])
def test_invalid_exploration_raises(model, exploration):
    controller = make_controller()
    with pytest.raises(ValueError, match="exploration"):
        LatentAgent(model, controller, np.zeros(controller.num_params), N, exploration=exploration)


@torch.no_grad()
@pytest.mark.parametrize("limit", [500, 4])
def test_recording_keeps_sub_env_zeros_first_episode_as_the_env_replays_it(model, limit):
    """During real-env scoring the recording holds sub-env 0's first episode (its first job) up to `limit` steps, its
    last observation included, with actions in the store's order; replaying those actions in a fresh env seeded as
    sub-env 0 was gives the same observations."""
    from envs import make_env
    from experiments.scoring import run_episodes

    controller = make_controller()
    envs, _ = make_vector_env("CartPole-v1", 2, obs="state", seed=0)
    try:
        agent = LatentAgent(model, controller, random_params(controller), 2)
        recording = agent.record(limit)
        results = run_episodes(envs, agent, random_params(controller, rows=4, seed=3), seed=7)
    finally:
        envs.close()
    obs, action = recording.episode()
    assert len(obs) == len(action) == min(limit, results.lengths[0] + 1)  # job 0 runs in sub-env 0 first
    assert recording.closed  # its episode ended while the other jobs ran
    assert np.all(action[0] == 0) and np.all(action[1:].sum(axis=1) == 1)  # one-hot choices, nothing before step 0
    env, _ = make_env("CartPole-v1", obs="state")
    try:
        replayed = [env.reset(seed=7)[0]]
        for a in action[1:]:
            replayed.append(env.step(int(a.argmax()))[0])
    finally:
        env.close()
    np.testing.assert_array_equal(np.stack(replayed), obs)
    with pytest.raises(ValueError, match="at least 1"):
        agent.record(0)
