"""Speed of evolving in the dream: one batched rollout for a whole population versus a loop over candidates, one
full CMA-ES generation, and the same generation scored in the real env.

    python benchmarks/dream.py                        # a world model of configs/cartpole.yaml's shape (untrained)
    python benchmarks/dream.py --world-model RUN      # a trained `wm train` run, from its own start states
    python benchmarks/dream.py --quick                # the debug preset, tiny sizes: a check that it runs

Prints JSON lines {"bench": "dream", "metric", "value", "unit", ...the setting: device, threads, P, E, H}.

Metrics (P candidates x E episodes x H steps; a linear controller over [z, h], as `wm evolve` builds it):
    dream_transitions_per_s   one `worldmodel.dream.rollout.rollout` of all P*E rows at once (median of --repeats)
    loop_transitions_per_s    the same rollouts candidate by candidate, E rows each (same model, starts, noise)
    batched_over_loop         their ratio; `max_return_diff` on it says how far the two returns drifted apart
    generation_s              one CMA-ES generation through `CMAES.step` with `experiments.evolution.DreamScorer`,
    ask_tell_s, rollout_s       split into pycma's ask + tell and the scoring rollout (medians of --repeats)
    real_steps_per_s          env steps/s of `experiments.scoring.run_episodes` with a `LatentAgent` in the pixel env
                              (`evolve.eval_envs` sub-envs in this process, each frame encoded by the world model)
    real_generation_s         P*E*H / real_steps_per_s: the real generation EXTRAPOLATED from the measured steps
                              (field real_generation_s_extrapolated_from_steps); 204,800 steps are too many to run
    real_over_dream           real_generation_s / generation_s

Every dream rollout runs the full horizon (continue threshold 1e-6, no disagreement limit): the worst case, which
is also what the real generation is extrapolated to (every episode H steps). Untrained, the model's continue head
is near 0.5 everywhere; with --world-model, `dream_length_mean` says whether a trained one still ran to the end.
With --preset-ends the rollouts end as the run's `dream` settings end them (CartPole's: a draw of the continue
head): a rollout steps only the rows still going, so the time then follows the mean length, not the horizon. The
real-env metrics are left out then (their extrapolation assumes every episode runs H steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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

from agents.agent import LatentAgent  # noqa: E402
from agents.controllers import Controller  # noqa: E402
from agents.evolution import CMAES  # noqa: E402
from benchmarks.pretrain import synchronize  # noqa: E402
from envs import EnvSpec, make_vector_env  # noqa: E402
from experiments import config as config_lib  # noqa: E402
from experiments.checkpoint import read_checkpoint  # noqa: E402
from experiments.evolution import DreamScorer  # noqa: E402
from experiments.inputs import env_spec  # noqa: E402
from experiments.load import action_space, dream_settings, load_world_model, run_checkpoint, start_pool  # noqa: E402
from experiments.runtime import resolve_device  # noqa: E402
from experiments.scoring import run_episodes  # noqa: E402
from experiments.training import build_model  # noqa: E402
from worldmodel.dream.rollout import DreamSettings, DreamState, draw_noise, rollout  # noqa: E402
from worldmodel.dynamics.world_model import WorldModel  # noqa: E402

SIGMA = 0.1  # spread of the benchmark's candidates around zero (evolve.sigma's default)
POOL = 1024  # random start states of an untrained model


def emit(metric: str, value: float, unit: str, **extra) -> None:
    record = {"bench": "dream", "metric": metric, "value": round(float(value), 4), "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def timed(device: torch.device, fn):
    """(seconds, result) of fn()."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def untrained_model(cfg: config_lib.Config, device: torch.device) -> tuple[WorldModel, EnvSpec, DreamState]:
    """A world model of the preset's shape with random weights, and random start states (the work per step does not
    depend on the weights)."""
    torch.manual_seed(0)
    spec = env_spec(cfg.env)
    model = build_model(cfg.world_model, spec).requires_grad_(False).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    pool = DreamState(
        torch.randn(POOL, model.hidden_dim, generator=generator).to(device),
        torch.randn(POOL, model.latent_dim, generator=generator).to(device),
    )
    return model, spec, pool


