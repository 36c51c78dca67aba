"""The world model's kept alternatives to the default (the stochastic latent over a frozen encoder): the
deterministic latent, over the frozen encoder and over one trained end to end, through every command that trains or
uses a model (`wm train`, `wm evolve`, `wm cycle`) in real subprocesses on the debug preset; and the refusal of a
stochastic latent over a trainable encoder, in process."""

import json
from pathlib import Path

import numpy as np
import pytest
from run_wm import DEBUG, mp4_frames, summary, wm

from experiments import cli
from experiments.checkpoint import read_checkpoint

DETERMINISTIC = ["--set", "world_model.latent=deterministic"]
FINE_TUNED = [*DETERMINISTIC, "--set", "world_model.freeze_encoder=false"]
LINEAR_PARAMS = (16 + 32) * 2 + 2  # a linear controller over [z, h] of the debug world model, CartPole's 2 actions


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "deterministic"
    result = wm("train", *DEBUG, *FINE_TUNED, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.slow
def test_train_a_deterministic_model_with_its_encoder_fine_tuned(trained):
    done = summary(trained)
    assert done["status"] == "done" and done["step"] == 30
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss/latent" in r]) == 15 and not any("loss/kl" in r for r in records)
    for key in ("pred_error_k1", "pred_error_k5", "reward_error", "cont_auc", "effective_rank", "probe_r2_zh"):
        assert np.isfinite(done["model"][key]), key
    state = read_checkpoint(trained / "checkpoints/latest.pt")
    assert not any(name.startswith("posterior_head.") for name in state["model"])
    assert not (trained / "episodes/latents").exists()  # a trainable encoder has no latent cache
    assert len(mp4_frames(trained / done["video"]["path"])) == 16  # the dream beside reality, decoded


@pytest.mark.slow
def test_evolve_in_the_deterministic_dream(trained, tmp_path):
    run = tmp_path / "evolve"
    result = wm("evolve", *DEBUG, *FINE_TUNED, "--world-model", str(trained), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and np.isfinite(done["dream_return"]) and done["eval_return_mean"] >= 8
    assert read_checkpoint(run / "checkpoints/best.pt")["parameters"].shape == (LINEAR_PARAMS,)


@pytest.mark.slow
def test_a_cycle_with_the_deterministic_model_over_the_frozen_encoder(tmp_path):
    run = tmp_path / "cycle"
    result = wm("cycle", *DEBUG, *DETERMINISTIC, "--set", "cycle.iterations=2", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["iterations"] == 2
    assert all(np.isfinite(entry["dream_return"]) for entry in done["history"])
    assert (run / "episodes/latents").is_dir()  # the frozen encoder's features, cached


def test_a_stochastic_model_with_a_trainable_encoder_is_refused(tmp_path, capsys):
    run = tmp_path / "refused"
    code = cli.main(["train", *DEBUG, "--set", "world_model.freeze_encoder=false", "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2 and "world_model.latent" in stderr and "freeze_encoder" in stderr, stderr
    assert not run.exists()
