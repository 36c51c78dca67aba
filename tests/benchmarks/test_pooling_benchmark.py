"""benchmarks/pooling.py runs as a file, collecting its own episodes, and prints a probe R² for every state
dimension of CartPole and every pooling (the quick run's figures are only checked to be finite: 800 random steps
are too few for a probe to read the state)."""

import math
import re

import pytest
from run_benchmark import quick_run, records_of, run_script

pytestmark = pytest.mark.slow  # each test runs a benchmark script as a file


def test_quick_run_prints_a_probe_r2_per_state_dimension_for_every_pooling():
    from worldmodel.perception.vit import POOLINGS

    records = quick_run("pooling.py")  # keyed by metric: the last pooling's records remain
    assert sorted(records) == ["probe_r2_dim0", "probe_r2_dim1", "probe_r2_dim2", "probe_r2_dim3", "probe_r2_mean"]
    assert all(record["bench"] == "pooling" and math.isfinite(record["value"]) for record in records.values())
    assert records["probe_r2_mean"]["pooling"] == list(POOLINGS)[-1]
    per_dim = [records[f"probe_r2_dim{i}"]["value"] for i in range(4)]
    assert math.isclose(records["probe_r2_mean"]["value"], sum(per_dim) / 4, abs_tol=1e-3)


def test_in_view_probes_parking_frames_that_show_the_space_and_refuses_other_states():
    result = run_script("pooling.py", "--quick", "--env", "wm/ParkingLot-v0", "--steps", "1200", "--in-view")
    records = records_of(result)
    assert sorted(records) == sorted(["probe_r2_mean"] + [f"probe_r2_dim{i}" for i in range(10)])
    assert all(record["frames"] == "in_view" for record in records.values())
    said = re.search(r"--in-view: (\d+) frames show the space \((\d+) to fit", result.stderr)
    shown, fitted = int(said[1]), int(said[2])
    assert 0 < fitted < shown < 1200  # the whole lot: some frames show the space, not all; some are held out

    refused = run_script("pooling.py", "--quick", "--in-view")  # CartPole's state
    assert refused.returncode != 0 and "--in-view is for Parking-v0" in refused.stderr
