"""`wm cycle --set cycle.perception=pretrain`: the perception phase (I-JEPA on the run's own frames) end to end in real
subprocesses on the debug preset, its exact resume, and the refusals of an encoder that does not fit."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from run_wm import DEBUG, start, summary, tensors_equal, untimed, wm

from envs import EpisodeStore
from experiments import cli
from experiments.checkpoint import read_checkpoint, save_checkpoint
from experiments.config import load_config, to_dict
from experiments.features import encoder_fingerprint
from experiments.inputs import env_spec
from experiments.runtime import seed_everything
from experiments.training import build_model

PRETRAIN = ["--set", "cycle.perception=pretrain", "--set", "cycle.iterations=1"]
# Long enough (a few seconds) to be stopped in the middle; debug's run.checkpoint_every is 5.
LONG_PRETRAIN = [*PRETRAIN, "--set", "pretrain.optim.steps=40"]
PHASES = ["collect", "pretrain", "train", "evolve", "evaluate"]


def cycle(run: Path, *args: str) -> subprocess.CompletedProcess:
    return wm("cycle", *DEBUG, *args, "--run-dir", str(run))


def part(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict under `prefix`, with the prefix dropped."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def world_model(run: Path) -> dict[str, torch.Tensor]:
    """The world model of a cycle's last checkpoint."""
    return read_checkpoint(run / "checkpoints/latest.pt")["trainer"]["model"]


def random_init_backbone() -> dict[str, torch.Tensor]:
    """The frozen ViT a debug cycle under cycle.perception=random would read: built as `cycle` builds it."""
    cfg = load_config([DEBUG[1]])
    seed_everything(cfg.run.seed)
    return build_model(cfg.world_model, env_spec(cfg.env)).backbone.state_dict()


