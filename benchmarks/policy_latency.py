"""Latency of one decision of an exported policy: the same step in PyTorch and in onnxruntime.

    python benchmarks/policy_latency.py                 # the defaults' world model (untrained) and controller
    python benchmarks/policy_latency.py --threads 2     # both runtimes on 2 threads
    python benchmarks/policy_latency.py --quick         # the debug preset, a few decisions: a check that it runs

A decision is one call of `agents.policy.PolicyStep` (encoder, filter and controller: what `wm export` writes) on one
env's observation, carrying the state from the call before, as a deployed policy steps: in PyTorch (eager, no
gradients) and as the ONNX graph `export_onnx` writes, run by onnxruntime (`OnnxPolicy`), both on `--threads`
threads. The observations are real frames of the preset's env under random actions, episodes restarting where they
end; both runtimes see the same ones, and `max_abs_difference` says how far their action vectors came apart. Weights
are untrained: the work per decision does not depend on their values.

Prints JSON lines {"bench": "policy_latency", "metric", "value", "unit", ...the setting}: `ms_per_decision` for
"runtime" "pytorch" and "onnxruntime" (the median over --steps decisions after --warmup, with the 90th percentile as
`p90_ms`), `pytorch_over_onnxruntime` (PyTorch's median over onnxruntime's) and `export_s` (the ONNX export itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.policy import OnnxPolicy, PolicyStep, StatefulStep, export_onnx  # noqa: E402
from envs import make_env  # noqa: E402
from experiments.config import Config, load_config  # noqa: E402
from experiments.inputs import env_spec  # noqa: E402
from experiments.load import build_controller  # noqa: E402
from experiments.training import build_model  # noqa: E402


def emit(metric: str, value: float, unit: str, **extra) -> None:
    record = {"bench": "policy_latency", "metric": metric, "value": round(value, 4), "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def real_frames(cfg: Config, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`steps` observations (T, *obs_shape) of the preset's env under random actions and where episodes start (T,)."""
    env, _ = make_env(cfg.env.id, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames, firsts, first = [], [], True
    for _ in range(steps):
        frames.append(np.array(obs))
        firsts.append(first)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        first = bool(terminated or truncated)
        if first:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames), np.array(firsts)


def time_decisions(
    policy: OnnxPolicy | StatefulStep, frames: np.ndarray, firsts: np.ndarray, warmup: int
) -> tuple[list[float], np.ndarray]:
    """Milliseconds of each decision after the first `warmup` ones, and every action vector chosen (T, A)."""
    times, actions = [], []
    for t, (obs, first) in enumerate(zip(frames, firsts, strict=True)):
        policy.reset(np.array([first]))
        start = time.perf_counter()
        actions.append(policy(obs[None])[0])  # (1, *obs_shape) -> (A,)
        if t >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times, np.stack(actions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="", help="preset whose policy to time (default: the defaults')")
    parser.add_argument("--steps", type=int, default=200, help="timed decisions per runtime (median)")
    parser.add_argument("--warmup", type=int, default=20, help="decisions before the timed ones")
    parser.add_argument("--threads", type=int, default=1, help="threads of each runtime (default 1)")
    parser.add_argument("--quick", action="store_true", help="the debug preset, a few decisions: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.steps, args.warmup = str(_REPO / "configs/debug.yaml"), 10, 2
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        parser.error(
            f"need --steps >= 1, --warmup >= 0, --threads >= 1, got {args.steps}, {args.warmup}, {args.threads}"
        )
    torch.set_num_threads(args.threads)
    cfg = load_config([args.config] if args.config else [])
    spec = env_spec(cfg.env)
    torch.manual_seed(0)
    model = build_model(cfg.world_model, spec)
    controller = build_controller(model, spec, cfg.evolve)
    parameters = np.random.default_rng(0).normal(0.0, 0.1, controller.num_params)
    step = PolicyStep(model, controller, parameters)
    frames, firsts = real_frames(cfg, args.warmup + args.steps)
    preset = Path(args.config).stem if args.config else "defaults"
    setting = {
        "batch": 1,
        "threads": args.threads,
        "model": f"untrained {preset}",
        "obs_shape": list(spec.obs_shape),
        "controller": controller.kind,
        "steps": args.steps,
    }

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        (Path(folder) / "policy.onnx").write_bytes(export_onnx(step, frames[:1]))
        emit("export_s", time.perf_counter() - start, "s", **setting)
        runtimes = {
            "pytorch": StatefulStep(step, step.initial_state(1)),
            "onnxruntime": OnnxPolicy(Path(folder) / "policy.onnx", 1, threads=args.threads),
        }
        medians, chosen = {}, {}
        for name, policy in runtimes.items():
            times, chosen[name] = time_decisions(policy, frames, firsts, args.warmup)
            medians[name] = statistics.median(times)
            p90 = float(np.percentile(times, 90))
            emit("ms_per_decision", medians[name], "ms", runtime=name, p90_ms=round(p90, 4), **setting)
    difference = float(np.abs(chosen["pytorch"] - chosen["onnxruntime"]).max())
    emit(
        "pytorch_over_onnxruntime",
        medians["pytorch"] / medians["onnxruntime"],
        "x",
        max_abs_difference=difference,
        **setting,
    )


if __name__ == "__main__":
    main()
