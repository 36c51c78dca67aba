"""run_episodes (experiments/scoring.py) over a real CartPole vector env in NEXT_STEP autoreset mode, against
independent single envs stepped by hand: one episode per parameter row in job order, cut at max_steps, each job
with a fresh agent state, reproducible per seed."""

from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from agents.agent import LatentAgent
from agents.controllers import Controller
from envs import EpisodeStore, RandomPolicy, collect, make_env, make_vector_env
from envs.parking import ScriptedParker, ScriptedParkers
from experiments.evolution import STREAM_EVAL, STREAM_REAL, RealScorer, score_in_env
from experiments.runtime import step_seed
from experiments.scoring import EpisodeResults, run_episodes
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel

TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=3)
FEATURES = 8 + 16
CONTROLLER = Controller(FEATURES, gym.spaces.Discrete(2), "linear")


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel((4,), 2, **TINY).eval()


def constant(action: int) -> np.ndarray:
    """Weight 0 and a bias favouring `action`: always pushes left (0) or right (1)."""
    params = np.zeros(CONTROLLER.num_params)
    params[-2 + action] = 1.0
    return params


@pytest.fixture(scope="module")
def varied(model, tmp_path_factory) -> np.ndarray:
    """A controller reading [z, h] whose choice varies within an episode: a random direction of the features,
    centred on its median over random-policy CartPole episodes (an uncentred one picks one action throughout)."""
    envs, spec = make_vector_env("CartPole-v1", 2, obs="state", seed=100)
    store = EpisodeStore(Path(tmp_path_factory.mktemp("random")), spec=spec)
    collect(envs, RandomPolicy(spec, seed=0), 100, store=store)
    envs.close()
    direction = torch.randn(FEATURES, generator=torch.Generator().manual_seed(1))
    projections = []
    with torch.no_grad():
        for episode in store:
            obs, action, is_first = (torch.tensor(x)[None] for x in (episode.obs, episode.action, episode.is_first))
            latents = model.encode(obs)  # (1, L+1, D)
            hidden, _ = model.observe(latents, action, is_first)  # (1, L+1, hd)
            projections.append(torch.cat([latents, hidden], dim=-1)[0] @ direction)  # (L+1,)
    projections = torch.cat(projections)
    scale = projections.std().item()
    weight = np.stack([direction.numpy(), np.zeros(FEATURES)], axis=1) / scale  # (F, A)
    return np.concatenate([weight.ravel(), [-projections.median().item() / scale, 0.0]])


class Reference(NamedTuple):
    results: EpisodeResults
    sub_env: list[int]
    """The sub-env that ran each job."""
    actions: list[list[int]]
    """The actions of each job's episode."""


