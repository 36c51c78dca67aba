"""benchmarks/dream.py runs as a file and prints every metric it promises as JSON (no timing assertions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRICS = (
    "dream_transitions_per_s",
    "loop_transitions_per_s",
    "batched_over_loop",
    "generation_s",
    "ask_tell_s",
    "rollout_s",
    "real_steps_per_s",
    "real_generation_s",
    "real_over_dream",
)


def test_quick_run_prints_every_metric_as_json():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/dream.py"), "--quick", "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    metrics = {r["metric"]: r for r in records}
    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        value = metrics[name]["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert all(r["bench"] == "dream" and r["threads"] == 1 and r["device"] for r in records)
    assert metrics["real_generation_s"]["real_generation_s_extrapolated_from_steps"] > 0
    assert metrics["dream_transitions_per_s"]["length_mean"] == metrics["dream_transitions_per_s"]["H"]  # full horizon
