"""`wm eval --run DIR`: score a run's controller in the real env again, on any finished or interrupted run.

    wm eval --run runs/cartpole                   # the run's own evaluation episodes, replayed
    wm eval --run runs/cartpole --episodes 100 --seed 7

The controller is the run's checkpoints/best.pt (`wm evolve`: the one it chose; `wm cycle`: the best real return so
far), played through the world model it was evolved in: a cycle's best.pt carries that model, an evolve run's names
its `wm train` checkpoint. With the default seed the episodes are the ones the run evaluated on, so an evolve run's
figures come back exactly. Results go to <run>/eval.json (replaced atomically) and stderr.

`load_player` is shared with `wm video`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from agents.agent import LatentAgent
from agents.controllers import Controller
from envs import EnvSpec, make_vector_env
from envs.atomic import atomic_write_text
from experiments import config as config_lib
from experiments.checkpoint import CheckpointError, read_checkpoint
from experiments.config import Config
from experiments.cycle import iteration_seed
from experiments.evolve import build_controller, load_world_model, score_in_env, success_text, world_model_checkpoint
from experiments.rundir import RunError
from experiments.train import build_decoder, build_model
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.world_model import WorldModel

PLAYABLE = ("train", "evolve", "cycle")  # commands whose runs hold a world model


@dataclass
class Player:
    """What a run plays with: its config, its world model (and decoder) and, once it has one, its controller."""

    path: Path
    cfg: Config
    command: str
    spec: EnvSpec
    model: WorldModel
    decoder: Decoder | None
    controller: Controller
    parameters: np.ndarray | None
    """(n,) the controller's parameters; None when the run has no controller yet."""
    source: str
    """Where the model and controller came from, for the reports."""
    iteration: int | None = None
    """A cycle's best iteration (the controller's); None for other runs."""


def read_run(path: Path) -> tuple[Config, str]:
    """A run directory's saved config and command, refused when it is no run or holds no world model."""
    config, summary = path / "config.yaml", path / "summary.json"
    if not config.is_file() or not summary.is_file():
        raise RunError(f"--run {path}: not a run directory (it needs config.yaml and summary.json)")
    command = json.loads(summary.read_text()).get("command")
    if command not in PLAYABLE:
        raise RunError(f"--run {path} is a '{command}' run; runs of {', '.join(PLAYABLE)} hold a world model")
    return config_lib.from_dict(yaml.safe_load(config.read_text())), command


def frozen(module: torch.nn.Module | None, state: dict | None) -> torch.nn.Module | None:
    """`module` with `state` loaded, in eval mode and without gradients (None when there is no state)."""
    if module is None or state is None:
        return None
    module.load_state_dict(state)
    return module.requires_grad_(False).eval()


def model_and_decoder(path: Path, cfg: Config) -> tuple[WorldModel, Decoder | None, EnvSpec]:
    """The world model and decoder of a `wm train` or `wm cycle` checkpoint (a run directory or a file)."""
    world = load_world_model(path, cfg)
    state = read_checkpoint(world.checkpoint)
    trainer = state["trainer"] if state.get("command") == "cycle" else state
    theirs = config_lib.from_dict(trainer["config"]).world_model
    return world.model, frozen(build_decoder(theirs, world.spec), trainer.get("decoder")), world.spec


def load_player(path: Path) -> Player:
    """A run's world model, decoder and controller (see the module's doc for which)."""
    cfg, command = read_run(path)
    best = path / "checkpoints" / "best.pt"
    if not best.is_file():
        # No controller yet: a train run, or a search or cycle interrupted before its first evaluation.
        source = world_model_checkpoint(path) if command != "evolve" else Path(summary_of(path)["data"]["world_model"])
        model, decoder, spec = model_and_decoder(source, cfg)
        controller = build_controller(model, spec, cfg.evolve)
        return Player(path, cfg, command, spec, model, decoder, controller, None, f"{source} (no controller)")
    state = read_checkpoint(best)
    embedded = state.get("world_model")
    if embedded is not None:  # a cycle's best controller, with the model of its iteration
        spec = EnvSpec.from_dict(embedded["env_spec"])
        model = frozen(build_model(cfg.world_model, spec), embedded["model"])
        decoder = frozen(build_decoder(cfg.world_model, spec), embedded["decoder"])
        source = f"{best} (iteration {state['data']['iteration']})"
    elif "world_model" not in state["data"]:
        raise CheckpointError(f"{best} names no world model and carries none (a `wm cycle` best.pt written before "
                              "they carried the model of their iteration); it cannot be replayed")  # fmt: skip
    else:
        model, decoder, spec = model_and_decoder(Path(state["data"]["world_model"]), cfg)
        source = f"{best} in {state['data']['world_model']}"
    controller = build_controller(model, spec, cfg.evolve)
    if controller.describe() != state["controller"]:
        raise CheckpointError(f"{best} holds a controller {state['controller']}, the run's config builds "
                              f"{controller.describe()}")  # fmt: skip
    parameters = state["parameters"].numpy()
    return Player(path, cfg, command, spec, model, decoder, controller, parameters, source,
                  state["data"].get("iteration"))  # fmt: skip


def summary_of(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


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
        agent = LatentAgent(player.model, player.controller, player.parameters, envs_count)
        figures = score_in_env(envs, agent, player.parameters, episodes, seed, show_progress)
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
