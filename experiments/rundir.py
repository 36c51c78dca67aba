"""The run directory and the life of a command in it.

    runs/<name>/
      config.yaml      the resolved config, as run
      metrics.jsonl    one JSON object per logged event
      tb/              tensorboard events
      checkpoints/     latest.pt (+ previous.pt), each with a .sha256 beside it
      summary.json     status, command, step, wall_seconds and the command's results
      .lock            locked (fcntl.flock) by the one process writing the run, and holding its pid

A new run refuses a directory that already holds one; `--resume` refuses a directory without one and a
config that differs from the saved one. Nothing starts over or continues silently. One process at a time writes a
run: a second one, new or `--resume`, is refused while the first holds the lock.

Paths inside a run (its episode store, an encoder it holds) are recorded relative to it (`path_in_run`) and read
against where the run lies now (`recorded_path`), so a moved or copied run reads its own files.

Under torchrun every process opens the run, but only rank 0 writes to it (see experiments/distributed.py).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import yaml

from envs.atomic import atomic_write_text
from experiments import config as config_lib
from experiments import distributed
from experiments.inputs import check_inputs

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Keys that may change when a run is resumed: they change how it reports, not what it computes.
RESUMABLE_CHANGES = ("run.device", "run.threads", "run.progress", "run.log_every")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
LOCK_NAME = ".lock"


class RunError(RuntimeError):
    """The run directory cannot be used as asked."""


class RunFailure(RuntimeError):
    """A run stopped for a reason it can name (diverged, too much bad data): reported without a traceback."""


class NonFiniteLossError(RunFailure):
    """Too many non-finite losses or gradients in a row."""


class NonFiniteGuard:
    """Counts training steps skipped for a non-finite loss or gradient (each skips its optimizer step and EMA
    update) and stops the run after `limit` of them in a row, keeping the last good checkpoint."""

    def __init__(self, limit: int, advice: str):
        self.limit, self.advice = limit, advice
        self.total = self.streak = 0

    def record(self, skipped: bool, step: int, loss: float) -> None:
        if not skipped:
            self.streak = 0
            return
        self.total += 1
        self.streak += 1
        print(f"step {step}: non-finite loss or gradient ({loss}); step skipped", file=sys.stderr)
        if self.streak >= self.limit:
            raise NonFiniteLossError(
                f"{self.streak} non-finite losses in a row at step {step}; stopping. The last good checkpoint is "
                f"kept; {self.advice}"
            )

    def state_dict(self) -> dict[str, int]:
        return {"nonfinite_total": self.total, "nonfinite_streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.streak = state["nonfinite_total"], state["nonfinite_streak"]


class RunLock:
    """An exclusive `fcntl.flock` on `<run>/.lock`, which holds the holder's pid: one writer per run directory.

    The kernel drops the lock when its holder ends, however it ends (SIGKILL included), so a dead run never keeps
    another out; the file itself stays (removing it would let two processes lock two different files).
    """

    def __init__(self, run: Path):
        self.path = run / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunError naming the process that holds it; never waits."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"  # empty: it has just locked
            raise RunError(
                f"{self.path.parent} is in use: {who} is writing it (it holds {self.path}); wait for it to end or "
                "stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def lock_run(path: Path, resume: bool) -> RunLock:
    """Lock a run directory (created for a new run), then check that it holds a run (`resume`) or none: checked under
    the lock, or two runs started together would both find it empty."""
    if resume and not path.is_dir():
        raise RunError(f"--resume: {path} holds no run (no config.yaml); start it without --resume")
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path)
    lock.acquire()
    holds = (path / "config.yaml").exists() or (path / "summary.json").exists()
    if resume and not (path / "config.yaml").is_file():
        lock.release()
        raise RunError(f"--resume: {path} holds no run (no config.yaml); start it without --resume")
    if not resume and holds:
        lock.release()
        raise RunError(f"{path} already holds a run; pass --resume to continue it, or choose another --name")
    return lock


def path_in_run(path: str | os.PathLike, run: Path) -> str:
    """How a run records a path: relative to the run when it lies inside it (a moved or copied run then reads its own
    files), absolute otherwise."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(run.resolve()).as_posix()
    except ValueError:
        return str(absolute)


def recorded_path(recorded: str, run: Path) -> Path:
    """A path a run recorded (`path_in_run`), read against where the run lies now; an absolute one (outside the run,
    or written by an older version, which recorded every path so) as it is."""
    path = Path(recorded)
    return path if path.is_absolute() else run / path


