"""Frames of a gymnasium env under a random policy, with the env's true state: a pretraining source."""

from __future__ import annotations

import numpy as np

from envs import make_env
from experiments.progress import Progress


def collect_env_frames(
    env_id: str, num_frames: int, size: int, seed: int, show_progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns frames uint8 (N, size, size, 3) and true states float32 (N, S), or None without a state."""
    env, spec = make_env(env_id, obs="pixels", size=size, seed=seed)
    env.action_space.seed(seed)
    frames = np.empty((num_frames, *spec.obs_shape), dtype=np.uint8)
    states = np.empty((num_frames, spec.state_dim), dtype=np.float32) if spec.state_dim else None
    bar = Progress(num_frames, f"frames {env_id}", unit="frame", enabled=show_progress)
    obs, info = env.reset()
    for i in range(num_frames):
        frames[i] = obs
        if states is not None:
            states[i] = info["state"]
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, info = env.reset()
        bar.update(1)
    bar.close()
    env.close()
    return frames, states
