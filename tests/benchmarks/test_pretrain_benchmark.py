"""The benchmark script runs as a file (as the README shows) and prints the metrics it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_metric_as_json():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/pretrain.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    metrics = {r["metric"]: r for r in records}
    for precision in ("float32", "bf16"):
        assert metrics[f"matmul_peak_{precision}"]["value"] > 0
        assert metrics[f"train_images_per_s_{precision}"]["value"] > 0
        assert 0 < metrics[f"train_share_of_peak_{precision}"]["value"] < 1.5
    assert metrics["bf16_speedup"]["unit"] == "ratio"
    assert all(r["bench"] == "pretrain" for r in records)
