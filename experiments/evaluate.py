"""`wm eval --run DIR`: score a run's controller in the real env again, on any finished or interrupted run.

    wm eval --run runs/cartpole                   # the run's own evaluation episodes, replayed
    wm eval --run runs/cartpole --episodes 100 --seed 7

The controller is the run's checkpoints/best.pt (`wm evolve`: the one it chose; `wm cycle`: the best real return so
far), played through the world model it was evolved in: a cycle's best.pt carries that model, an evolve run's names
its `wm train` checkpoint. With the default seed the episodes are the ones the run evaluated on, so an evolve run's
figures come back exactly. Results go to <run>/eval.json (replaced atomically) and stderr.

`open_player` (experiments/load.py's `load_player` with the run settings of `--set`) is shared with `wm video` and
`wm export`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from envs import make_vector_env
from envs.atomic import atomic_write_text
from experiments import config as config_lib
from experiments.cycle import iteration_seed
from experiments.evolve import score_in_env, success_text
from experiments.load import Player, load_player
from experiments.rundir import RunError


def evaluation_seed(player: Player, seed: int | None) -> int:
    """The seed the episodes derive from: by default the one the run evaluated its controller under (a cycle's
    later iterations each have their own)."""
    if seed is not None:
        return seed
    if player.iteration is not None:
        return iteration_seed(player.cfg.run.seed, player.iteration)
    return player.cfg.run.seed


def evaluate(player: Player, episodes: int, envs_count: int, seed: int, show_progress: bool) -> dict:
    """The controller's return over `episodes` real episodes (no exploration), per episode and summed up: the
    episodes `score_in_env` plays for a run with run.seed = `seed`."""
    cfg = player.cfg
    envs, _ = make_vector_env(cfg.env.id, envs_count, obs=cfg.env.obs, size=cfg.env.size,
                              action_repeat=cfg.env.action_repeat, seed=seed)  # fmt: skip
    try:
        figures = score_in_env(envs, player.agent(envs_count), player.parameters, episodes, seed, show_progress)
    finally:
        envs.close()
    return {"run": str(player.path), "controller": player.source, "env": cfg.env.id, "seed": seed, **figures,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


PLAYER_SETTINGS = ("run.threads", "run.progress")
"""What `--set` may change for a command that plays a run's controller: the run's own config says the rest."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """`--set run.threads=N` and `--set run.progress=false`, as every command takes them; shared by `wm eval`,
    `wm video` and `wm export`."""
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help=f"one of {', '.join(PLAYER_SETTINGS)} (repeatable), e.g. --set run.threads=1")  # fmt: skip


def open_player(args: argparse.Namespace) -> Player:
    """Apply the --set run settings (as `args.threads` and `args.progress`) and load the player of --run."""
    for text in args.overrides:
        key = text.split("=", 1)[0].strip()
        if key not in PLAYER_SETTINGS:
            raise config_lib.ConfigError(
                f"--set {key}: this command takes only {', '.join(PLAYER_SETTINGS)}; the run's config says the rest"
            )
    settings = config_lib.load_config([], args.overrides).run
    args.threads, args.progress = settings.threads or None, settings.progress
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_player(args.run)


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
        raise RunError(f"--run {args.run}: no controller yet (no checkpoints/best.pt); a `wm evolve` run has one when "
                       "it finishes, a `wm cycle` run after its first evaluation")  # fmt: skip
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
