"""benchmarks/planner.py and benchmarks/probe_variants.py run as files and print what they promise (no timing
assertions: every figure is only checked to be a finite number in its range)."""

import json
import math
import subprocess
import sys

import pytest
from run_benchmark import REPO, run_script

pytestmark = pytest.mark.slow  # runs benchmark scripts as files


def test_the_planner_benchmark_prints_milliseconds_per_decision_for_each_method_and_batch():
    result = run_script("planner.py", "--quick")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    latency = {(r["method"], r["envs"]): r for r in records if r["metric"] == "ms_per_decision"}
    assert sorted(latency) == [("cem", 1), ("cem", 4), ("mppi", 1), ("mppi", 4)]
    for record in latency.values():
        assert record["unit"] == "ms" and math.isfinite(record["value"]) and 0 < record["value"] <= record["p90_ms"]


def test_probe_variants_scores_every_encoder_and_pooling_of_a_pretrain_run(tmp_path):
    run = tmp_path / "pretrain"
    made = subprocess.run([sys.executable, "-m", "experiments", "pretrain", "--config", "debug", "--set",
                           "run.threads=1", "--set", "run.progress=false", "--run-dir", str(run)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = run_script("probe_variants.py", "--run", str(run))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted({(r["encoder"], r["pooling"]) for r in records}) == sorted(
        (encoder, pooling)
        for encoder in ("random", "target", "online")
        for pooling in ("mean", "mean_std", "mean_prenorm")
    )
    for record in records:
        assert record["step"] == 10 and 0 <= record["position_share"] <= 1 and record["centred_rank"] >= 1
        assert all(0 <= record[key] <= 1 for key in ("linear_top1", "knn_none", "knn_centred", "knn_standardised"))
