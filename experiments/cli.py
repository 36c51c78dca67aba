"""`wm <command>`: the toolkit's command line (`python -m experiments` is the same)."""

from __future__ import annotations

import sys

from experiments.config import ConfigError

COMMANDS = {
    "pretrain": ("experiments.pretrain", "pretrain an I-JEPA vision encoder on images (standalone)"),
    "train": ("experiments.train", "train a JEPA world model of a gymnasium env from random-policy rollouts"),
    "evolve": ("experiments.evolve", "evolve a controller with CMA-ES in a world model dream, score it in the env"),
    "cycle": ("experiments.cycle", "collect -> train -> evolve -> evaluate, iterated: the toolkit's main job"),
    "eval": ("experiments.evaluate", "score a run's controller in the real env again"),
    "video": ("experiments.video_run", "a video of a run's controller in the real env beside its dream"),
    "runs": ("experiments.runs", "print a table of the runs in a directory"),
}


def usage() -> str:
    lines = ["usage: wm <command> [options]   (wm <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"wm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    import importlib

    from experiments.checkpoint import CheckpointError
    from experiments.rundir import RunError

    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(rest)
    except (ConfigError, RunError, CheckpointError) as error:
        print(f"wm {command}: error: {error}", file=sys.stderr)
        return 2
