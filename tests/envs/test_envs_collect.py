"""collect over real vector envs: counting, cutting at terminated/truncated, NEXT_STEP autoreset, the store."""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from envs import EpisodeStore, RandomPolicy, WorkerTimeoutError, collect, make_env, make_vector_env

CARTPOLE_X, CARTPOLE_THETA = 2.4, 12 * 2 * np.pi / 360  # its termination thresholds


def cartpole_failed(state: np.ndarray) -> np.ndarray:
    return (np.abs(state[..., 0]) > CARTPOLE_X) | (np.abs(state[..., 2]) > CARTPOLE_THETA)


def test_episodes_are_cut_at_termination_and_never_span_a_reset(tmp_path: Path) -> None:
    envs, spec = make_vector_env("CartPole-v1", 3, obs="state", seed=0)
    store = EpisodeStore(tmp_path, spec=spec)
    progress = []
    stats = collect(envs, RandomPolicy(spec, seed=0), 500, store=store, on_step=progress.append)
    envs.close()

    assert 500 <= stats.steps < 503 and sum(progress) == stats.steps
    assert stats.episodes == stats.terminated == len(stats.lengths) > 10  # random CartPole only terminates
    assert len(store) == stats.episodes + stats.cut
    assert sum(e.length for e in store) == stats.steps  # every transition stored exactly once
    ended = [e for e in store if e.terminated]
    assert sorted(e.length for e in ended) == sorted(stats.lengths)
    assert sorted(round(e.total_return, 4) for e in ended) == sorted(round(r, 4) for r in stats.returns)
    for episode in store:
        state = episode.state
        # Oracle: CartPole terminates exactly when it fails, and it restarts within +-0.05 of upright.
        assert np.all(np.abs(state[0]) <= 0.05)  # the first step is a reset state
        assert not cartpole_failed(state[:-1]).any()  # no failure inside an episode: no reset was crossed
        assert cartpole_failed(state[-1]) == episode.terminated
        np.testing.assert_array_equal(episode.obs, episode.state)  # obs="state": the obs is the state
        assert np.all(episode.action.sum(axis=1)[1:] == 1) and not episode.action[0].any()  # one-hot
        assert np.all(episode.reward[1:] == 1.0)


def test_truncation_is_not_termination(tmp_path: Path) -> None:
    envs, spec = make_vector_env("Pendulum-v1", 2, obs="state", action_repeat=2, seed=1)
    store = EpisodeStore(tmp_path, spec=spec)
    # Pendulum ends only at its time limit: 200 env steps = 100 agent steps. 2 x 225 steps: 4 episodes and 2 cut.
    stats = collect(envs, RandomPolicy(spec, seed=1), 450, store=store)
    envs.close()
    assert stats.episodes == 4 and stats.terminated == 0 and stats.lengths == (100,) * 4
    assert stats.cut == 2 and len(store) == 6  # the two open episodes are cut as truncated
    for episode in store:
        assert not episode.is_terminal.any() and episode.is_last[-1]
        low, high = np.float32(spec.action_low[0]), np.float32(spec.action_high[0])
        assert np.all((episode.action[1:] >= low) & (episode.action[1:] <= high))
    windows = store.sample(8, 50, np.random.default_rng(0))
    assert windows.cont.min() == 1.0  # truncation keeps the future


class CountdownEnv(gym.Env):
    """Observation = [episode number, step]; episode k lasts 2 + k % 3 steps, ending by termination when k is
    even and by truncation when odd, so autoreset bookkeeping can be checked exactly."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(0, 1000, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == 2 + self.episode % 3
        terminated, truncated = done and self.episode % 2 == 0, done and self.episode % 2 == 1
        return np.array([self.episode, self.t], np.float32), float(self.t), terminated, truncated, {}


class HangEnv(CountdownEnv):
    """Sub-env whose second `step` hangs when it was seeded with 1."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.hang = seed == 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if getattr(self, "hang", False) and self.t == 1:
            time.sleep(120)
        return super().step(action)


