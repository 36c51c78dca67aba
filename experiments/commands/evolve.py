"""`wm evolve`: evolve a controller with CMA-ES inside a trained world model, then score it in the real env.

    wm evolve --config configs/cartpole.yaml --world-model runs/<wm train run>
    wm evolve --config configs/cartpole.yaml --world-model runs/<wm train run> --in real     # model-free baseline
    wm evolve --config configs/cartpole.yaml --world-model runs/<run> --controller runs/<evolve run>  # warm start

With `--set evolve.agent=planner` a planner searches in the dream at every real step instead
(experiments/planning.py); with `--set evolve.agent=actor_critic` an actor-critic is trained in the dream's
imagination (experiments/imagination.py).

The loop lives in experiments/evolution.py. The life of a run: load the world model (its checkpoint must fit this
config's env and model shape) -> encode `dream.start_windows` real windows of its episode store into a pool of start
states -> for each generation: ask CMA-ES for `evolve.population` candidates, score each by its mean return over
`evolve.episodes` rollouts (all of them at once, in one batched dream rollout; with `--in real` in the real env
instead), tell -> choose between the search's mean and its best-ever candidate by their dream return on fresh starts
-> score the choice in the real env over `evolve.eval_episodes` episodes -> summary.json: dream_return,
eval_return_mean/std, the dream-real gap.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from experiments import config as config_lib
from experiments.evolution import SCORING_MODES, evolve, read_warm_start
from experiments.imagination import train_actor_critic
from experiments.load import build_controller, load_world_model, run_checkpoint
from experiments.planning import plan
from experiments.rundir import RunError, add_run_arguments, execute, open_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm evolve", description="Evolve a controller in a world model's dream.")
    add_run_arguments(parser)
    parser.add_argument(
        "--world-model", required=True, metavar="RUN", help="a `wm train` run directory (or its checkpoint file)"
    )
    parser.add_argument(
        "--in",
        dest="mode",
        choices=SCORING_MODES,
        default="dream",
        help="score candidates in the dream (default) or in the real env (the model-free baseline)",
    )
    parser.add_argument("--controller", metavar="RUN", help="warm start from an earlier `wm evolve` run's best.pt")
    args = parser.parse_args(argv)
    world_model = Path(args.world_model)
    if not run_checkpoint(world_model).is_file():
        raise RunError(f"--world-model {world_model}: no checkpoint there (expected a `wm train` run directory)")
    if args.resume and args.controller:
        raise RunError("--resume continues the run's own search; drop --controller")
    warm_start = None if args.controller is None else Path(args.controller)
    world = None
    if not args.resume:
        # A bad config, a world model that does not fit it or a warm start of another shape fails before a run
        # directory exists.
        cfg = config_lib.load_config(args.config, args.overrides)
        world = load_world_model(world_model, cfg)
        if cfg.evolve.agent == "actor_critic" and (args.mode != "dream" or warm_start is not None):
            raise RunError(
                "evolve.agent=actor_critic learns in the dream from scratch: drop --in real and --controller"
            )
        if warm_start is not None:
            read_warm_start(warm_start, build_controller(world.model, world.spec, cfg.evolve))
        if cfg.evolve.agent == "planner" and (args.mode != "dream" or warm_start is not None):
            raise RunError("evolve.agent=planner searches at every real step: drop --in real and --controller")
    run = open_run(args, "evolve")
    if run.cfg.evolve.agent == "planner":
        return execute(run, functools.partial(plan, world_model=world_model, world=world))
    if run.cfg.evolve.agent == "actor_critic":
        return execute(run, functools.partial(train_actor_critic, world_model=world_model, world=world))
    body = functools.partial(evolve, world_model=world_model, mode=args.mode, warm_start=warm_start, world=world)
    return execute(run, body)
