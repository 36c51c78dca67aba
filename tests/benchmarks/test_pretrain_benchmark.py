"""The benchmark script runs as a file (as the README shows) and prints the metrics it promises. Its figures are
timings, so only their relations are checked: a share of the peak above 1 is possible when the peak was measured
while the other core was busy (the tests run two at a time). The figures are printed rounded to 4 decimals."""

import math

import pytest
from run_benchmark import quick_run

pytestmark = pytest.mark.slow  # each test runs a benchmark script as a file


def test_quick_run_prints_every_metric_as_json():
    metrics = quick_run("pretrain.py")
    for precision in ("float32", "bf16"):
        assert metrics[f"matmul_peak_{precision}"]["value"] > 0
        assert metrics[f"train_images_per_s_{precision}"]["value"] > 0
        share, flops = metrics[f"train_share_of_peak_{precision}"]["value"], metrics[f"train_flops_{precision}"]
        assert share > 0
        assert math.isclose(share, flops["value"] / metrics[f"matmul_peak_{precision}"]["value"], rel_tol=1e-2)
        steps_per_s = flops["value"] * 1e9 / flops["flop_per_step"]
        images_per_s = metrics[f"train_images_per_s_{precision}"]["value"]
        assert math.isclose(steps_per_s * flops["batch_size"], images_per_s, rel_tol=1e-2)
    assert metrics["bf16_speedup"]["unit"] == "ratio"
    assert all(r["bench"] == "pretrain" for r in metrics.values())
