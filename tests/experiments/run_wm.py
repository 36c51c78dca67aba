"""Running `wm` commands in real subprocesses, as a user would, for the end-to-end tests."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# `pytest --precision bf16` (tests/conftest.py) runs every command in bf16, as a CPU with bf16 units would choose to.
PRECISION = os.environ.get("WM_TEST_PRECISION", "auto")
DEBUG = ["--config", str(REPO / "configs/debug.yaml"), "--set", "run.threads=1", "--set", f"run.precision={PRECISION}"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the machine has 2 cores; tests must not fight over them


def wm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `wm <args>` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def start(*args: str) -> subprocess.Popen:
    """Start `wm <args>` in the background (its stderr is captured, for `communicate`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "experiments", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll summary.json until the run has saved a checkpoint at `step` or later."""
    deadline = time.monotonic() + timeout
    while not ((run / "summary.json").exists() and summary(run)["step"] >= step):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"the run never reached step {step}"
        time.sleep(0.02)


def mp4_frames(path: Path):
    """Every decoded frame of an mp4 (T, H, W, 3); an mp4 reader reports len() as inf, so iterate."""
    import imageio
    import numpy as np

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack(list(reader.iter_data()))


def tensorboard_events(run: Path):
    """The run's tensorboard events, loaded (`.Tags()`, `.PluginTagToContent(plugin)`, `.Images(tag)`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    return events


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def untimed(history: list[dict]) -> list[dict]:
    """A cycle's per-iteration records without their timing (decision_ms), which no two runs share."""
    return [{key: value for key, value in record.items() if key != "decision_ms"} for record in history]
