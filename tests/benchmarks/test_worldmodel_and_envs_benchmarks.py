"""benchmarks/worldmodel.py and benchmarks/envs.py run as files and print the metrics they promise (no timing
assertions: every figure is only checked to be a positive finite number)."""

import math

import pytest
from run_benchmark import quick_run

PROMISED = {
    "worldmodel.py": [
        "matmul_peak_{precision}",  # the precision it resolved `auto` to: bf16 on a CPU with bf16 units
        *(
            f"train_{what}_{encoder}"
            for what in ("sequences_per_s", "flops", "share_of_peak")
            for encoder in ("frozen_cached", "fine_tuned")
        ),
        "cache_encode_frames_per_s",
        "frozen_cached_speedup",
    ],  # fmt: skip
    "envs.py": [
        "steps_per_s.Parking-v0.raw",
        *(
            f"steps_per_s.{env}.{mode}"
            for env in ("CartPole-v1", "Pendulum-v1", "CarRacing-v3", "Parking-v0")
            for mode in ("sync_1env", "async_2env")
        ),
        "sample.windows_per_s",
        "sample.frames_per_s",
    ],  # fmt: skip
}


@pytest.mark.parametrize("script", sorted(PROMISED))
def test_quick_run_prints_every_promised_metric(script):
    metrics = quick_run(script)
    (precision,) = {record.get("precision") for record in metrics.values()}  # one for every figure; envs.py has none
    for template in PROMISED[script]:
        name = template.format(precision=precision)
        value = metrics[name]["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert all(record["bench"] == script.removesuffix(".py") for record in metrics.values())


def test_a_variant_is_timed_beside_the_preset_and_named_in_its_figures():
    variant = "world_model.sequence_length=12,world_model.horizon=11,world_model.start_stride=4"
    metrics = quick_run("worldmodel.py", "--variant", variant)
    for name in ("variant_train_frames_per_s", "variant_speed_ratio"):
        assert metrics[name]["variant"] == variant
        assert math.isfinite(metrics[name]["value"]) and metrics[name]["value"] > 0, metrics[name]
