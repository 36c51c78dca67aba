"""Running `wm` commands in real subprocesses, alone or under torchrun, for the distributed end-to-end tests.

Polling a run's summary comes from the end-to-end tests' own helpers (tests/experiments/run_wm.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from run_wm import DEBUG as ONE_THREAD  # noqa: E402
from run_wm import ENV as ONE_THREAD_ENV  # noqa: E402
from run_wm import REPO, summary, wait_for_step  # noqa: E402, F401

DEBUG = [*ONE_THREAD, "--set", "run.progress=false"]
ENV = {**ONE_THREAD_ENV, "WM_DIST_TIMEOUT_S": "120"}  # a process left waiting for a peer fails in 2 minutes, not 30
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def command(args: tuple[str, ...], processes: int) -> list[str]:
    """`python -m experiments <args>`, under torchrun with `processes` processes when more than one."""
    launcher = [*TORCHRUN, str(processes)] if processes > 1 else [sys.executable]
    return [*launcher, "-m", "experiments", *args]


def wm(*args: str, processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `wm <args>` to completion."""
    return subprocess.run(command(args, processes), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)


def start(*args: str, processes: int = 2) -> subprocess.Popen:
    """Start `wm <args>` in the background (stderr captured, for `communicate`)."""
    return subprocess.Popen(
        command(args, processes), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process id of torchrun's worker of global rank `rank` (read from its environment)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"torchrun (pid {launcher.pid}) has no worker of rank {rank} among {children}")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts of the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
