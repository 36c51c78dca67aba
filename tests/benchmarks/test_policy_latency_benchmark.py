"""benchmarks/policy_latency.py runs as a file and prints a decision's milliseconds in PyTorch and in onnxruntime and
their ratio (no timing assertions: every figure is only checked to be a positive finite number)."""

import json
import math

import pytest
from run_benchmark import run_script

pytestmark = pytest.mark.slow  # runs a benchmark script as a file


def test_quick_run_prints_each_runtime_s_milliseconds_per_decision_and_their_ratio():
    pytest.importorskip("onnxruntime")
    result = run_script("policy_latency.py", "--quick")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["bench"] == "policy_latency" and r["batch"] == 1 and r["threads"] == 1 for r in records)
    latency = {r["runtime"]: r for r in records if r["metric"] == "ms_per_decision"}
    assert sorted(latency) == ["onnxruntime", "pytorch"]
    for record in latency.values():
        assert record["unit"] == "ms" and math.isfinite(record["value"]) and 0 < record["value"] <= record["p90_ms"]
    (ratio,) = [r for r in records if r["metric"] == "pytorch_over_onnxruntime"]
    assert ratio["value"] == pytest.approx(latency["pytorch"]["value"] / latency["onnxruntime"]["value"], rel=1e-2)
    assert ratio["max_abs_difference"] == 0.0  # the same one-hot action vectors on every frame
    assert [r["metric"] for r in records].count("export_s") == 1
