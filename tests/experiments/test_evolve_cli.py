"""`wm evolve` end to end, in real subprocesses on the debug preset, from one debug `wm train` world model.

Inputs refused before any work are checked through the same command line in process (`experiments.cli.main`):
a subprocess would spend seconds importing torch to print one error line.
"""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from run_wm import DEBUG, start, summary, wait_for_step, wm

from agents.evolution import CMAES
from experiments import cli
from experiments.checkpoint import read_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow  # each test starts `wm` subprocesses

LONG = ["--set", "evolve.generations=40"]  # long enough (a few seconds) to be stopped after a checkpoint
SUMMARY_KEYS = {"dream_return", "eval_return_mean", "eval_return_std", "eval_episodes", "dream_real_gap", "decision_ms"}
LINEAR_PARAMS = (16 + 32) * 2 + 2  # a linear controller over [z, h] of the debug world model, CartPole's 2 actions


@pytest.fixture(scope="module")
def world_model(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "wm"
    result = wm("train", *DEBUG, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def evolved(world_model, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("evolve") / "run"
    result = wm("evolve", *DEBUG, "--world-model", str(world_model), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.fixture(scope="module")
def uninterrupted(world_model, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evolve") / "whole"
    result = wm("evolve", *DEBUG, *LONG, "--world-model", str(world_model), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


def evolve(world_model: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    return wm("evolve", *DEBUG, "--world-model", str(world_model), *args, "--run-dir", str(run))


def resume(world_model: Path, run: Path) -> subprocess.CompletedProcess:
    return wm("evolve", "--resume", "--set", "run.threads=1", "--world-model", str(world_model), "--run-dir", str(run))


def refused(capsys, world_model: Path, run: Path, *args: str) -> str:
    """Run `wm evolve` in process, expecting exit code 2 without a traceback; returns its stderr."""
    capsys.readouterr()
    code = cli.main(["evolve", *DEBUG, "--world-model", str(world_model), *args, "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("wm evolve: error: "), stderr
    return stderr


def search_state(run: Path) -> CMAES:
    state = read_checkpoint(run / "checkpoints/latest.pt")
    assert state["command"] == "evolve"
    return CMAES.from_state_dict(state["es"])


def best_parameters(run: Path) -> torch.Tensor:
    return read_checkpoint(run / "checkpoints/best.pt")["parameters"]


def assert_same_search(a: Path, b: Path) -> None:
    """Two runs ended in the same CMA-ES state, chose the same controller and scored it the same."""
    es_a, es_b = search_state(a), search_state(b)
    assert es_a.generation == es_b.generation
    assert np.array_equal(es_a.mean, es_b.mean) and es_a.sigma == es_b.sigma
    assert np.array_equal(es_a.best, es_b.best) and es_a.best_fitness == es_b.best_fitness
    assert np.array_equal(es_a.ask(), es_b.ask())  # the same covariance and the same private RNG state
    assert torch.equal(best_parameters(a), best_parameters(b))
    figures = ("dream_return", "eval_return_mean", "eval_return_std", "chosen", "best_fitness")
    assert {k: summary(a)[k] for k in figures} == {k: summary(b)[k] for k in figures}


def test_debug_run_leaves_a_complete_run_directory(evolved):
    run, result = evolved
    assert "evolve 100%" in result.stderr and "evaluate 100%" in result.stderr  # the progress bars
    done = summary(run)
    assert done["status"] == "done" and done["command"] == "evolve" and done["step"] == 3
    assert SUMMARY_KEYS <= set(done) and done["scoring"] == "dream"
    assert done["eval_episodes"] == 2  # configs/debug.yaml's evolve.eval_episodes
    for key in SUMMARY_KEYS - {"eval_episodes"}:
        assert np.isfinite(done[key]), key
    assert done["dream_real_gap"] == pytest.approx(done["dream_return"] - done["eval_return_mean"])
    assert done["data"]["warm_start"] is None and done["data"]["start_states"] > 0
    assert done["controller"]["num_params"] == LINEAR_PARAMS

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    searched = [r for r in records if "dream/fitness_best" in r]
    assert [r["step"] for r in searched] == [1, 2, 3]  # every generation
    for record in searched:
        for key in ("dream/fitness_mean", "dream/fitness_best_ever", "es/sigma", "perf/score_s", "dream/length_mean"):
            assert np.isfinite(record[key]), key
    assert any(r.get("eval/return_mean") == done["eval_return_mean"] for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))

    state = read_checkpoint(run / "checkpoints/latest.pt")
    assert state["command"] == "evolve" and state["step"] == 3 and state["mode"] == "dream"
    es = CMAES.from_state_dict(state["es"])
    assert es.generation == 3 and es.dimension == LINEAR_PARAMS and es.popsize == 6
    best = read_checkpoint(run / "checkpoints/best.pt")
    assert best["command"] == "evolve" and best["parameters"].shape == (LINEAR_PARAMS,)
    assert best["figures"]["dream_return"] == done["dream_return"]


def test_real_env_scoring_counts_its_env_steps(world_model, tmp_path):
    run = tmp_path / "real"
    result = evolve(world_model, run, "--in", "real")
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["scoring"] == "real"
    # 3 generations x 6 candidates x 3 episodes, each at least one step and at most dream.horizon (20) steps
    assert 54 <= done["real_env_steps"] <= 54 * 20
    assert read_checkpoint(run / "checkpoints/latest.pt")["env_steps"] == done["real_env_steps"]


PLANNER = ["--set", "evolve.agent=planner", "--set", "planner.candidates=16", "--set", "planner.elites=4",
           "--set", "planner.horizon=5"]  # fmt: skip


def test_the_planner_acts_in_the_real_env_on_the_episodes_a_controller_is_scored_on(world_model, evolved, tmp_path):
    run = tmp_path / "planner"
    result = evolve(world_model, run, *PLANNER)
    assert result.returncode == 0, result.stderr
    done, controller = summary(run), summary(evolved[0])
    assert done["status"] == "done" and done["agent"] == "planner" and done["planner"]["candidates"] == 16
    assert done["eval_episodes"] == controller["eval_episodes"] == 2 and done["decision_ms"] > 0
    assert all(1 <= length <= 500 for length in done["eval_lengths"]) and "the planner: real return" in result.stderr
    assert not (run / "checkpoints/best.pt").exists()  # no controller to replay
    again = evolve(world_model, tmp_path / "again", *PLANNER)  # seeded episodes and samples: the same figures
    assert again.returncode == 0 and summary(tmp_path / "again")["eval_returns"] == done["eval_returns"]


def test_a_killed_planner_run_resumes_to_the_figures_of_an_uninterrupted_one(world_model, tmp_path):
    """The planner keeps nothing worth a checkpoint: `--resume` after SIGKILL evaluates again from the start, and its
    seeded episodes and samples give what the run would have given."""
    longer = [*PLANNER, "--set", "evolve.eval_episodes=6", "--set", "planner.iterations=12"]  # seconds of planning
    whole = evolve(world_model, tmp_path / "whole", *longer)
    assert whole.returncode == 0, whole.stderr
    broken = tmp_path / "broken"
    process = start("evolve", *DEBUG, "--world-model", str(world_model), *longer, "--run-dir", str(broken))
    deadline = time.monotonic() + 120
    while not (broken / "summary.json").exists() or "agent" not in summary(broken):  # it has begun to plan
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the planner never started"
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert summary(broken)["status"] == "running"  # it really died mid-run
    resumed = resume(world_model, broken)
    assert resumed.returncode == 0, resumed.stderr
    done = summary(broken)
    assert done["status"] == "done" and done["agent"] == "planner"
    assert done["eval_returns"] == summary(tmp_path / "whole")["eval_returns"]


def test_the_planner_takes_no_warm_start_and_no_real_env_search(world_model, evolved, tmp_path, capsys):
    for flags in (["--in", "real"], ["--controller", str(evolved[0])]):
        assert "drop --in real and --controller" in refused(capsys, world_model, tmp_path / "p", *PLANNER, *flags)
    assert not (tmp_path / "p").exists()


def test_sigkill_then_resume_continues_the_identical_search(world_model, uninterrupted, tmp_path):
    broken = tmp_path / "broken"
    process = start("evolve", *DEBUG, *LONG, "--world-model", str(world_model), "--run-dir", str(broken))
    wait_for_step(broken, 4, process)  # the generation-4 checkpoint (checkpoint_every 2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = summary(broken)
    assert killed_at["status"] == "running" and killed_at["step"] < 40  # it really died mid-run

    resumed = resume(world_model, broken)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert summary(broken)["status"] == "done" and summary(broken)["step"] == 40
    assert_same_search(uninterrupted, broken)


def test_sigterm_saves_and_a_resume_needs_the_same_world_model(world_model, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = start("evolve", *DEBUG, *LONG, "--world-model", str(world_model), "--run-dir", str(run))
    wait_for_step(run, 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and 2 <= stopped["step"] < 40
    assert read_checkpoint(run / "checkpoints/latest.pt")["step"] == stopped["step"]

    # Another world model of the same shape (one weight changed) would silently change the search: refused.
    other = tmp_path / "other-wm"
    shutil.copytree(world_model, other)
    state = read_checkpoint(other / "checkpoints/latest.pt")
    state.pop("format")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 1.0
    save_checkpoint(other / "checkpoints/latest.pt", state)
    wrong = resume(other, run)
    assert wrong.returncode == 2
    assert "is not the world model the run evolved in" in wrong.stderr

    resumed = resume(world_model, run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_search(uninterrupted, run)


def test_warm_start_begins_at_the_earlier_controller(world_model, evolved, tmp_path):
    earlier = best_parameters(evolved[0]).double()
    assert earlier.abs().max() > 1e-3  # far from the linear controller's cold start (zeros)
    run = tmp_path / "warm"
    # A tiny step size keeps every candidate at x0, so what the run ends with is where it started.
    result = evolve(
        world_model, run, "--controller", str(evolved[0]), "--set", "evolve.sigma=1e-9", "--set", "evolve.generations=1"
    )
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["data"]["warm_start"] == str(evolved[0].resolve())
    assert torch.allclose(best_parameters(run).double(), earlier, atol=1e-6)
    assert np.allclose(search_state(run).mean, earlier.numpy(), atol=1e-6)


def test_a_warm_start_of_another_shape_is_refused_naming_the_difference(world_model, evolved, tmp_path, capsys):
    run = tmp_path / "mlp"
    stderr = refused(capsys, world_model, run, "--controller", str(evolved[0]), "--set", "evolve.controller=mlp")
    assert "kind: 'linear' in the checkpoint, 'mlp' here (evolve.controller)" in stderr
    assert not run.exists()  # refused before any work


def test_a_warm_start_without_a_controller_is_refused_naming_the_flag(world_model, tmp_path, capsys):
    run = tmp_path / "warm"
    stderr = refused(capsys, world_model, run, "--controller", str(world_model))  # a `wm train` run: no best.pt
    assert f"--controller {world_model}: checkpoint {world_model}/checkpoints/best.pt does not exist" in stderr
    assert not run.exists()


def test_world_models_that_do_not_fit_are_refused_before_a_run_exists(world_model, evolved, tmp_path, capsys):
    run = tmp_path / "run"
    cases = [
        (tmp_path / "nothing", [], "no checkpoint there"),
        (evolved[0] / "checkpoints/latest.pt", [], "a checkpoint of 'evolve', not of 'train'"),
        (world_model, ["--set", "env.size=48"], "obs_shape: (32, 32, 3) != (48, 48, 3)"),
        (world_model, ["--set", "world_model.latent_dim=8"], "world_model.latent_dim: 16 in the checkpoint, 8 here"),
    ]
    for path, overrides, message in cases:
        assert message in refused(capsys, path, run, *overrides)
        assert not run.exists(), message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evolve.sigma=0", "evolve.sigma: must be a finite number > 0"),
        ("evolve.population=1", "evolve.population"),
    ],
)
def test_impossible_evolve_settings_are_config_errors(world_model, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    assert message in refused(capsys, world_model, run, "--set", override)
    assert not run.exists()
