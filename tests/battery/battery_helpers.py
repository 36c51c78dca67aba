"""Helpers of the adversarial tests: the `wm` subprocess runners of tests/experiments/run_wm.py, and a look into a
running run's episode store that never writes to it (opening an `EpisodeStore` may repair, which is a write)."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from run_wm import DEBUG, ENV, REPO, start, summary, wait_for_step, wm  # noqa: E402

__all__ = ["DEBUG", "ENV", "REPO", "start", "summary", "wait_for_step", "wm", "stored_steps", "wait_until"]


def stored_steps(store: Path) -> tuple[int, int]:
    """(episodes, transitions) listed in a store's index.jsonl, read only (0, 0 before the first shard)."""
    index = store / "index.jsonl"
    if not index.is_file():
        return 0, 0
    lines = [json.loads(line) for line in index.read_text().splitlines() if line.endswith("}")]
    steps = [n for line in lines for n in line["steps"]]
    return len(steps), sum(steps) - len(steps)


def wait_until(condition, process, what: str, timeout: float = 120) -> None:
    """Poll `condition()` while `process` runs; fail naming `what` if it ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, (what, process.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
