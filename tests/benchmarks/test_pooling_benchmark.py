"""benchmarks/pooling.py runs as a file, collecting its own episodes, and prints a probe R² for every state
dimension of CartPole and every pooling (the quick run's figures are only checked to be finite: 800 random steps
are too few for a probe to read the state)."""

import math

from run_benchmark import quick_run


def test_quick_run_prints_a_probe_r2_per_state_dimension_for_every_pooling():
    from worldmodel.vit import POOLINGS

    records = quick_run("pooling.py")  # keyed by metric: the last pooling's records remain
    assert sorted(records) == ["probe_r2_dim0", "probe_r2_dim1", "probe_r2_dim2", "probe_r2_dim3", "probe_r2_mean"]
    assert all(record["bench"] == "pooling" and math.isfinite(record["value"]) for record in records.values())
    assert records["probe_r2_mean"]["pooling"] == list(POOLINGS)[-1]
    per_dim = [records[f"probe_r2_dim{i}"]["value"] for i in range(4)]
    assert math.isclose(records["probe_r2_mean"]["value"], sum(per_dim) / 4, abs_tol=1e-3)
