"""`wm config` and `wm presets`, and shipped presets by name from any directory."""

import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml
from run_wm import ENV, REPO

from experiments.config import (
    KEPT_ALTERNATIVES,
    Config,
    ConfigError,
    describe,
    load_config,
    shipped_presets,
    to_dict,
)


def wm_in(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=ENV
    )


def leaf_fields(cfg) -> int:
    return sum(
        leaf_fields(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name)) else 1
        for f in dataclasses.fields(cfg)
    )


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


# -- defaults are the recommended settings; presets hold only what differs

STACKED = {"cartpole_deterministic": "cartpole", "pendulum_deterministic": "pendulum"}  # "stack it after the preset"
SCALES = {"pretrain.encoder.size", "world_model.vit_size", "run.precision"}  # how big, on what: not ways of doing


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": value} of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def switches(cls: type, prefix: str = "") -> dict[str, tuple]:
    """{"section.field": its possible values} of every Literal or bool field."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(switches(tp, f"{prefix}{f.name}."))
        elif typing.get_origin(tp) is typing.Literal:
            out[f"{prefix}{f.name}"] = typing.get_args(tp)
        elif tp is bool:
            out[f"{prefix}{f.name}"] = (False, True)
    return out


def test_a_preset_sets_only_what_differs_from_the_defaults_or_the_preset_it_is_stacked_on():
    for name, path in shipped_presets().items():
        base = leaves(to_dict(load_config([STACKED[name]] if name in STACKED else [])))
        restated = {
            key: value
            for key, value in leaves(yaml.safe_load(path.read_text())).items()
            if base[key] == (list(value) if isinstance(value, tuple) else value)
        }
        assert not restated, f"configs/{name}.yaml restates {restated}"


def test_every_setting_of_a_switch_is_the_default_a_presets_or_a_kept_alternative():
    default = leaves(to_dict(Config()))
    chosen = {}  # every value a shipped preset gives each key
    for path in shipped_presets().values():
        for key, value in leaves(yaml.safe_load(path.read_text())).items():
            chosen.setdefault(key, []).append(value)
    unused = [
        f"{key}={value!r}"
        for key, values in switches(Config).items()
        if key not in SCALES and key != "run.progress"
        for value in values
        if value != default[key] and value not in chosen.get(key, []) and value not in KEPT_ALTERNATIVES.get(key, {})
    ]
    assert not unused, f"settings no preset makes and not kept as alternatives: {unused}"
    for key, kept in KEPT_ALTERNATIVES.items():
        for value, reason in kept.items():
            assert value != default[key] and reason
            deterministic = ["world_model.latent=deterministic"] if key.startswith("world_model.") else []  # SIGReg's
            assert leaves(to_dict(load_config([], [f"{key}={value}", *deterministic])))[key] == value  # a real key


def test_wm_train_without_a_config_trains_the_recommended_model():
    model = Config().world_model
    assert model.freeze_encoder and model.latent == "stochastic" and Config().dream.cont_mode == "sample"
