"""`wm evolve --set evolve.agent=actor_critic` end to end, in real subprocesses on the debug preset, from one debug
`wm train` world model: a complete run directory, an exact resume after SIGKILL and after SIGTERM, and the refusals
(in process, through `experiments.cli.main`, as tests/experiments/test_evolve_cli.py does)."""

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from run_wm import DEBUG, start, summary, wait_for_step, wm

from experiments import cli
from experiments.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each test starts `wm` subprocesses

# Small networks and batches: seconds on the debug model (checkpoints every 5 steps: configs/debug.yaml's run.*).
AGENT = ["--set", "evolve.agent=actor_critic", "--set", "actor_critic.starts=32", "--set", "actor_critic.width=32"]
SHORT = ["--set", "actor_critic.steps=12"]
LONG = ["--set", "actor_critic.steps=80"]  # long enough (a few seconds) to be stopped after a checkpoint
SUMMARY_KEYS = {"dream_return", "eval_return_mean", "eval_return_std", "eval_episodes", "dream_real_gap", "decision_ms"}


@pytest.fixture(scope="module")
def world_model(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "wm"
    result = wm("train", *DEBUG, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def uninterrupted(world_model, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("imagine") / "whole"
    result = evolve(world_model, run, *LONG)
    assert result.returncode == 0, result.stderr
    return run


def evolve(world_model: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    return wm("evolve", *DEBUG, *AGENT, "--world-model", str(world_model), *args, "--run-dir", str(run))


def resume(world_model: Path, run: Path) -> subprocess.CompletedProcess:
    return wm("evolve", "--resume", "--set", "run.threads=1", "--world-model", str(world_model), "--run-dir", str(run))


def learner_state(run: Path) -> dict:
    state = read_checkpoint(run / "checkpoints/latest.pt")
    assert state["command"] == "evolve" and state["agent"] == "actor_critic"
    return state["actor_critic"]


def assert_same_training(a: Path, b: Path) -> None:
    """Two runs ended with bit-identical networks, optimisers and generators, and scored the same."""
    state_a, state_b = learner_state(a), learner_state(b)
    assert state_a["steps"] == state_b["steps"]
    for key in ("actor", "critic", "target_critic"):
        assert all(torch.equal(state_a[key][name], state_b[key][name]) for name in state_a[key]), key
    for key in ("actor_optimizer", "critic_optimizer"):
        for slot, values in state_a[key]["state"].items():
            assert all(torch.equal(values[name], state_b[key]["state"][slot][name]) for name in values), key
    assert torch.equal(state_a["generator"], state_b["generator"])
    assert torch.equal(state_a["return_scale"], state_b["return_scale"])
    figures = ("dream_return", "eval_returns", "eval_return_mean", "eval_return_std")
    assert {k: summary(a)[k] for k in figures} == {k: summary(b)[k] for k in figures}


def refused(capsys, world_model: Path, run: Path, *args: str) -> str:
    """Run `wm evolve` in process, expecting exit code 2 without a traceback; returns its stderr."""
    capsys.readouterr()
    code = cli.main(["evolve", *DEBUG, *AGENT, "--world-model", str(world_model), *args, "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("wm evolve: error: "), stderr
    return stderr


def test_debug_run_trains_in_imagination_and_scores_the_actor(world_model, tmp_path, capsys):
    run = tmp_path / "ac"
    result = evolve(world_model, run, *SHORT)
    assert result.returncode == 0, result.stderr
    assert "imagine 100%" in result.stderr and "evaluate 100%" in result.stderr  # the progress bars
    assert "the actor-critic: dream return" in result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["command"] == "evolve" and done["agent"] == "actor_critic"
    assert done["step"] == done["steps"] == 12 and done["actor_critic"]["starts"] == 32
    assert SUMMARY_KEYS <= set(done) and done["eval_episodes"] == 2  # configs/debug.yaml's evolve.eval_episodes
    for key in SUMMARY_KEYS:
        assert np.isfinite(done[key]), key
    assert done["decision_ms"] > 0 and all(1 <= length <= 500 for length in done["eval_lengths"])
    assert done["dream_real_gap"] == pytest.approx(done["dream_return"] - done["eval_return_mean"])
    assert done["data"]["start_states"] > 0

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss/actor" in r]
    assert [r["step"] for r in trained] == [2, 4, 6, 8, 10, 12]  # configs/debug.yaml's run.log_every
    for record in trained:
        for key in ("loss/critic", "dream/return_mean", "dream/entropy", "dream/return_scale", "perf/step_s"):
            assert np.isfinite(record[key]), key
    assert any(r.get("eval/return_mean") == done["eval_return_mean"] for r in records)
    assert learner_state(run)["steps"] == 12
    assert not (run / "checkpoints/best.pt").exists()  # no controller to replay, as with the planner

    for command in ("eval", "video", "export"):  # each refuses in one line, as for a planner run
        capsys.readouterr()
        assert cli.main([command, "--run", str(run)]) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith(f"wm {command}: error: ") and "evolve.agent=actor_critic holds no" in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_sigkill_then_resume_continues_the_identical_training(world_model, uninterrupted, tmp_path):
    broken = tmp_path / "broken"
    process = start("evolve", *DEBUG, *AGENT, *LONG, "--world-model", str(world_model), "--run-dir", str(broken))
    wait_for_step(broken, 10, process)  # the step-10 checkpoint (run.checkpoint_every 5)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = summary(broken)
    assert killed_at["status"] == "running" and killed_at["step"] < 80  # it really died mid-run

    resumed = resume(world_model, broken)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert summary(broken)["status"] == "done" and summary(broken)["step"] == 80
    assert_same_training(uninterrupted, broken)


def test_sigterm_saves_and_the_resume_ends_where_an_uninterrupted_run_ends(world_model, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = start("evolve", *DEBUG, *AGENT, *LONG, "--world-model", str(world_model), "--run-dir", str(run))
    wait_for_step(run, 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and 5 <= stopped["step"] < 80
    assert learner_state(run)["steps"] == stopped["step"]

    resumed = resume(world_model, run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(uninterrupted, run)


def test_the_actor_critic_takes_no_warm_start_no_real_env_search_and_no_impossible_setting(
    world_model, tmp_path, capsys
):
    run = tmp_path / "ac"
    for flags in (["--in", "real"], ["--controller", str(world_model)]):
        assert "drop --in real and --controller" in refused(capsys, world_model, run, *flags)
    stderr = refused(capsys, world_model, run, "--set", "actor_critic.discount=0")
    assert "actor_critic.discount: must be in (0, 1], got 0.0" in stderr
    assert "actor_critic.steps: must be >= 1" in refused(capsys, world_model, run, "--set", "actor_critic.steps=0")
    assert not run.exists()  # refused before any work