def checkpoint_differences(state: dict, path: Path, command: str, cfg: config_lib.Config) -> list[str]:
    """The config differences between a checkpoint and this run that forbid resuming from it (empty when it fits);
    a checkpoint of another command is refused outright."""
    from experiments.checkpoint import CheckpointError

    if state.get("command") != command:
        raise CheckpointError(f"{path} is a checkpoint of '{state.get('command')}', not of '{command}'")
    differences = config_lib.diff(config_lib.from_dict(state["config"]), cfg)
    return [d for d in differences if not d.startswith(RESUMABLE_CHANGES)]


class Interrupted(Exception):
    """Raised by a command's loop after it saved, when SIGINT or SIGTERM asked it to stop."""


class GracefulStop:
    """Turns SIGINT and SIGTERM into a flag that loops check at step boundaries.

    A second signal of the same kind while stopping falls through to the default handler, so a stuck run
    can still be killed with another Ctrl-C.

    Under torchrun the processes must stop at the same step, or the others would wait forever for the one that
    left: loops call `check()` at boundaries every process reaches, where the processes agree (a signal to any of
    them stops all), and `requested` is the last agreed answer. Alone, both are simply "a signal came".
    """

    def __init__(self):
        self.signum: int | None = None
        """The signal this process received."""
        self.agreed: int | None = None
        """The signal the processes agreed on at the last `check()` (under torchrun)."""
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping at the next step boundary", file=sys.stderr)

    @property
    def signalled(self) -> bool:
        """This process received a signal (it may not have been agreed on yet)."""
        return self.signum is not None

    @property
    def requested(self) -> bool:
        """Stop now: a signal came (under torchrun: the processes agreed so at the last `check()`)."""
        return (self.agreed if distributed.active() else self.signum) is not None

    def check(self) -> bool:
        """`requested`, after the processes of a torchrun job agree on it; call it where every process passes."""
        if distributed.active() and self.agreed is None:  # once agreed, agreed everywhere: no need to ask again
            self.agreed = distributed.agree_signal(self.signum)
        return self.requested

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.agreed if distributed.active() else self.signum, 1)


class _Discard:
    """The tensorboard writer of a process that writes nothing (ranks other than 0): every call does nothing."""

    def __getattr__(self, name: str) -> _Discard:
        return self

    def __call__(self, *args, **kwargs) -> _Discard:
        return self


