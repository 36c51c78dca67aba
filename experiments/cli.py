"""`wm <command>`: the toolkit's command line (`python -m experiments` is the same)."""

from __future__ import annotations

import errno
import sys

from experiments.config import ConfigError

# Each command is the module experiments/commands/<name>.py, whose `main(argv)` runs it.
COMMANDS = {
    "pretrain": "pretrain an I-JEPA vision encoder on images (standalone)",
    "train": "train a JEPA world model of a gymnasium env from random-policy rollouts",
    "evolve": "evolve a controller with CMA-ES in a world model dream, score it in the env",
    "cycle": "collect -> train -> evolve -> evaluate, iterated: the toolkit's main job",
    "eval": "score a run's controller in the real env again",
    "video": "a video of a run's controller in the real env beside its dream",
    "export": "export a run's policy as one ONNX graph and a .pt2, checked on real steps",
    "images": "write labelled images the project renders (glyphs, fractals) as a folder",
    "runs": "print a table of the runs in a directory",
    "config": "print the resolved config, every field with its documentation",
    "presets": "list the shipped presets (--config NAME) and what each is for",
}
# What the disk or its permissions, not the code, refused: a run directory that cannot be written, a full disk.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def usage() -> str:
    lines = ["usage: wm <command> [options]   (wm <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
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

    module = importlib.import_module(f"experiments.commands.{command}")
    try:
        return module.main(rest)
    except Exception as error:
        message = input_error_message(error)
        if message is None:
            raise  # a bug: its traceback is what a fix needs
        print(f"wm {command}: error: {message}", file=sys.stderr)
        return 2


def input_error_message(error: Exception) -> str | None:
    """The one line for an error that the input or the machine caused (reported with exit code 2), or None for any
    other error. Every command goes through here, so none has its own list."""
    from experiments.checkpoint import CheckpointError
    from experiments.inputs import InputError
    from experiments.rundir import RunError

    if isinstance(error, (ConfigError, RunError, CheckpointError, InputError)):
        return str(error)
    make = sys.modules.get("envs.make")  # not imported: no env was made, so none failed (and `wm runs` stays fast)
    if make is not None and isinstance(error, make.EnvUnavailableError):  # `wm eval`/`wm video` of a run's env
        return f"env: {error}"
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        advice = "free some space, or write runs elsewhere (--runs)" if full else "check the permissions and the disk"
        return f"{error.strerror}{where}; {advice}"
    return None
