"""benchmarks/contention.py runs as a file and prints every figure it promises (no timing assertions: each rate is
only checked to be a positive finite number, and the thread count to follow the busy neighbour)."""

import math

import pytest
from run_benchmark import quick_run

pytestmark = pytest.mark.slow


def test_quick_run_prints_each_phase_alone_and_beside_a_neighbour():
    records = [record for record in quick_run("contention.py", "--settings", "toolkit").values()]
    metrics = {record["metric"] for record in records}
    for phase in ("train_steps", "encode_frames", "cache_fill_frames", "cma_generations"):
        assert {f"{phase}_per_s", f"{phase}_ratio"} <= metrics, metrics
    assert "cache_fill_share_of_batched" in metrics
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in records)
    assert all(r["setting"] == "toolkit" and r["cores"] >= 1 and r["threads"] >= 1 for r in records)
