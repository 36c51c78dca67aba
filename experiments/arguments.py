"""Command-line helpers shared by the commands that play a run's controller (`wm eval`, `wm video`, `wm export`):
`open_player` (experiments/load.py's `load_player` with the run settings of `--set`), `add_common_arguments` and
the `positive` argument type. The run commands' own arguments are `experiments.rundir.add_run_arguments`."""

from __future__ import annotations

import argparse

import torch

from experiments import config as config_lib
from experiments.load import Player, load_player


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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help=f"one of {', '.join(PLAYER_SETTINGS)} (repeatable), e.g. --set run.threads=1",
    )


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