class RecordingAgent(LatentAgent):
    """A LatentAgent that keeps, per sub-env, the actions of each stretch from an episode start to the next."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stretches: list[list[list[int]]] = [[] for _ in range(self.num_envs)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        starts = self.first.copy()
        actions = super().__call__(obs)
        for i in range(self.num_envs):
            if starts[i]:
                self.stretches[i].append([])
            self.stretches[i][-1].append(int(actions[i]))
        return actions


def reference(model, parameters: np.ndarray, seed: int, num_envs: int, max_steps: int | None) -> Reference:
    """The same jobs on independent gymnasium envs, one job at a time with a fresh one-env agent.

    Sub-env i is seeded seed + i at its first reset and continues its RNG after. The job -> sub-env schedule of a
    NEXT_STEP vector env: a job starting at vector step s that ends by the env after L steps hands its sub-env on
    at step s + L (the autoreset step) and the next job starts at s + L + 1; one cut at max_steps hands it on at
    step s + L - 1, after the autoresets of that step, and the next job starts at s + L. Ties go by sub-env index.
    """
    envs = [gym.make("CartPole-v1") for _ in range(num_envs)]
    seeded = [False] * num_envs
    hand_out = [(-1, 0, i) for i in range(num_envs)]  # (vector step, 0: autoreset / 1: cut, sub-env)
    returns, lengths = np.zeros(len(parameters)), np.zeros(len(parameters), dtype=np.int64)
    sub_env, actions = [], []
    for job, params in enumerate(parameters):
        step, _, i = hand_out.pop(hand_out.index(min(hand_out)))
        sub_env.append(i)
        actions.append([])
        obs, _ = envs[i].reset(seed=None if seeded[i] else seed + i)
        seeded[i] = True
        agent = LatentAgent(model, CONTROLLER, params, 1)
        agent.reset(np.array([True]))
        start = step + 1
        while True:
            actions[-1].append(int(agent(obs[None])[0]))
            obs, reward, terminated, truncated, _ = envs[i].step(actions[-1][-1])
            agent.reset(np.array([False]))
            returns[job] += reward
            lengths[job] += 1
            if terminated or truncated:
                hand_out.append((start + lengths[job], 0, i))
                break
            if max_steps is not None and lengths[job] >= max_steps:
                hand_out.append((start + lengths[job] - 1, 1, i))
                break
    for env in envs:
        env.close()
    return Reference(EpisodeResults(returns, lengths, int(lengths.sum())), sub_env, actions)


def score(model, parameters, seed: int, num_envs: int, max_steps: int | None, envs=None, **kwargs) -> EpisodeResults:
    return score_recorded(model, parameters, seed, num_envs, max_steps, envs, **kwargs)[0]


def score_recorded(
    model, parameters, seed: int, num_envs: int, max_steps: int | None, envs=None, **kwargs
) -> tuple[EpisodeResults, RecordingAgent]:
    own = envs is None
    if own:
        envs, _ = make_vector_env("CartPole-v1", num_envs, obs="state", seed=seed)
    try:
        agent = RecordingAgent(model, CONTROLLER, parameters[0], num_envs)
        return run_episodes(envs, agent, parameters, seed, max_steps, **kwargs), agent
    finally:
        if own:
            envs.close()


def assert_same_episodes(result: EpisodeResults, agent: RecordingAgent, expected: Reference) -> None:
    """Same returns and lengths, and each job's actions are those of its episode alone on its sub-env."""
    np.testing.assert_array_equal(result.lengths, expected.results.lengths)
    np.testing.assert_array_equal(result.returns, expected.results.returns)
    for i, stretches in enumerate(agent.stretches):
        mine = [job for job, env in enumerate(expected.sub_env) if env == i]
        assert len(stretches) >= len(mine)
        for job, stretch in zip(mine, stretches[: len(mine)], strict=True):
            # A stretch ends with the ignored action on the terminal observation, unless the episode was cut.
            assert stretch[: result.lengths[job]] == expected.actions[job], f"job {job} on sub-env {i}"


def jobs(varied: np.ndarray) -> np.ndarray:
    """Distinct controllers in an order that matters: (8, n)."""
    return np.stack([constant(0), varied, varied, constant(1), constant(0), varied, varied, constant(1)])


def test_constant_controller_matches_a_plain_loop(model):
    result = score(model, np.stack([constant(0)] * 4), seed=3, num_envs=1, max_steps=None)
    env = gym.make("CartPole-v1")
    for job in range(4):
        env.reset(seed=3 if job == 0 else None)  # later episodes continue the env's RNG
        length = 0
        while True:
            _, reward, terminated, truncated, _ = env.step(0)
            length += 1
            assert reward == 1.0
            if terminated or truncated:
                break
        assert result.lengths[job] == length and result.returns[job] == length
    assert result.returns.dtype == np.float64 and result.lengths.dtype == np.int64
    assert len(set(result.lengths.tolist())) > 1  # the episodes differ: each started from its own reset state


