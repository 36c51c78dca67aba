"""`wm config` and `wm presets`, and shipped presets by name from any directory."""

import dataclasses
import subprocess
import sys

import pytest
from run_wm import ENV, REPO

from experiments.config import Config, ConfigError, describe, load_config, shipped_presets


def wm_in(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=ENV)  # fmt: skip


def leaf_fields(cfg) -> int:
    return sum(leaf_fields(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name)) else 1
               for f in dataclasses.fields(cfg))  # fmt: skip


def test_every_shipped_preset_is_found_by_name():
    files = sorted(path.stem for path in (REPO / "configs").glob("*.yaml"))
    assert sorted(shipped_presets()) == files
    for name in files:
        assert load_config([name]) == load_config([REPO / "configs" / f"{name}.yaml"])


def test_an_unknown_preset_name_is_refused_with_a_close_match():
    with pytest.raises(ConfigError, match=r"'cartpol' is neither a file nor a shipped preset \(did you mean 'cartpole"):
        load_config(["cartpol"])


def test_every_field_is_described_and_the_description_loads_back(tmp_path):
    cfg = load_config(["cartpole"], ["run.seed=3", "pretrain.data.source=folder:/some where/x"])
    lines = describe(cfg)
    leaves = [line for line in lines if not line.rstrip().endswith(":") and ":  #" not in line]
    assert len(leaves) == leaf_fields(Config())
    assert all("  # " in line and line.split("  # ", 1)[1].strip() for line in lines), "a field without its doc"
    saved = tmp_path / "resolved.yaml"
    saved.write_text("\n".join(lines) + "\n")
    assert load_config([saved]) == cfg


@pytest.mark.slow
def test_wm_config_and_wm_presets_work_from_outside_the_clone(tmp_path):
    result = wm_in(tmp_path, "config", "--config", "cartpole", "--set", "run.seed=7")
    assert result.returncode == 0, result.stderr
    assert "  seed: 7  # Seed for every random number generator of the run." in result.stdout
    assert "latent: stochastic  #" in result.stdout  # the cartpole preset, found by name
    presets = wm_in(tmp_path, "presets")
    assert presets.returncode == 0, presets.stderr
    assert [line.split()[0] for line in presets.stdout.splitlines()] == sorted(shipped_presets())
    bad = wm_in(tmp_path, "config", "--config", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "shipped preset" in bad.stderr
