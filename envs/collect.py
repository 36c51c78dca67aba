"""Collect episodes from a gymnasium vector env into the episode store.

Autoreset: `make_vector_env` uses gymnasium's NEXT_STEP mode. When sub-env i ends an episode at step k
(terminated or truncated), step k+1 returns its reset observation with reward 0, and the action sent at
k+1 is ignored. `collect` therefore closes the episode at step k and opens a new one with the
observation of step k+1; that step is not a transition and is not counted. No stored transition spans a
reset.

Partial episodes: `collect` resets the envs when it starts, and when `steps` transitions have been
collected the episodes still open are, by default, written to the store cut as truncated (is_last=True,
is_terminal=False: the future exists, it was just not recorded) and counted in `CollectStats.cut`, not in
`episodes`/`returns`/`lengths`. Open episodes with no transition yet are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from envs.spec import EnvSpec
from envs.store import Episode, EpisodeStore


@runtime_checkable
class Policy(Protocol):
    """Maps a batch of observations (N, *obs_shape) to a batch of actions: (N,) ints or (N, A) floats.

    A policy with memory may also define `reset(is_first: np.ndarray) -> None`; `collect` calls it before
    every action with the (N,) mask of sub-envs whose observation starts a new episode.
    """

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions for a spec: integers in [0, action_dim), or floats within the bounds. With `hold` > 1
    each sub-env keeps an action for `hold` calls in a row before drawing the next (across episode ends too: the
    actions are random either way)."""

    def __init__(self, spec: EnvSpec, seed: int | None = None, hold: int = 1) -> None:
        if hold < 1:
            raise ValueError(f"hold must be >= 1, got {hold}")
        self.spec, self.hold = spec, hold
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.held: np.ndarray | None = None  # (N,) or (N, A): the actions being held

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, ...) -> actions (N,) int64 or (N, A) float32."""
        n = len(obs)
        if self.held is not None and len(self.held) != n:
            raise ValueError(f"this policy holds actions for {len(self.held)} sub-envs, got observations of {n}")
        if self.calls % self.hold == 0:
            self.held = self.draw(n)
        self.calls += 1
        return self.held.copy()

    def draw(self, n: int) -> np.ndarray:
        """(N,) int64 or (N, A) float32 fresh uniform actions."""
        if self.spec.discrete:
            return self.rng.integers(0, self.spec.action_dim, size=n)
        low = np.asarray(self.spec.action_low, dtype=np.float32)
        high = np.asarray(self.spec.action_high, dtype=np.float32)
        return self.rng.uniform(low, high, size=(n, self.spec.action_dim)).astype(np.float32).clip(low, high)


@dataclass(frozen=True)
class CollectStats:
    """What one `collect` call did. Returns and lengths are of the episodes that ended (in order of ending)."""

    steps: int
    """Transitions collected, summed over sub-envs."""
    episodes: int
    """Episodes that ended (terminated or truncated by the env)."""
    returns: tuple[float, ...] = field(default_factory=tuple)
    """Undiscounted return of each ended episode."""
    lengths: tuple[int, ...] = field(default_factory=tuple)
    """Transitions in each ended episode."""
    terminated: int = 0
    """How many of the ended episodes terminated (the rest were truncated)."""
    cut: int = 0
    """Open episodes written to the store as truncated when `steps` ran out."""

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @classmethod
    def combine(cls, parts: Sequence[CollectStats]) -> CollectStats:
        """The figures of one collection made of several (the shares of processes), in order."""
        return cls(
            steps=sum(p.steps for p in parts),
            episodes=sum(p.episodes for p in parts),
            returns=tuple(r for p in parts for r in p.returns),
            lengths=tuple(n for p in parts for n in p.lengths),
            terminated=sum(p.terminated for p in parts),
            cut=sum(p.cut for p in parts),
        )


class EpisodeBuffer:
    """Takes an episode store's place in `collect` and keeps each batch of episodes it would have written (one shard
    each): a share of a collection that another process writes into the store."""

    def __init__(self) -> None:
        self.shards: list[list[Episode]] = []

    def add_episodes(self, episodes: Sequence[Episode]) -> None:
        self.shards.append(list(episodes))


class _EpisodeBuilder:
    """Accumulates one sub-env's open episode."""

    def __init__(self, obs: np.ndarray, state: np.ndarray | None) -> None:
        self.obs = [obs]
        self.states = None if state is None else [state]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []

    def add(self, action: np.ndarray, reward: float, obs: np.ndarray, state: np.ndarray | None) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.obs.append(obs)
        if self.states is not None:
            self.states.append(state)

    def build(self, terminated: bool) -> Episode:
        return Episode.from_transitions(
            obs=np.stack(self.obs),
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, dtype=np.float32),
            terminated=terminated,
            states=None if self.states is None else np.stack(self.states),
        )


