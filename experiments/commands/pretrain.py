"""`wm pretrain`: train an I-JEPA vision encoder on images, standalone (the loop: experiments/pretraining.py)."""

from __future__ import annotations

import argparse

from experiments.pretraining import pretrain
from experiments.rundir import add_run_arguments, execute, open_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm pretrain", description="Pretrain an I-JEPA vision encoder.")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    run = open_run(args, "pretrain")
    return execute(run, pretrain)
