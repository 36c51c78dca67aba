"""Scoring controllers in the real env: many episodes, each with its own controller, over one vector env.

`run_episodes` hands episodes ("jobs") to free sub-envs in order; job j runs controller `parameters[j]` for one
episode. The vector env is in gymnasium's NEXT_STEP autoreset mode (see `envs.collect`): after a sub-env's episode
ends, its next step returns a reset observation, and that step starts the next job. An episode cut at `max_steps`
is reset by hand (`reset_mask`). Every sub-env is seeded at the start (`seed + i`), so a call's results depend only
on its arguments.

An env that says in its step info whether an episode succeeded (`info["success"]`, as Parking-v0 does) has each
episode's last word on it collected too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from agents.agent import LatentAgent


class EpisodeResults(NamedTuple):
    """Real-env episodes, in job order."""

    returns: np.ndarray
    """(N,) float64 undiscounted return of each episode."""
    lengths: np.ndarray
    """(N,) int64 agent steps of each episode."""
    env_steps: int
    """The real env steps the episodes took: their agent steps times the vector env's `metadata["action_repeat"]`
    (1 where it names none), a repeat cut short by an episode's end counted whole."""
    successes: np.ndarray | None = None
    """(N,) bool: `info["success"]` at each episode's last step; None when the env never reports one."""


def successes_said(info: dict) -> np.ndarray | None:
    """A vector env's step info -> (N,) bool `info["success"]` per sub-env (False where a sub-env did not set it:
    "_success" marks those that did), or None when no sub-env reports success."""
    if "success" not in info:
        return None
    return np.asarray(info["success"], dtype=bool) & np.asarray(info.get("_success", True), dtype=bool)


def run_episodes(
    envs: VectorEnv,
    agent: LatentAgent,
    parameters: np.ndarray,
    seed: int,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> EpisodeResults:
    """One episode per row of `parameters` (N, n), at most `max_steps` agent steps each (None: the env's own end).

    `agent` must act in `envs.num_envs` sub-envs; an agent with no parameters (a planner: n = 0) is given none.
    `on_step(finished)` is called after each vector step with the number of episodes that just ended.
    """
    jobs, n = len(parameters), envs.num_envs
    if jobs < 1:
        raise ValueError("run_episodes needs at least one row of parameters")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if agent.num_envs != n:
        raise ValueError(f"the agent acts in {agent.num_envs} sub-envs but the vector env has {n}")
    mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:  # another mode would shift every episode's boundary by one step
        raise ValueError(f"run_episodes needs a vector env in NEXT_STEP autoreset mode, got {mode}")
    returns, lengths = np.zeros(jobs), np.zeros(jobs, dtype=np.int64)
    successes, reports_success = np.zeros(jobs, dtype=bool), False
    job = np.full(n, -1)  # job of each sub-env, -1 when it has none (all handed out)
    waiting = np.zeros(n, dtype=bool)  # the sub-env's episode ended: its next step is an autoreset
    next_job = 0

    def assign(slots: np.ndarray) -> None:
        nonlocal next_job
        for i in slots:
            job[i] = next_job if next_job < jobs else -1
            if job[i] >= 0:
                if parameters.shape[1]:
                    agent.set_parameters(np.array([i]), parameters[job[i]])
                next_job += 1

    obs, _ = envs.reset(seed=seed)
    assign(np.arange(n))
    agent.reset(np.ones(n, dtype=bool))
    done = 0
    while done < jobs:
        actions = agent(obs)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        starting = np.zeros(n, dtype=bool)
        starting[waiting] = True  # this step's observation is a reset one: the next job starts from it
        assign(np.flatnonzero(waiting))
        active = ~waiting & (job >= 0)
        returns[job[active]] += rewards[active]
        lengths[job[active]] += 1
        ended = active & (terminated | truncated)
        cut = active & ~ended & (lengths[np.maximum(job, 0)] >= (max_steps or np.inf))
        said = successes_said(info)
        if said is not None:
            reports_success = True
            last = ended | cut
            successes[job[last]] = said[last]
        waiting = ended.copy()
        if cut.any():  # the env goes on, so reset those sub-envs by hand and start their next job now
            obs_reset, _ = envs.reset(options={"reset_mask": cut})
            obs = np.where(cut.reshape(-1, *[1] * (obs.ndim - 1)), obs_reset, obs)
            assign(np.flatnonzero(cut))
            starting |= cut
        finished = int(ended.sum() + cut.sum())
        done += finished
        agent.reset(starting)
        if on_step is not None:
            on_step(finished)
    env_steps = int(lengths.sum()) * int(envs.metadata.get("action_repeat", 1))
    return EpisodeResults(returns, lengths, env_steps, successes if reports_success else None)