def collect(
    envs: VectorEnv,
    policy: Callable[[np.ndarray], np.ndarray],
    steps: int,
    store: EpisodeStore | EpisodeBuffer | None = None,
    on_step: Callable[[int], None] | None = None,
    cut_partial: bool = True,
    shard_steps: int = 4096,
) -> CollectStats:
    """Run `policy` in `envs` until `steps` transitions are collected; store each finished episode.

    Args:
        envs: a gymnasium vector env (sync or async) in NEXT_STEP autoreset mode; it is reset first.
        policy: obs (N, *obs_shape) -> actions (N,) or (N, A); see `Policy`.
        steps: transitions to collect, summed over sub-envs (at least this many; the last vector step may add up
            to N - 1 more).
        store: where finished episodes go (None: just count them).
        on_step: progress callback, called after each vector step with the number of new transitions.
        cut_partial: write the episodes still open at the end as truncated (see the module docstring).
        shard_steps: finished episodes are buffered and written as one shard once they hold this many steps
            (and at the end); a crash loses at most the buffer.

    Returns:
        CollectStats.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ValueError(f"collect needs a vector env in NEXT_STEP autoreset mode, got {mode}")
    n = envs.num_envs
    to_vector = _action_encoder(envs.single_action_space)

    obs, infos = envs.reset()
    builders: list[_EpisodeBuilder | None] = [_EpisodeBuilder(obs[i], _state(infos, i)) for i in range(n)]
    starting = np.ones(n, dtype=bool)  # obs[i] is the first observation of an episode
    resetting = np.zeros(n, dtype=bool)  # sub-env i ended last step: this step's result is its reset
    collected = 0
    returns: list[float] = []
    lengths: list[int] = []
    terminated_count = 0
    buffer: list[Episode] = []

    def finish(episode: Episode) -> None:
        if store is None:
            return
        buffer.append(episode)
        if sum(e.num_steps for e in buffer) >= shard_steps:
            store.add_episodes(buffer)
            buffer.clear()

    while collected < steps:
        reset_policy = getattr(policy, "reset", None)
        if callable(reset_policy):
            reset_policy(starting.copy())
        actions = np.asarray(policy(obs))
        if len(actions) != n:
            raise ValueError(f"policy returned {len(actions)} actions for {n} envs")
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        new = 0
        for i in range(n):
            if resetting[i]:  # NEXT_STEP autoreset: the action was ignored, next_obs[i] is a reset observation
                builders[i] = _EpisodeBuilder(next_obs[i], _state(infos, i))
                resetting[i] = False
                starting[i] = True
                continue
            starting[i] = False
            builders[i].add(to_vector(actions[i]), float(rewards[i]), next_obs[i], _state(infos, i))
            new += 1
            if terminations[i] or truncations[i]:
                episode = builders[i].build(terminated=bool(terminations[i]))
                returns.append(episode.total_return)
                lengths.append(episode.length)
                terminated_count += bool(terminations[i])
                finish(episode)
                builders[i] = None
                resetting[i] = True
        collected += new
        obs = next_obs
        if on_step is not None:
            on_step(new)

    cut = 0
    if cut_partial:
        for builder in builders:
            if builder is not None and builder.actions:
                cut += 1
                if store is not None:
                    buffer.append(builder.build(terminated=False))
    if store is not None and buffer:
        store.add_episodes(buffer)
    return CollectStats(
        steps=collected,
        episodes=len(returns),
        returns=tuple(returns),
        lengths=tuple(lengths),
        terminated=terminated_count,
        cut=cut,
    )


def _state(infos: dict[str, Any], i: int) -> np.ndarray | None:
    """info["state"] of sub-env i, or None when the env has none."""
    if "state" not in infos:
        return None
    if not infos["_state"][i]:
        raise RuntimeError(f"sub-env {i} returned no info['state'] while others did")
    return np.asarray(infos["state"][i], dtype=np.float32)


def _action_encoder(space: spaces.Space) -> Callable[[Any], np.ndarray]:
    """Action as the env takes it -> float32 (A,) as stored: discrete one-hot, continuous as is."""
    if isinstance(space, spaces.Discrete):
        eye = np.eye(int(space.n), dtype=np.float32)
        start = int(space.start)
        return lambda action: eye[int(action) - start]
    if isinstance(space, spaces.Box):
        return lambda action: np.asarray(action, dtype=np.float32).reshape(-1)
    raise ValueError(f"collect supports Discrete and Box action spaces, got {space}")
