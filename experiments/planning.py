"""The planner acting through a world model in the real env: `wm evolve --set evolve.agent=planner`.

Nothing is searched before acting: at every real step the planner (agents/planner.py) searches action sequences in
the world model's dream, so the run is the planner's real-env evaluation: `evolve.eval_episodes` episodes on
`evolve.eval_envs` sub-envs, seeded as a controller evolved on the same model is scored (the same episodes), and the
milliseconds each decision took. It writes no best.pt (there is no controller to replay); an interrupted run
evaluates again from the start on `--resume`, and its seeded episodes give the figures an uninterrupted run gives.
`wm cycle --set evolve.agent=planner` acts with the same agent (`planning_agent`) on each iteration's model.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from agents.agent import decision_ms
from agents.planner import Planner, PlannerSettings, PlanningAgent
from envs import EnvSpec
from experiments.config import PlannerConfig
from experiments.evolution import eval_envs, score_in_env, success_text
from experiments.load import LoadedWorldModel, action_space, load_world_model
from experiments.rundir import GracefulStop, Run
from experiments.runtime import resolve_device, seed_everything, set_threads
from worldmodel.dynamics.world_model import WorldModel


def planner_settings(cfg: PlannerConfig, seed: int) -> PlannerSettings:
    """The planner's settings from its config section; sub-env b draws from seed + b."""
    return PlannerSettings(**dataclasses.asdict(cfg), seed=seed)


def planning_agent(
    model: WorldModel, spec: EnvSpec, cfg: PlannerConfig, seed: int, num_envs: int, exploration: float = 0.0
) -> PlanningAgent:
    """The planner (planner.*, its rows seeded from `seed`) acting through `model` in `num_envs` sub-envs of the env of
    `spec`, with `exploration` noise on its actions (a cycle's collection) drawn from `seed` too."""
    planner = Planner(model, action_space(spec), planner_settings(cfg, seed), num_envs)
    return PlanningAgent(planner, exploration, seed)


def plan(run: Run, stop: GracefulStop, world_model: Path, world: LoadedWorldModel | None = None) -> dict:
    """Score the planner in the real env through the world model at `world_model` (or `world`, already loaded);
    the summary's figures."""
    cfg, ecfg = run.cfg, run.cfg.evolve
    device = resolve_device(cfg.run.device)
    set_threads(cfg.run, device)
    print(f"run {run.path}: device {device}, the planner ({cfg.planner.method}) in the real env", file=sys.stderr)
    world = world or load_world_model(world_model, cfg)
    model = world.model.to(device).eval()
    seed_everything(cfg.run.seed)
    agent = planning_agent(model, world.spec, cfg.planner, cfg.run.seed, ecfg.eval_envs)
    provenance = {"world_model": str(world.checkpoint.resolve()), "world_model_sha256": world.sha256}
    run.write_summary(
        device=str(device),
        env=world.spec.to_dict(),
        data=provenance,
        agent="planner",
        planner=dataclasses.asdict(cfg.planner),
    )
    envs = eval_envs(cfg, cfg.run.seed)
    try:
        figures = score_in_env(envs, agent, np.zeros(0), ecfg.eval_episodes, cfg.run.seed, cfg.run.progress)
    finally:
        envs.close()
    figures["decision_ms"] = decision_ms(agent)
    run.log(0, {f"eval/{key.removeprefix('eval_')}": v for key, v in figures.items() if isinstance(v, (int, float))})
    print(
        f"the planner: real return {figures['eval_return_mean']:.1f} ± {figures['eval_return_std']:.1f} over "
        f"{ecfg.eval_episodes} episodes{success_text(figures)}; {figures['decision_ms']:.0f} ms a decision for "
        f"{ecfg.eval_envs} sub-envs",
        file=sys.stderr,
    )
    return figures
