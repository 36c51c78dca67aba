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


def test_a_pretrained_encoder_is_probed_as_target_and_context_beside_the_random_vit(tmp_path):
    import json

    import torch

    from experiments import config as config_lib
    from experiments.checkpoint import save_checkpoint
    from experiments.pretraining import build_model

    cfg = config_lib.load_config([])  # the default pretrain encoder: the presets' mini ViT, 64 px, 8 px patches
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "checkpoints" / "latest.pt",
        {
            "command": "pretrain",
            "step": 0,
            "config": config_lib.to_dict(cfg),
            "model": build_model(cfg.pretrain).state_dict(),
        },
    )
    result = run_script("pooling.py", "--quick", "--encoder", str(tmp_path))
    records_of(result)  # it succeeded
    means = [json.loads(line) for line in result.stdout.splitlines() if '"probe_r2_mean"' in line]
    assert [(r["encoder"], r["seed"]) for r in means[:: len(means) // 3]] == [
        ("random", 0),
        ("target", None),
        ("context", None),
    ]
    # An untrained I-JEPA's target encoder is a copy of its context encoder: the same features, the same probe.
    third = len(means) // 3
    assert [r["value"] for r in means[third : 2 * third]] == [r["value"] for r in means[2 * third :]]

    tiny = config_lib.load_config(["debug"])  # a 32 px ViT: not the presets' input
    save_checkpoint(
        tmp_path / "small" / "checkpoints" / "latest.pt",
        {
            "command": "pretrain",
            "step": 0,
            "config": config_lib.to_dict(tiny),
            "model": build_model(tiny.pretrain).state_dict(),
        },
    )
    refused = run_script("pooling.py", "--quick", "--encoder", str(tmp_path / "small"))
    assert refused.returncode != 0 and "this benchmark probes the presets' 64 px" in refused.stderr
