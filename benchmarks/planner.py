"""Latency of one real decision of the planner: CEM and MPPI through the debug-sized and the default-sized model.

    python benchmarks/planner.py                 # debug and defaults, cem and mppi, B = 1 and 4, one thread
    python benchmarks/planner.py --threads 4     # on 4 threads
    python benchmarks/planner.py --quick         # the debug preset, a few decisions: a check that it runs

A decision is one call of `agents.planner.PlanningAgent` on B envs' observations: encode and filter each frame, then
search `PlannerSettings()`'s defaults (N candidate sequences of H steps, I iterations: B*N rows stepped H*I times in the
dream), warm-started from the decision before. The world model is the preset's, untrained: the work per decision does
not depend on the weights, nor on the frames, which are random (uint8 pixels or normal states of the preset's shape).

Prints JSON lines {"bench": "planner", "metric", "value", "unit", ...the setting}: `ms_per_decision` (the median over
--steps decisions after --warmup, with the 90th percentile as `p90_ms`) and `dream_steps_per_s` (B*N*H*I dream rows
stepped per second of decision) for each preset, method and B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.planner import Planner, PlannerSettings, PlanningAgent  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.inputs import env_spec  # noqa: E402
from experiments.load import action_space  # noqa: E402
from experiments.training import build_model  # noqa: E402

PRESETS = {"debug": [str(_REPO / "configs/debug.yaml")], "defaults": []}


def emit(metric: str, value: float, unit: str, **extra) -> None:
    record = {"bench": "planner", "metric": metric, "value": round(value, 4), "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def random_frames(obs_shape: tuple[int, ...], steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    """(T, B, *obs_shape) observations: uint8 pixels for (H, W, C), float32 states for (S,)."""
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        return rng.integers(0, 256, size=(steps, num_envs, *obs_shape), dtype=np.uint8)
    return rng.standard_normal((steps, num_envs, *obs_shape)).astype(np.float32)


def time_decisions(agent: PlanningAgent, frames: np.ndarray, warmup: int) -> list[float]:
    """Milliseconds of each decision on frames (T, B, ...) after the first `warmup`; episodes start at step 0."""
    times = []
    for t, obs in enumerate(frames):
        agent.reset(np.full(agent.num_envs, t == 0))
        start = time.perf_counter()
        agent(obs)
        if t >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed decisions per setting (median)")
    parser.add_argument("--warmup", type=int, default=2, help="decisions before the timed ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--envs", default="1,4", help="comma-separated numbers of envs B planned at once")
    parser.add_argument("--quick", action="store_true", help="the debug preset, a few decisions: a check that it runs")
    args = parser.parse_args(argv)
    presets = {"debug": PRESETS["debug"]} if args.quick else PRESETS
    if args.quick:
        args.steps, args.warmup = 2, 1
    batches = [int(value) for value in args.envs.split(",")]
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or min(batches) < 1:
        parser.error(f"need --steps >= 1, --warmup >= 0, --threads >= 1, --envs >= 1, got {vars(args)}")
    torch.set_num_threads(args.threads)
    for preset, paths in presets.items():
        cfg = load_config(paths)
        spec = env_spec(cfg.env)
        torch.manual_seed(0)
        model = build_model(cfg.world_model, spec).eval()
        for method in ("cem", "mppi"):
            settings = PlannerSettings(method=method)
            for num_envs in batches:
                agent = PlanningAgent(Planner(model, action_space(spec), settings, num_envs))
                times = time_decisions(
                    agent, random_frames(spec.obs_shape, args.warmup + args.steps, num_envs), args.warmup
                )
                median = statistics.median(times)
                setting = {
                    "model": f"untrained {preset}",
                    "latent": cfg.world_model.latent,
                    "env": cfg.env.id,
                    "obs_shape": list(spec.obs_shape),
                    "method": method,
                    "envs": num_envs,
                    "threads": args.threads,
                    "steps": args.steps,
                    **{
                        k: v
                        for k, v in dataclasses.asdict(settings).items()
                        if k in ("horizon", "candidates", "elites", "iterations")
                    },
                }
                emit("ms_per_decision", median, "ms", p90_ms=round(float(np.percentile(times, 90)), 4), **setting)
                rows = num_envs * settings.candidates * settings.horizon * settings.iterations
                emit("dream_steps_per_s", rows / (median / 1000), "1/s", **setting)


if __name__ == "__main__":
    main()
