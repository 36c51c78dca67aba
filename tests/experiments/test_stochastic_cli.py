"""The stochastic world model (`world_model.latent: stochastic`) through every command that trains or uses one: `wm
train`, `wm evolve` and `wm cycle` end to end in real subprocesses on the debug preset, and its refusal in process."""

import json
from pathlib import Path

import numpy as np
import pytest
from run_wm import DEBUG, mp4_frames, summary, wm

from experiments import cli
from experiments.checkpoint import read_checkpoint

STOCHASTIC = ["--set", "world_model.latent=stochastic", "--set", "world_model.freeze_encoder=true"]
LINEAR_PARAMS = (16 + 32) * 2 + 2  # a linear controller over [z, h] of the debug world model, CartPole's 2 actions


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "stochastic"
    result = wm("train", *DEBUG, *STOCHASTIC, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.slow
def test_train_logs_the_kl_and_scores_the_posterior(trained):
    done = summary(trained)
    assert done["status"] == "done" and done["step"] == 30
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    kl = [r["loss/kl"] for r in records if "loss/kl" in r]
    assert len(kl) == 15 and all(value >= 1.0 for value in kl)  # at least the free nats of every step
    for key in ("pred_error_k1", "pred_error_k5", "reward_error", "cont_auc", "effective_rank", "probe_r2_zh"):
        assert np.isfinite(done["model"][key]), key
    state = read_checkpoint(trained / "checkpoints/latest.pt")
    assert any(name.startswith("posterior_head.") for name in state["model"])
    assert len(mp4_frames(trained / done["video"]["path"])) == 16  # the dream beside reality, decoded


@pytest.mark.slow
def test_evolve_in_the_stochastic_dream(trained, tmp_path):
    run = tmp_path / "evolve"
    result = wm("evolve", *DEBUG, *STOCHASTIC, "--world-model", str(trained), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and np.isfinite(done["dream_return"]) and done["eval_return_mean"] >= 8
    assert read_checkpoint(run / "checkpoints/best.pt")["parameters"].shape == (LINEAR_PARAMS,)


@pytest.mark.slow
def test_a_cycle_with_the_stochastic_model(tmp_path):
    run = tmp_path / "cycle"
    result = wm("cycle", *DEBUG, *STOCHASTIC, "--set", "cycle.iterations=2", "--set", "cycle.collect_steps=300",
                "--run-dir", str(run))  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["iterations"] == 2
    assert all(np.isfinite(entry["dream_return"]) for entry in done["history"])


def test_a_stochastic_model_with_a_trainable_encoder_is_refused(tmp_path, capsys):
    run = tmp_path / "refused"
    code = cli.main(["train", *DEBUG, "--set", "world_model.latent=stochastic", "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2 and "world_model.latent" in stderr and "freeze_encoder" in stderr, stderr
    assert not run.exists()