def wait_for(path: Path, process: subprocess.Popen, condition: Callable[[dict], bool], timeout: float = 120) -> None:
    """Poll a summary.json (written atomically with every checkpoint) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and condition(json.loads(path.read_text()))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("perception") / "whole"
    result = cycle(run, *PRETRAIN)
    assert result.returncode == 0, result.stderr
    return run, result


def test_the_world_model_freezes_the_ema_target_of_the_pretraining_on_its_own_frames(pretrained):
    run, result = pretrained
    for bar in ("collect CartPole-v1 100%", "pretrain 100%", "encode 100%", "train 100%", "cycle 100%"):
        assert bar in result.stderr, bar
    done = summary(run)
    assert done["status"] == "done" and list(done["phase_seconds"]) == PHASES
    assert all(seconds > 0 for seconds in done["phase_seconds"].values())

    # The perception phase is a `wm pretrain` run of its own inside the cycle's, on iteration 0's training episodes.
    perception = done["perception"]
    assert perception["encoder"] == "perception/checkpoints/latest.pt" and perception["steps"] == 10
    inner = summary(run / "perception")
    assert inner["command"] == "pretrain" and inner["status"] == "done" and inner["step"] == 10
    store = EpisodeStore(run / "episodes", verify=False)
    assert perception["frames"] == store.episode_steps[: perception["episodes"]].sum() == inner["dataset"]["images"]
    assert perception["episodes"] < len(store)  # the held-out episodes stay unseen
    # CartPole gives its true state: probed beside a random-init twin.
    probe = perception["probe"]
    assert (
        np.isfinite(probe["state_r2"]) and np.isfinite(probe["state_r2_random"]) and len(probe["state_r2_per_dim"]) == 4
    )
    assert (run / "perception/probe_curve.png").is_file() and (run / "perception/masks.png").is_file()

    # Its EMA target encoder, not its context encoder and not the random initialisation, is the world model's ViT.
    ijepa = read_checkpoint(run / "perception/checkpoints/latest.pt")
    assert ijepa["command"] == "pretrain" and ijepa["step"] == 10
    backbone = part(world_model(run), "backbone.")
    assert tensors_equal(backbone, part(ijepa["model"], "target_encoder."))
    assert not tensors_equal(backbone, part(ijepa["model"], "encoder."))
    random = random_init_backbone()
    assert backbone.keys() == random.keys() and not any(torch.equal(backbone[k], random[k]) for k in random)

    # The latent cache is keyed by the pretrained encoder and holds its features.
    cfg = load_config([DEBUG[1]], ["cycle.perception=pretrain"])
    model = build_model(cfg.world_model, env_spec(cfg.env))
    model.load_state_dict(world_model(run))
    key = encoder_fingerprint(model)
    assert done["data"] == {"episodes": "episodes", "encoder": "perception/checkpoints/latest.pt", "latent_key": key}
    with torch.no_grad():
        features = model.encode_features(torch.as_tensor(store.episode(0).obs)).numpy()  # (L+1, F)
    np.testing.assert_array_equal(store.latents(key).get(0), features)


@pytest.mark.slow
def test_a_cycle_reads_the_ema_target_of_a_pretrain_run_it_names(pretrained, tmp_path):
    run, _ = pretrained
    other = tmp_path / "named"
    result = cycle(other, "--set", "cycle.iterations=1", "--set", f"cycle.perception={run / 'perception'}")
    assert result.returncode == 0, result.stderr
    done = summary(other)
    assert list(done["phase_seconds"]) == ["collect", "train", "evolve", "evaluate"] and "perception" not in done
    assert done["data"]["encoder"] == str((run / "perception/checkpoints/latest.pt").resolve())
    ijepa = read_checkpoint(run / "perception/checkpoints/latest.pt")
    assert tensors_equal(part(world_model(other), "backbone."), part(ijepa["model"], "target_encoder."))


@pytest.mark.slow
def test_killed_and_stopped_in_the_perception_phase_a_resumed_cycle_ends_as_an_uninterrupted_one(tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    inner = stopped / "perception/summary.json"
    process = start("cycle", *DEBUG, *LONG_PRETRAIN, "--run-dir", str(stopped))
    wait_for(inner, process, lambda s: s["step"] >= 10)  # a perception checkpoint mid-way
    process.kill()
    process.communicate()
    state = read_checkpoint(stopped / "checkpoints/latest.pt")
    assert (state["iteration"], state["phase"], state["trainer"]) == (0, "pretrain", None)
    assert 10 <= read_checkpoint(stopped / "perception/checkpoints/latest.pt")["step"] < 40

    # Resumed, then stopped by SIGTERM further on in the same phase: it saves and says so.
    process = start("cycle", "--resume", "--set", "run.threads=1", "--run-dir", str(stopped))
    wait_for(inner, process, lambda s: s["step"] >= 25)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "resumed from" in stderr and summary(stopped)["status"] == "interrupted"
    assert json.loads(inner.read_text())["status"] == "interrupted"
    assert summary(stopped)["phase_seconds"]["pretrain"] > 0  # the phase's time so far, kept
    assert 25 <= read_checkpoint(stopped / "perception/checkpoints/latest.pt")["step"] < 40

    resumed = wm("cycle", "--resume", "--set", "run.threads=1", "--run-dir", str(stopped))
    assert resumed.returncode == 0, resumed.stderr
    result = cycle(whole, *LONG_PRETRAIN)
    assert result.returncode == 0, result.stderr

    # The same encoder (and everything I-JEPA trained), the same world model, controller and figures.
    ijepa_a = read_checkpoint(whole / "perception/checkpoints/latest.pt")
    ijepa_b = read_checkpoint(stopped / "perception/checkpoints/latest.pt")
    assert ijepa_a["step"] == ijepa_b["step"] == 40 and tensors_equal(ijepa_a["model"], ijepa_b["model"])
    assert tensors_equal(world_model(whole), world_model(stopped))
    best_a, best_b = read_checkpoint(whole / "checkpoints/best.pt"), read_checkpoint(stopped / "checkpoints/best.pt")
    assert torch.equal(best_a["parameters"], best_b["parameters"])
    done_a, done_b = summary(whole), summary(stopped)
    assert json.dumps(untimed(done_a["history"])) == json.dumps(untimed(done_b["history"]))  # as text: NaN equals NaN
    assert json.dumps(done_a["perception"]) == json.dumps(done_b["perception"])
    assert done_a["data"] == done_b["data"]


def refusal(capsys, tmp_path: Path, *args: str) -> str:
    """The one-line error of a `wm cycle` refused before its run directory exists."""
    code = cli.main(["cycle", *DEBUG, *args, "--run-dir", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "run").exists()
    assert len(error.splitlines()) == 1, error
    return error


def test_an_encoder_that_does_not_fit_the_world_model_is_refused_naming_both(capsys, tmp_path):
    error = refusal(capsys, tmp_path, *PRETRAIN, "--set", "pretrain.encoder.patch_size=8")
    assert "pretrain.encoder (size micro, image_size 32, patch_size 8)" in error
    assert "(world_model.vit_size micro, image_size 32, patch_size 4)" in error

    # A named `wm pretrain` checkpoint of another shape.
    cfg = load_config([DEBUG[1]], ["pretrain.encoder.size=mini"])
    checkpoint = tmp_path / "mini.pt"
    save_checkpoint(checkpoint, {"command": "pretrain", "config": to_dict(cfg), "model": {}}, keep_previous=False)
    error = refusal(capsys, tmp_path, "--set", f"cycle.perception={checkpoint}")
    assert f"cycle.perception {checkpoint} does not fit this world model" in error
    assert "world_model.vit_size is 'micro' here but 'mini' in the checkpoint" in error

    error = refusal(capsys, tmp_path, *PRETRAIN, "--encoder", str(checkpoint))
    assert "both name the encoder" in error
    error = refusal(capsys, tmp_path, *PRETRAIN, "--set", "env.obs=state")
    assert "a pretrained encoder reads pixels" in error