def trained_model(path: Path, device: torch.device) -> tuple[WorldModel, EnvSpec, DreamState, config_lib.Config]:
    """A `wm train` run's world model and start states from its episodes, under the run's own config."""
    cfg = config_lib.from_dict(read_checkpoint(run_checkpoint(path))["config"])
    world = load_world_model(path, cfg, device)
    return world.model, world.spec, start_pool(world, cfg, device), cfg


def dream_rates(model, controller, pool, settings, candidates, episodes, repeats, device) -> dict[str, float]:
    """Transitions/s of one batched rollout of every candidate's episodes and of a loop over candidates."""
    population = len(candidates)
    params = torch.as_tensor(candidates, dtype=torch.float32, device=device)  # (P, n)
    index = np.random.default_rng(0).integers(0, len(pool.latent), size=episodes)
    rows = torch.as_tensor(np.tile(index, population), device=device)  # (P*E,) candidate-major
    starts = pool.select(rows)
    noise = draw_noise(
        population * episodes, settings, model.latent_dim, torch.Generator().manual_seed(0), prior=model.samples_prior
    )
    noise = noise._replace(**{k: None if v is None else v.to(device) for k, v in noise._asdict().items()})

    def batched():
        return rollout(model, controller.policy(params, episodes), starts, settings, noise)

    def loop():
        parts = []
        for p in range(population):
            own = slice(p * episodes, (p + 1) * episodes)  # candidate p's E rows of the batched rollout
            start = DreamState(starts.hidden[own], starts.latent[own])
            parts.append(
                rollout(model, controller.policy(params[p : p + 1], episodes), start, settings, noise.rows(own))
            )
        return parts

    batched()  # warm-up (first-call allocations)
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(device, batched)
        times.append(seconds)
    batched_s = statistics.median(times)
    loop_s, parts = timed(device, loop)
    loop_returns = torch.cat([part.returns for part in parts])
    loop_transitions = int(sum(int(part.lengths.sum()) for part in parts))
    transitions = int(result.lengths.sum())
    return {
        "batched_s": batched_s,
        "loop_s": loop_s,
        "dream_transitions_per_s": transitions / batched_s,
        "loop_transitions_per_s": loop_transitions / loop_s,
        "dream_length_mean": float(result.lengths.float().mean()),
        "max_return_diff": float((result.returns - loop_returns).abs().max()),
    }


def generation_times(model, controller, pool, settings, population, episodes, repeats) -> dict[str, float]:
    """Median seconds of one CMA-ES generation scored by `DreamScorer`, and of its two parts."""
    es = CMAES(np.zeros(controller.num_params), SIGMA, population, seed=0)
    scorer = DreamScorer(model, controller, pool, settings, seed=0)
    totals, ask_tell, scoring = [], [], []
    for generation in range(repeats + 1):  # the first one is a warm-up
        start = time.perf_counter()
        told = es.step(functools.partial(scorer, key=generation, episodes=episodes))
        if generation > 0:
            totals.append(time.perf_counter() - start)
            ask_tell.append(told.ask_tell_s)
            scoring.append(told.score_s)
    return {
        "generation_s": statistics.median(totals),
        "ask_tell_s": statistics.median(ask_tell),
        "rollout_s": statistics.median(scoring),
    }


