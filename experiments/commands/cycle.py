"""`wm cycle`: the toolkit's main job: collect -> train -> evolve -> evaluate, iterated.

    wm cycle --config configs/cartpole.yaml --name cartpole
    wm cycle --config configs/cartpole.yaml --encoder runs/<pretrain run>/checkpoints/latest.pt
    wm cycle --resume --name cartpole

The loop, and what each iteration does: experiments/cycle.py.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from experiments import config as config_lib
from experiments.cycle import check_config, cycle
from experiments.features import load_encoder_weights
from experiments.rundir import RunError, add_run_arguments, execute, open_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wm cycle", description="Collect, train a world model, evolve a controller in it, evaluate: iterated."
    )
    add_run_arguments(parser)
    parser.add_argument("--encoder", metavar="CHECKPOINT", help="start the encoder from a `wm pretrain` checkpoint")
    args = parser.parse_args(argv)
    encoder = None
    if args.resume:
        if args.encoder:
            raise RunError("--resume continues with the run's own encoder; drop --encoder")
    else:
        # A bad config or an encoder that does not fit fails before a run directory exists.
        cfg = config_lib.load_config(args.config, args.overrides)
        check_config(cfg, args.encoder)
        if args.encoder:
            encoder = load_encoder_weights(Path(args.encoder), cfg)
    run = open_run(args, "cycle")
    return execute(run, functools.partial(cycle, encoder=encoder, encoder_path=args.encoder))