class Run:
    """Writes one run directory. Created by `open_run`; commands log through it.

    Under torchrun only rank 0 writes (`writes`); on the other ranks logging and summaries do nothing. The writer
    holds the run's `lock` until `close`.
    """

    def __init__(self, path: Path, command: str, cfg: config_lib.Config, resumed: bool, lock: RunLock | None = None):
        self.path, self.command, self.cfg, self.resumed = path, command, cfg, resumed
        self.lock = lock
        self.writes = distributed.is_main()
        self.checkpoint_dir = path / "checkpoints"
        if self.writes:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.session_start = time.monotonic()
        summary_path = path / "summary.json"
        self.summary = json.loads(summary_path.read_text()) if resumed and summary_path.exists() else {}
        self.previous_wall = float(self.summary.get("wall_seconds", 0.0))
        self.summary.update(command=command, status="running", name=path.name)
        self.summary.setdefault("step", 0)
        self.summary.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if not resumed and self.writes:
            atomic_write_text(path / "config.yaml", yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        self._metrics = open(path / "metrics.jsonl", "a") if self.writes else None  # noqa: SIM115 - closed in close()
        self._tb = None
        self._tb_start = 0
        self.write_summary()

    # -- logging ------------------------------------------------------------------------------------
    def start_at(self, step: int) -> None:
        """Tell the run its first step (after a resume), so tensorboard drops events past it."""
        self._tb_start = step

    @property
    def tb(self):
        """The tensorboard writer, opened on first use with `purge_step` so resumed steps never repeat."""
        if not self.writes:
            return _Discard()
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            self._tb = SummaryWriter(log_dir=str(self.path / "tb"), purge_step=self._tb_start or None)
        return self._tb

    def log(self, step: int, metrics: dict[str, float], tensorboard: bool = True, tb_step: int | None = None) -> None:
        """One JSON line in metrics.jsonl, and each number as a tensorboard scalar at `tb_step` (default `step`):
        the cycle plots its figures against real env steps, so that runs compare by sample efficiency."""
        if not self.writes:
            return
        record = {"step": step, "time": round(self.wall_seconds, 3), **metrics}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if tensorboard:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step if tb_step is None else tb_step)

    @property
    def wall_seconds(self) -> float:
        """Seconds this run has been working, summed over every session that resumed it."""
        return self.previous_wall + time.monotonic() - self.session_start

    def write_summary(self, **fields) -> None:
        self.summary.update(fields)
        self.summary["wall_seconds"] = round(self.wall_seconds, 2)
        self.summary["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.writes:
            atomic_write_text(self.path / "summary.json", json.dumps(self.summary, indent=2) + "\n")

    def close(self) -> None:
        """Close the logs and release the lock: the last thing a run does (see `execute`)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.lock is not None:
            self.lock.release()


# ------------------------------------------------------------------------------------------------------
# Command-line plumbing shared by every command


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME|YAML",
        help="a shipped preset by name (`wm presets` lists them) or a YAML file (repeatable, applied in order)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one config value, e.g. --set pretrain.optim.steps=500 (repeatable; `wm config` shows them all)",
    )
    parser.add_argument("--name", help="run name under --runs (default: <command>-<timestamp>)")
    parser.add_argument("--run-dir", help="explicit run directory (instead of --runs/--name)")
    parser.add_argument("--runs", default="runs", help="the directory holding runs (default: runs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --name/--run-dir")


def run_path(args: argparse.Namespace, command: str) -> Path:
    """The run directory named on the command line, checked to stay a plain name inside --runs."""
    if args.run_dir:
        return Path(args.run_dir)
    if args.name is None:
        if args.resume:
            raise RunError("--resume needs --name or --run-dir to say which run to continue")
        return Path(args.runs) / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if not RUN_NAME.match(args.name) or ".." in args.name:
        raise RunError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only (no '/', no '..')")
    return Path(args.runs) / args.name


def open_run(args: argparse.Namespace, command: str) -> Run:
    """Resolve the config of the command line (with the resume rules) and open the run directory (`start_run`)."""
    path = run_path(args, command)
    if args.resume:
        saved = path / "config.yaml"
        if not saved.is_file():
            raise RunError(f"--resume: {path} holds no run (no config.yaml); start it without --resume")
        base = yaml.safe_load(saved.read_text())
        original = config_lib.from_dict(base)
        cfg = config_lib.load_config(args.config, args.overrides, base=base)
        changed = [d for d in config_lib.diff(original, cfg) if not d.startswith(RESUMABLE_CHANGES)]
        if changed:
            raise RunError(
                "--resume: the config differs from the run's saved config.yaml:\n  "
                + "\n  ".join(changed)
                + f"\nOnly {', '.join(RESUMABLE_CHANGES)} may change on resume."
            )
        summary = path / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("command") != command:
            raise RunError(f"--resume: {path} is a run of another command, not '{command}'")
    else:
        cfg = config_lib.load_config(args.config, args.overrides)
    return start_run(path, command, cfg, args.resume)


def start_run(path: Path, command: str, cfg: config_lib.Config, resume: bool = False) -> Run:
    """Open the run directory `path` for `command` under `cfg` (a resumed run's own config): refused (RunError,
    InputError) when what it reads cannot serve it, or when it exists and `resume` is False, or is held by a run.

    Under torchrun this is where the processes join their process group: rank 0 alone locks, creates and checks the
    directory (`lock_run`), and the others learn its answer.
    """
    check_inputs(cfg, command, path)  # a missing folder, an env that cannot be made: refused before anything exists
    if distributed.init(cfg.run.device):
        path = distributed.broadcast_object(path)  # a default name holds the time of day: rank 0's
        distributed.check_config(cfg, command)
    lock, refusal = None, None
    if distributed.is_main():
        try:
            lock = lock_run(path, resume)
        except RunError as error:
            refusal = str(error)
    refusal = distributed.broadcast_object(refusal)  # the processes of a torchrun job are refused together
    if refusal is not None:
        raise RunError(refusal)
    return Run(path, command, cfg, resumed=resume, lock=lock)


def execute(run: Run, body: Callable[[Run, GracefulStop], dict]) -> int:
    """Run a command's body, keep summary.json's status true to what happened, return the exit code."""
    with GracefulStop() as stop:
        try:
            results = body(run, stop)
        except Interrupted:
            run.write_summary(status="interrupted")
            print(f"interrupted; resume with --resume --run-dir {run.path}", file=sys.stderr)
            distributed.barrier()  # rank 0 has saved and written: the processes of a torchrun job leave together
            return stop.exit_code
        except RunFailure as error:
            run.write_summary(status="failed", error=f"{type(error).__name__}: {error}")
            print(f"wm {run.command}: failed: {error}", file=sys.stderr)
            return 1
        except BaseException as error:
            run.write_summary(
                status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=8)
            )
            raise
        else:
            run.write_summary(status="done", **results)  # before `close` releases the lock
        finally:
            run.close()
            distributed.teardown()
    return 0