@pytest.mark.parametrize("num_envs", [1, 2, 3])
@pytest.mark.parametrize("max_steps", [None, 20])
def test_run_episodes_equals_independent_envs(model, varied, num_envs, max_steps):
    parameters = jobs(varied)
    finished = []
    result, agent = score_recorded(model, parameters, 7, num_envs, max_steps, on_step=finished.append)
    assert result.returns.shape == result.lengths.shape == (len(parameters),)
    assert_same_episodes(result, agent, reference(model, parameters, 7, num_envs, max_steps))
    np.testing.assert_array_equal(result.returns, result.lengths)  # CartPole: reward 1 per step
    assert sum(finished) == len(parameters)
    varied_rows = [1, 2, 5, 6]
    assert result.lengths[varied_rows].min() > result.lengths[[0, 3, 4, 7]].max()  # it beats constant pushes
    if max_steps is not None:
        assert result.lengths.max() == max_steps and result.lengths.min() < max_steps  # cut and terminated


def test_max_steps_caps_every_episode(model, varied):
    parameters = np.stack([varied, constant(0), varied, varied, constant(1), varied, varied, varied, varied])
    for max_steps in (1, 4):
        result, agent = score_recorded(model, parameters, 0, 2, max_steps)
        assert result.lengths.tolist() == [max_steps] * len(parameters)
        assert result.returns.tolist() == [float(max_steps)] * len(parameters)
        assert_same_episodes(result, agent, reference(model, parameters, 0, 2, max_steps))


def test_fewer_jobs_than_sub_envs(model, varied):
    parameters = np.stack([varied, constant(1)])
    result, agent = score_recorded(model, parameters, 2, 3, None)
    assert_same_episodes(result, agent, reference(model, parameters, 2, 3, None))


def test_same_seed_same_results_on_a_reused_env(model, varied):
    parameters = jobs(varied)
    envs, _ = make_vector_env("CartPole-v1", 2, obs="state", seed=0)
    try:
        first = score(model, parameters, seed=11, num_envs=2, max_steps=None, envs=envs)
        other = score(model, parameters, seed=12, num_envs=2, max_steps=None, envs=envs)
        again = score(model, parameters, seed=11, num_envs=2, max_steps=None, envs=envs)  # reseeded at the start
    finally:
        envs.close()
    np.testing.assert_array_equal(first.lengths, again.lengths)
    np.testing.assert_array_equal(first.returns, again.returns)
    assert not np.array_equal(first.lengths, other.lengths)
    np.testing.assert_array_equal(other.lengths, reference(model, parameters, 12, 2, None).results.lengths)


def test_invalid_arguments_raise(model):
    envs, _ = make_vector_env("CartPole-v1", 2, obs="state", seed=0)
    agent = LatentAgent(model, CONTROLLER, constant(0), 2)
    with pytest.raises(ValueError, match="at least one"):
        run_episodes(envs, agent, np.zeros((0, CONTROLLER.num_params)), 0)
    with pytest.raises(ValueError, match="max_steps"):
        run_episodes(envs, agent, np.stack([constant(0)]), 0, max_steps=0)
    with pytest.raises(ValueError, match="sub-envs"):
        run_episodes(envs, LatentAgent(model, CONTROLLER, constant(0), 3), np.stack([constant(0)]), 0)
    envs.close()
    same_step = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="NEXT_STEP"):
        run_episodes(same_step, agent, np.stack([constant(0)]), 0)
    same_step.close()


class ScriptedParkingAgent(LatentAgent):
    """Acts by `ScriptedParkers` on Parking-v0's true state (obs="state"), in place of a controller."""

    def __init__(self, num_envs: int):
        torch.manual_seed(0)
        model = JEPAWorldModel((10,), 9, **TINY).eval()
        controller = Controller(FEATURES, gym.spaces.Discrete(9), "linear")
        super().__init__(model, controller, np.zeros(controller.num_params), num_envs)
        self.script = ScriptedParkers(num_envs)

    def reset(self, is_first: np.ndarray) -> None:
        super().reset(is_first)
        self.script.reset(is_first)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.script(obs)


