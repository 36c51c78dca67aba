"""benchmarks/world_model_speed.py and benchmarks/env_speed.py run as files and print the metrics they promise (no
timing assertions: every figure is only checked to be a positive finite number)."""

import math

import pytest
from run_benchmark import REPO, quick_run

pytestmark = pytest.mark.slow  # each test runs a benchmark script as a file

PROMISED = {
    "world_model_speed.py": [
        "matmul_peak_{precision}",  # the precision it resolved `auto` to: bf16 on a CPU with bf16 units
        *(
            f"train_{what}_{encoder}"
            for what in ("sequences_per_s", "flops", "share_of_peak")
            for encoder in ("frozen_cached", "fine_tuned")
        ),
        "cache_encode_frames_per_s",
        "frozen_cached_speedup",
    ],
    "env_speed.py": [
        "steps_per_s.Parking-v0.raw",
        *(
            f"steps_per_s.{env}.{mode}"
            for env in ("CartPole-v1", "Pendulum-v1", "CarRacing-v3", "Parking-v0")
            for mode in ("sync_1env", "async_2env")
        ),
        "sample.windows_per_s",
        "sample.frames_per_s",
    ],
}


@pytest.mark.parametrize("script", sorted(PROMISED))
def test_quick_run_prints_every_promised_metric(script):
    metrics = quick_run(script)
    (precision,) = {record.get("precision") for record in metrics.values()}  # one for all figures; env_speed.py: none
    for template in PROMISED[script]:
        name = template.format(precision=precision)
        value = metrics[name]["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert all(record["bench"] == script.removesuffix(".py") for record in metrics.values())


def test_a_variant_is_timed_beside_the_preset_and_named_in_its_figures():
    variant = "world_model.sequence_length=12,world_model.horizon=11"
    metrics = quick_run("world_model_speed.py", "--variant", variant)
    for name in ("variant_train_frames_per_s", "variant_speed_ratio"):
        assert metrics[name]["variant"] == variant
        assert math.isfinite(metrics[name]["value"]) and metrics[name]["value"] > 0, metrics[name]


PRESETS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_the_world_model_benchmark_runs_on_every_preset(preset):
    """It once failed on its own default preset (the stochastic latent has no single-frame targets for the decoder)."""
    small = ["--set", "world_model.batch_size=2", "--set", "world_model.decoder_batch=2"]
    metrics = quick_run("world_model_speed.py", "--config", str(REPO / "configs" / preset), *small)
    assert metrics["train_sequences_per_s_frozen_cached"]["config"] == preset
    # A fine-tuned encoder is timed with the deterministic latent (the stochastic one predicts frozen features).
    assert metrics["train_sequences_per_s_fine_tuned"]["fine_tuned_latent"] == "deterministic"
    for name, record in metrics.items():
        assert record["value"] is not None and math.isfinite(record["value"]) and record["value"] > 0, name