for _id, _cls in (("EnvsTest/Countdown-v0", CountdownEnv), ("EnvsTest/Hang-v0", HangEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)


class RecordingPolicy:
    """Action 0 always; records each batch of observations with the is_first mask it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []
        self._mask = None

    def reset(self, is_first: np.ndarray) -> None:
        self._mask = is_first

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.seen.append((obs.copy(), self._mask))
        return np.zeros(len(obs), dtype=np.int64)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_next_step_autoreset_bookkeeping(tmp_path: Path, asynchronous: bool) -> None:
    envs, spec = make_vector_env("EnvsTest/Countdown-v0", 2, obs="state", seed=0, asynchronous=asynchronous)
    store = EpisodeStore(tmp_path)
    policy = RecordingPolicy()
    stats = collect(envs, policy, 40, store=store, cut_partial=False)
    envs.close()
    # Each stored episode is one whole countdown episode [k, 0], [k, 1], ..., [k, 2 + k % 3], ended as the env said;
    # the reset step that NEXT_STEP autoreset inserts between episodes is in none of them.
    assert len(store) == stats.episodes and stats.cut == 0
    numbers = []
    for episode in store:
        k = int(episode.obs[0, 0])
        numbers.append(k)
        assert np.all(episode.obs[:, 0] == k)
        assert episode.obs[:, 1].tolist() == list(range(2 + k % 3 + 1))
        assert episode.terminated == (k % 2 == 0)
        assert episode.reward.tolist() == [0.0] + [float(t) for t in range(1, 2 + k % 3 + 1)]
    count = stats.episodes // 2
    assert sorted(numbers) == sorted(list(range(count)) * 2)  # both sub-envs, no episode lost or split
    open_steps = stats.steps - sum(e.length for e in store)
    assert 0 <= open_steps <= 2 * 4  # what was still running when the budget was reached
    # The policy was told exactly when an observation starts an episode (step counter 0).
    for obs, is_first in policy.seen:
        np.testing.assert_array_equal(is_first, obs[:, 1] == 0)


def test_sync_and_async_collect_the_same(tmp_path: Path) -> None:
    results = []
    for asynchronous in (False, True):
        envs, spec = make_vector_env("CartPole-v1", 2, obs="pixels", size=16, seed=5, asynchronous=asynchronous)
        store = EpisodeStore(tmp_path / str(asynchronous), spec=spec)
        collect(envs, RandomPolicy(spec, seed=3), 120, store=store)
        envs.close()
        results.append(list(store))
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.action, b.action)


def test_sub_envs_are_seeded_seed_plus_index() -> None:
    envs, _ = make_vector_env("CartPole-v1", 3, obs="state", seed=10)
    obs, _ = envs.reset()
    envs.close()
    for i in range(3):
        np.testing.assert_array_equal(obs[i], make_env("CartPole-v1", obs="state", seed=10 + i)[0].reset()[0])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_vector_env_names_its_action_repeat_in_its_own_metadata(asynchronous: bool) -> None:
    envs, _ = make_vector_env("CartPole-v1", 2, obs="state", action_repeat=3, seed=0, asynchronous=asynchronous)
    plain, _ = make_vector_env("CartPole-v1", 1, obs="state", seed=0)
    try:
        assert envs.metadata["action_repeat"] == 3 and plain.metadata["action_repeat"] == 1
        assert "action_repeat" not in gym.make("CartPole-v1").unwrapped.metadata  # the env class's stays untouched
    finally:
        envs.close()
        plain.close()


def test_hung_async_worker_is_named() -> None:
    envs, _ = make_vector_env("EnvsTest/Hang-v0", 2, obs="state", seed=0, asynchronous=True, timeout_s=1.5)
    envs.reset()
    envs.step(np.zeros(2, np.int64))
    with pytest.raises(WorkerTimeoutError, match=r"EnvsTest/Hang-v0: worker\(s\) \[1\].*within 1.5 s"):
        envs.step(np.zeros(2, np.int64))
    assert envs.closed


def test_random_policy_respects_the_spec() -> None:
    _, spec = make_env("MountainCarContinuous-v0", obs="state")
    actions = RandomPolicy(spec, seed=0)(np.zeros((500, 2)))
    assert actions.shape == (500, 1) and actions.dtype == np.float32
    assert actions.min() >= -1 and actions.max() <= 1 and actions.std() > 0.3
    _, discrete = make_env("Acrobot-v1", obs="state")
    assert set(RandomPolicy(discrete, seed=0)(np.zeros((300, 6))).tolist()) == {0, 1, 2}
    first = RandomPolicy(discrete, seed=4)(np.zeros((20, 6)))
    np.testing.assert_array_equal(first, RandomPolicy(discrete, seed=4)(np.zeros((20, 6))))


def test_held_random_actions_are_the_fresh_draws_repeated() -> None:
    # Equivalence: with hold 3, calls 0-2 give the unheld policy's first draw, calls 3-5 its second, call 6 its third.
    _, spec = make_env("Pendulum-v1", obs="state")
    obs = np.zeros((5, 3))
    unheld = RandomPolicy(spec, seed=4)
    fresh = [unheld(obs) for _ in range(3)]
    held = RandomPolicy(spec, seed=4, hold=3)
    for call, draw in enumerate([0, 0, 0, 1, 1, 1, 2]):
        np.testing.assert_array_equal(held(obs), fresh[draw], err_msg=f"call {call}")
    with pytest.raises(ValueError, match="holds actions for 5 sub-envs, got observations of 2"):
        held(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="hold must be >= 1, got 0"):
        RandomPolicy(spec, hold=0)