def parking_successes(seed: int, episodes: int) -> list[bool]:
    """Each episode's info["success"] at its end, the scripted parker playing one env stepped by hand."""
    env, _ = make_env("Parking-v0", obs="state")
    parker = ScriptedParker()
    successes = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        parker.reset()
        while True:
            obs, _, terminated, truncated, info = env.step(parker(obs))
            if terminated or truncated:
                successes.append(bool(info["success"]))
                break
    env.close()
    return successes


def test_successes_are_each_episode_s_last_word_and_none_where_the_env_says_nothing(model):
    episodes = 6
    expected = parking_successes(seed=5, episodes=episodes)
    assert any(expected)  # the scripted parker parks
    envs, _ = make_vector_env("Parking-v0", 1, obs="state", seed=5)
    try:
        agent = ScriptedParkingAgent(1)
        parameters = np.zeros((episodes, agent.controller.num_params))  # unused: the script acts
        assert run_episodes(envs, agent, parameters, 5).successes.tolist() == expected
        cut = run_episodes(envs, agent, parameters, 5, max_steps=20)  # too short to park
        assert cut.successes.tolist() == [False] * episodes
        figures = score_in_env(envs, agent, parameters[0], episodes, seed=5, show_progress=False)
        played = parking_successes(step_seed(5, 0, STREAM_EVAL) % 2**31, episodes)  # score_in_env's episodes
        assert figures["eval_success_rate"] == np.mean(played)
    finally:
        envs.close()
    assert score(model, np.stack([constant(0)] * 2), seed=0, num_envs=2, max_steps=None).successes is None  # CartPole
    envs, _ = make_vector_env("CartPole-v1", 2, obs="state", seed=0)
    try:
        agent = LatentAgent(model, CONTROLLER, constant(0), 2)
        assert "eval_success_rate" not in score_in_env(envs, agent, constant(0), 2, seed=0, show_progress=False)
    finally:
        envs.close()


def test_env_steps_with_an_action_repeat_are_the_env_s_own_steps_each_repeat_counted_whole(model):
    """One sub-env always pushing left: its episodes start from the same states with or without a repeat, so the
    repeat-1 lengths are each episode's true env steps, and a repeat of 2 counts each rounded up to even."""
    episodes, seed = 5, 3

    def true_lengths(episode_seed: int) -> np.ndarray:
        envs, _ = make_vector_env("CartPole-v1", 1, obs="state", seed=0)
        try:
            agent = LatentAgent(model, CONTROLLER, constant(0), 1)
            return run_episodes(envs, agent, np.stack([constant(0)] * episodes), episode_seed).lengths
        finally:
            envs.close()

    envs, _ = make_vector_env("CartPole-v1", 1, obs="state", action_repeat=2, seed=0)
    try:
        agent = LatentAgent(model, CONTROLLER, constant(0), 1)
        scorer = RealScorer(envs, agent, seed, max_steps=None)
        returns = scorer(constant(0)[None], key=0, episodes=episodes)
        played = true_lengths(step_seed(seed, 0, STREAM_REAL) % 2**31)
        assert returns[0] == played.mean()  # a reward of 1 an env step, summed over each repeat
        assert scorer.env_steps == (2 * np.ceil(played / 2)).sum() and played.sum() <= scorer.env_steps
        assert scorer.last_lengths.tolist() == np.ceil(played / 2).tolist()
        figures = score_in_env(envs, agent, constant(0), episodes, seed, show_progress=False)
        played = true_lengths(step_seed(seed, 0, STREAM_EVAL) % 2**31)
        assert figures["eval_env_steps"] == (2 * np.ceil(played / 2)).sum()
        assert figures["eval_returns"] == played.astype(float).tolist()
    finally:
        envs.close()
