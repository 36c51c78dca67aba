"""Speed of the real world: env steps/s as pixels, and window sampling from the episode store.

Run: `python benchmarks/env_speed.py [--quick]` (or `python -m benchmarks.env_speed`). Prints one JSON line per
measurement: {"bench": "env_speed", "metric": ..., "value": ..., "unit": ...}.

Metrics:
    steps_per_s.<env>.sync_1env    collect() with a random policy, 1 env in this process
    steps_per_s.<env>.async_2env   collect() with a random policy, 2 envs in 2 worker processes
    steps_per_s.Parking-v0.raw     ParkingEnv.step() alone (cameras rendered), one core
    sample.windows_per_s / sample.frames_per_s   EpisodeStore.sample(B=32, T=16) from a store of 100k 64x64
        frames with the default cache (512 MB, smaller than the 1.2 GB of decoded frames)
    sample.store_build_s           writing that store (setup; not part of the sampling time)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402

from envs import Episode, EpisodeStore, RandomPolicy, collect, make_vector_env  # noqa: E402
from envs.parking import ParkingEnv  # noqa: E402

ENV_IDS = ("CartPole-v1", "Pendulum-v1", "CarRacing-v3", "Parking-v0")


def emit(metric: str, value: float, unit: str) -> None:
    record = {"bench": "env_speed", "metric": metric, "value": round(float(value), 3), "unit": unit}
    print(json.dumps(record), flush=True)


def env_steps_per_second(env_id: str, num_envs: int, asynchronous: bool, steps: int) -> float:
    """Transitions per second through `collect` (random policy, 64x64 pixels), after a short warm-up."""
    envs, spec = make_vector_env(env_id, num_envs, obs="pixels", size=64, seed=0, asynchronous=asynchronous)
    try:
        policy = RandomPolicy(spec, seed=0)
        collect(envs, policy, 4 * num_envs)  # start-up and first resets out of the timing
        start = time.perf_counter()
        stats = collect(envs, policy, steps)
        return stats.steps / (time.perf_counter() - start)
    finally:
        envs.close()


def parking_raw_steps_per_second(steps: int) -> float:
    env = ParkingEnv()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 9, size=steps)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, _, _ = env.step(int(action))
        if terminated:
            env.reset()
    return steps / (time.perf_counter() - start)


def synthetic_episode(index: int, length: int, rng: np.random.Generator) -> Episode:
    """64x64 frames that compress like rendered game frames: a flat background and a moving block."""
    steps = length + 1
    obs = np.empty((steps, 64, 64, 3), np.uint8)
    obs[:] = rng.integers(0, 256, size=3, dtype=np.uint8)
    position = (np.arange(steps) * 0.4 + index) % 54  # (steps,)
    columns = np.arange(64)
    block = (columns[None, :] >= position[:, None]) & (columns[None, :] < position[:, None] + 10)  # (steps, 64)
    obs[:, 20:30][np.broadcast_to(block[:, None, :], (steps, 10, 64))] = (250, 80, 40)
    actions = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=length)]
    states = rng.normal(size=(steps, 4)).astype(np.float32)
    return Episode.from_transitions(obs, actions, np.ones(length, np.float32), index % 3 == 0, states)


def sampling(frames: int, batches: int, directory: Path) -> None:
    rng = np.random.default_rng(0)
    store = EpisodeStore(directory / "episodes")
    start = time.perf_counter()
    written, index = 0, 0
    while written < frames:
        episodes = [synthetic_episode(index + j, 499, rng) for j in range(8)]  # 8 x 500 steps per shard
        store.add_episodes(episodes)
        written += sum(e.num_steps for e in episodes)
        index += len(episodes)
    emit("sample.store_build_s", time.perf_counter() - start, "s")
    emit("sample.store_frames", store.num_steps, "frames")

    store = EpisodeStore(directory / "episodes")  # reopen: the index from disk, caches empty
    generator = np.random.default_rng(1)
    for _ in range(max(batches // 10, 1)):
        store.sample(32, 16, generator)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        store.sample(32, 16, generator)
    elapsed = time.perf_counter() - start
    emit("sample.windows_per_s", batches * 32 / elapsed, "windows/s")
    emit("sample.frames_per_s", batches * 32 * 16 / elapsed, "frames/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs and a 20k-frame store")
    args = parser.parse_args(argv)
    steps = {"CartPole-v1": 1500, "Pendulum-v1": 1500, "CarRacing-v3": 400, "Parking-v0": 4000}
    scale = 0.2 if args.quick else 1.0

    emit("steps_per_s.Parking-v0.raw", parking_raw_steps_per_second(int(20000 * scale)), "steps/s")
    for env_id in ENV_IDS:
        n = max(int(steps[env_id] * scale), 50)
        emit(f"steps_per_s.{env_id}.sync_1env", env_steps_per_second(env_id, 1, False, n), "steps/s")
        emit(f"steps_per_s.{env_id}.async_2env", env_steps_per_second(env_id, 2, True, n), "steps/s")
    with tempfile.TemporaryDirectory() as directory:
        sampling(20_000 if args.quick else 100_000, 50 if args.quick else 300, Path(directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