def real_rate(model, controller, cfg, candidates, episodes_per_candidate, real_episodes, num_envs, horizon):
    """Env steps/s of real-env scoring: `real_episodes` episodes of the first candidates, E each, like a generation."""
    jobs = np.repeat(candidates, episodes_per_candidate, axis=0)[:real_episodes]  # (N, n) candidate-major
    envs, _ = make_vector_env(
        cfg.env.id, num_envs, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat, seed=0
    )
    try:
        agent = LatentAgent(model, controller, candidates[0], num_envs)
        run_episodes(envs, agent, jobs[:num_envs], seed=1, max_steps=horizon)  # warm-up: first resets, renderer
        start = time.perf_counter()
        result = run_episodes(envs, agent, jobs, seed=0, max_steps=horizon)
        seconds = time.perf_counter() - start
    finally:
        envs.close()
    steps = int(result.lengths.sum())
    return {
        "real_steps": steps,
        "real_s": seconds,
        "real_steps_per_s": steps / seconds,
        "real_length_mean": float(result.lengths.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(_REPO / "configs/cartpole.yaml"), help="preset whose shapes to time")
    parser.add_argument("--world-model", metavar="RUN", help="a trained `wm train` run (instead of random weights)")
    parser.add_argument("--population", type=int, default=64, help="P, candidates per generation")
    parser.add_argument("--episodes", type=int, default=16, help="E, episodes per candidate")
    parser.add_argument("--horizon", type=int, default=200, help="H, steps per episode")
    parser.add_argument("--repeats", type=int, default=3, help="timed batched rollouts and generations (median)")
    parser.add_argument("--real-episodes", type=int, default=64, help="real-env episodes actually run")
    parser.add_argument("--real-envs", type=int, help="real sub-envs (default: the preset's evolve.eval_envs)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--preset-ends",
        action="store_true",
        help="rollouts end as the config's dream settings end them (default: every one runs the full horizon)",
    )
    parser.add_argument("--quick", action="store_true", help="the debug preset at tiny sizes: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.config = str(_REPO / "configs/debug.yaml")
        args.population, args.episodes, args.horizon, args.repeats, args.real_episodes = 4, 2, 10, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.world_model:
        model, spec, pool, cfg = trained_model(Path(args.world_model), device)
        source = str(args.world_model)
    else:
        cfg = config_lib.load_config([args.config])
        model, spec, pool = untrained_model(cfg, device)
        source = f"untrained {Path(args.config).name}"
    controller = Controller(model.latent_dim + model.hidden_dim, action_space(spec), "linear")
    P, E, H = args.population, args.episodes, args.horizon
    if args.preset_ends:
        settings = dataclasses.replace(dream_settings(cfg.dream), horizon=H)
    else:
        settings = DreamSettings(horizon=H, cont_threshold=1e-6)  # every rollout runs the full horizon
    candidates = np.random.default_rng(0).normal(0.0, SIGMA, size=(P, controller.num_params))  # (P, n)
    wcfg = cfg.world_model
    setting = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": source,
        "shape": f"latent{model.latent_dim}/hidden{model.hidden_dim}/mlp{wcfg.mlp_dim}/ensemble{wcfg.ensemble_size}",
        "controller_params": controller.num_params,
        "P": P,
        "E": E,
        "H": H,
        "ends": f"{settings.cont_mode} (the preset's)" if args.preset_ends else "at the horizon",
    }

    dream = dream_rates(model, controller, pool, settings, candidates, E, args.repeats, device)
    emit(
        "dream_transitions_per_s",
        dream["dream_transitions_per_s"],
        "transitions/s",
        seconds=round(dream["batched_s"], 4),
        length_mean=dream["dream_length_mean"],
        **setting,
    )
    emit(
        "loop_transitions_per_s",
        dream["loop_transitions_per_s"],
        "transitions/s",
        seconds=round(dream["loop_s"], 4),
        **setting,
    )
    emit(
        "batched_over_loop",
        dream["dream_transitions_per_s"] / dream["loop_transitions_per_s"],
        "ratio",
        max_return_diff=dream["max_return_diff"],
        **setting,
    )

    generation = generation_times(model, controller, pool, settings, P, E, args.repeats)
    for metric in ("generation_s", "ask_tell_s", "rollout_s"):
        emit(metric, generation[metric], "s", **setting)
    if args.preset_ends:
        return

    num_envs = args.real_envs or cfg.evolve.eval_envs
    real = real_rate(model, controller, cfg, candidates, E, args.real_episodes, num_envs, H)
    real_setting = {**setting, "env": f"{cfg.env.id}/{cfg.env.obs}{cfg.env.size}", "real_envs": num_envs}
    emit(
        "real_steps_per_s",
        real["real_steps_per_s"],
        "steps/s",
        measured_steps=real["real_steps"],
        measured_episodes=args.real_episodes,
        measured_s=round(real["real_s"], 3),
        length_mean=real["real_length_mean"],
        **real_setting,
    )
    real_generation_s = P * E * H / real["real_steps_per_s"]
    emit(
        "real_generation_s",
        real_generation_s,
        "s",
        real_generation_s_extrapolated_from_steps=real["real_steps"],
        extrapolated_to_steps=P * E * H,
        **real_setting,
    )
    emit("real_over_dream", real_generation_s / generation["generation_s"], "ratio", **real_setting)


if __name__ == "__main__":
    main()
