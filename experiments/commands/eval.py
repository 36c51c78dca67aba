"""`wm eval --run DIR`: score a run's controller in the real env again, on any finished or interrupted run.

    wm eval --run runs/cartpole                   # the run's own evaluation episodes, replayed
    wm eval --run runs/cartpole --episodes 100 --seed 7

The controller is the run's checkpoints/best.pt (`wm evolve`: the one it chose; `wm cycle`: the best real return so
far), played through the world model it was evolved in: a cycle's best.pt carries that model, an evolve run's names
its `wm train` checkpoint. With the default seed the episodes are the ones the run evaluated on, so an evolve run's
figures come back exactly. Results go to <run>/eval.json (replaced atomically) and stderr.

The scoring lives in experiments/evaluation.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envs.atomic import atomic_write_text
from experiments.arguments import add_common_arguments, open_player, positive
from experiments.evaluation import evaluate, evaluation_seed
from experiments.evolution import success_text
from experiments.rundir import RunError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm eval", description="Score a run's controller in the real env again.")
    parser.add_argument("--run", required=True, type=Path, help="a `wm evolve` or `wm cycle` run directory")
    parser.add_argument("--episodes", type=positive, help="episodes to play (default: the run's evolve.eval_episodes)")
    parser.add_argument("--envs", type=positive, help="sub-envs playing at once (default: the run's evolve.eval_envs)")
    parser.add_argument("--seed", type=int, help="seed of the episodes, as run.seed (default: the run's evaluation's)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    player = open_player(args)
    if player.parameters is None:
        raise RunError(
            f"--run {args.run}: no controller yet (no checkpoints/best.pt); a `wm evolve` run has one when "
            "it finishes, a `wm cycle` run after its first evaluation"
        )
    ecfg = player.cfg.evolve
    episodes, envs_count = args.episodes or ecfg.eval_episodes, args.envs or ecfg.eval_envs
    print(f"evaluating {player.source} on {player.cfg.env.id} over {episodes} episodes", file=sys.stderr)
    figures = evaluate(player, episodes, envs_count, evaluation_seed(player, args.seed), args.progress)
    atomic_write_text(args.run / "eval.json", json.dumps(figures, indent=2) + "\n")
    print(
        f"real return {figures['eval_return_mean']:.1f} ± {figures['eval_return_std']:.1f} over {episodes} episodes"
        f"{success_text(figures)} (mean length {figures['eval_length_mean']:.1f}); written to {args.run / 'eval.json'}",
        file=sys.stderr,
    )
    return 0
