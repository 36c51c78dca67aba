"""benchmarks/scale.py runs as a file and prints every metric it promises as JSON (no timing assertions)."""

import json
import math
import subprocess
import sys

import pytest
from launch import ENV, REPO

pytestmark = pytest.mark.slow  # each test runs a benchmark script as a file

RATES = ("pretrain_images_per_s", "es_candidates_per_s")


def test_quick_run_prints_each_rate_for_one_and_two_processes_and_their_ratios():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/scale.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["bench"] == "scale" and isinstance(r["value"], float) for r in records)
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in records)
    rates = {(r["metric"], r["processes"]): r for r in records if r["metric"] in RATES}
    assert set(rates) == {(metric, processes) for metric in RATES for processes in (1, 2)}
    assert all(r["threads"] == 1 and r["backend"] == "gloo" for r in rates.values())  # OMP_NUM_THREADS=1
    ratios = {r["metric"]: r["value"] for r in records if r["metric"].endswith("_scaling")}
    assert ratios.keys() == {"pretrain_scaling", "es_scaling"}
    for name, metric in (("pretrain", RATES[0]), ("es", RATES[1])):
        expected = rates[(metric, 2)]["value"] / rates[(metric, 1)]["value"]
        assert math.isclose(ratios[f"{name}_scaling"], expected, rel_tol=1e-2)
