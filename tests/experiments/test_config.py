from pathlib import Path

import pytest

from experiments.config import Config, ConfigError, diff, load_config, parse_override, to_dict

REPO = Path(__file__).resolve().parents[2]


def error_for(*overrides, paths=()):
    with pytest.raises(ConfigError) as info:
        load_config(list(paths), list(overrides))
    return str(info.value)


def test_defaults_and_presets_load():
    assert load_config() == Config()
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        load_config([preset])


def test_presets_stack_then_overrides_apply_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("pretrain:\n  optim: {steps: 7, batch_size: 4, warmup_steps: 2}\n")
    b.write_text("pretrain:\n  optim: {steps: 9}\n")
    cfg = load_config([a, b], ["pretrain.optim.lr=1e-3", "run.seed=5"])
    assert (cfg.pretrain.optim.steps, cfg.pretrain.optim.batch_size) == (9, 4)
    assert cfg.pretrain.optim.lr == 1e-3 and cfg.run.seed == 5


def test_unknown_key_names_path_and_close_match():
    message = error_for("pretrain.optim.learning_rat=0.1")
    assert "pretrain.optim.learning_rat" in message and "unknown key" in message
    assert "valid keys here" in message
    assert "did you mean 'lr'" in error_for("pretrain.optim.lrr=0.1")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("pretrain.optim.steps=-3", ["pretrain.optim.steps", ">= 1"]),
        ("pretrain.optim.steps=2.5", ["pretrain.optim.steps", "integer"]),
        ("pretrain.encoder.patch_size=5", ["pretrain.encoder.patch_size", "divide"]),
        ("pretrain.mask.target_scale=[0.1,1.2]", ["pretrain.mask.target_scale", "<= 1.0"]),
        ("pretrain.mask.target_scale=0.2", ["pretrain.mask.target_scale", "list of 2"]),
        ("run.precision=half", ["run.precision", "one of"]),
        ("run.device=gpu7", ["run.device", "auto, cpu"]),
        ("run.progress=yes please", ["run.progress", "true or false"]),
        ("pretrain.data.source=http://x", ["pretrain.data.source", "folder:<path>"]),
        ("pretrain.optim.lr=fast", ["pretrain.optim.lr", "number"]),
        ("pretrain.mask.min_keep=40", ["pretrain.mask.min_keep", "half"]),
        ("pretrain=3", ["pretrain", "section"]),
        ("world_model.collect_hold=0", ["world_model.collect_hold", ">= 1, got 0"]),
        ("world_model.horizon=32", ["world_model.horizon", "sequence_length - 1 = 31", "got 32"]),
        ("world_model.latent=bayesian", ["world_model.latent", "deterministic", "stochastic"]),
        ("world_model.free_nats=-1", ["world_model.free_nats", ">= 0, got -1"]),
        ("world_model.kl_balance=1.5", ["world_model.kl_balance", "[0, 1], got 1.5"]),
        # An infinite learning rate made every weight NaN at the first step, and the run saved them.
        ("world_model.lr=inf", ["world_model.lr", "a finite number", "inf"]),
        ("pretrain.optim.lr=.inf", ["pretrain.optim.lr", "a finite number"]),
        ("world_model.decoder_lr=nan", ["world_model.decoder_lr", "a finite number"]),
        ("evolve.sigma=-.inf", ["evolve.sigma", "a finite number"]),
        # The planner's own checks (agents/planner.py), named by the config's key.
        ("planner.elites=300", ["planner.elites: must be in [1, candidates=256], got 300"]),
        ("planner.discount=0", ["planner.discount: must be in (0, 1]"]),
        ("planner.method=random", ["planner.method", "'cem', 'mppi'"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, words):
    message = error_for(override)
    for word in words:
        assert word in message, message


def test_bad_files(tmp_path):
    assert "does not exist" in error_for(paths=[tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("pretrain: [unclosed\n")
    assert "not valid YAML" in error_for(paths=[broken])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "mapping" in error_for(paths=[listy])
    assert "expected key.path=value" in error_for("novalue")


def test_config_is_frozen_and_round_trips():
    cfg = load_config([], ["pretrain.mask.target_scale=[0.1, 0.2]"])
    with pytest.raises(AttributeError):
        cfg.run.seed = 3
    assert load_config(base=to_dict(cfg)) == cfg
    assert diff(cfg, cfg) == []
    other = load_config([], ["pretrain.mask.target_scale=[0.1, 0.2]", "run.seed=2"])
    assert diff(cfg, other) == ["run.seed: 0 != 2"]


def test_override_values_are_read_as_yaml():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("a=true") == {"a": True}
    assert parse_override("a=env:CartPole-v1") == {"a": "env:CartPole-v1"}
