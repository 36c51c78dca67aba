"""benchmarks/dream.py runs as a file and prints every metric it promises as JSON (no timing assertions)."""

import math

import pytest
from run_benchmark import quick_run

pytestmark = pytest.mark.slow  # each test runs a benchmark script as a file

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
    metrics = quick_run("dream.py", "--threads", "1")
    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        value = metrics[name]["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert all(r["bench"] == "dream" and r["threads"] == 1 and r["device"] for r in metrics.values())
    assert metrics["real_generation_s"]["real_generation_s_extrapolated_from_steps"] > 0
    assert metrics["dream_transitions_per_s"]["length_mean"] == metrics["dream_transitions_per_s"]["H"]  # full horizon


def test_preset_ends_keeps_the_dream_figures_and_leaves_out_the_real_ones():
    metrics = quick_run("dream.py", "--threads", "1", "--preset-ends")
    assert set(METRICS[:6]) <= set(metrics) and not any(name.startswith("real") for name in metrics)
    assert all(r["ends"].endswith("(the preset's)") for r in metrics.values())
