"""The benchmark script runs as a file (as the README shows) and prints the metrics it promises."""

from run_benchmark import quick_run


def test_quick_run_prints_every_metric_as_json():
    metrics = quick_run("pretrain.py")
    for precision in ("float32", "bf16"):
        assert metrics[f"matmul_peak_{precision}"]["value"] > 0
        assert metrics[f"train_images_per_s_{precision}"]["value"] > 0
        assert 0 < metrics[f"train_share_of_peak_{precision}"]["value"] < 1.5
    assert metrics["bf16_speedup"]["unit"] == "ratio"
    assert all(r["bench"] == "pretrain" for r in metrics.values())
