"""One real episode of a run's controller (or of random actions, for a run without one yet), recorded for
`wm video`: `play` returns what the dream replays and the env's own frames."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from agents.agent import LatentAgent, Recording
from envs import make_env
from experiments.load import Player, action_space
from experiments.progress import Progress


class RandomActions:
    """Uniformly random action vectors (one-hot for discrete actions), as `LatentAgent` would give them."""

    def __init__(self, space: spaces.Space, seed: int):
        self.space, self.rng = space, np.random.default_rng(seed)

    def vector(self) -> np.ndarray:
        if isinstance(self.space, spaces.Discrete):
            return np.eye(int(self.space.n), dtype=np.float32)[self.rng.integers(int(self.space.n))]
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


def play(player: Player, steps: int, seed: int, show_progress: bool) -> tuple[Recording, list[np.ndarray], float]:
    """One episode of at most `steps` steps in one real env: its recording (observations and action vectors, for
    the dream), the env's own rendered frames (for runs without a decoder) and its return."""
    cfg = player.cfg
    env, _ = make_env(cfg.env.id, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat)
    random = RandomActions(action_space(player.spec), seed) if player.parameters is None else None
    parameters = player.controller.initial_parameters(seed) if random is not None else player.parameters
    agent = LatentAgent(player.model, player.controller, parameters, 1)
    recording = agent.record(steps + 1)
    rendered: list[np.ndarray] = []
    bar = Progress(steps, "play", unit="step", enabled=show_progress)
    total = 0.0
    try:
        obs, _ = env.reset(seed=seed)
        agent.reset(np.ones(1, dtype=bool))
        for _ in range(steps):
            action = agent(obs[None])[0]  # follows the episode through the model, recording what it sees
            if random is not None:
                vector = random.vector()
                recording.actions[-1] = vector  # the dream replays the action taken, not the controller's
                action = player.controller.env_actions(torch.as_tensor(vector)[None])[0]
            if player.decoder is None:
                rendered.append(np.asarray(env.render()))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            bar.update(1)
            if terminated or truncated:
                break
        agent(obs[None])  # the last observation, into the recording (its action is never taken)
        if player.decoder is None:
            rendered.append(np.asarray(env.render()))
    finally:
        bar.close()
        env.close()
    return recording, rendered, total
