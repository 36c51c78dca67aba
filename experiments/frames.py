"""Frames of a gymnasium env under a random policy, with the env's true state: a pretraining source."""

from __future__ import annotations

import numpy as np

from envs import make_env
from experiments.progress import Progress


def collect_env_frames(
    env_id: str, num_frames: int, size: int, seed: int, show_progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Returns frames uint8 (N, size, size, 3), true states float32 (N, S) (None without a state) and each frame's
    episode int64 (N,), counted from 0."""
    env, spec = make_env(env_id, obs="pixels", size=size, seed=seed)
    env.action_space.seed(seed)
    frames = np.empty((num_frames, *spec.obs_shape), dtype=np.uint8)
    states = np.empty((num_frames, spec.state_dim), dtype=np.float32) if spec.state_dim else None
    episodes = np.empty(num_frames, dtype=np.int64)
    episode = 0
    bar = Progress(num_frames, f"frames {env_id}", unit="frame", enabled=show_progress)
    obs, info = env.reset()
    for i in range(num_frames):
        frames[i], episodes[i] = obs, episode
        if states is not None:
            states[i] = info["state"]
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, info = env.reset()
            episode += 1
        bar.update(1)
    bar.close()
    env.close()
    return frames, states, episodes
