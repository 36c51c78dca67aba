"""Every command under `torchrun --nproc_per_node 2` on this CPU (gloo), in real subprocesses on the debug preset,
compared with the same command in one process.

Training and evolution must end where one process ends (same global batch, same search); a run stopped under
torchrun by a signal to one of its processes must stop everywhere at the same step and resume in one process; only
rank 0 may write the run directory.
"""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from launch import DEBUG, max_difference, metrics, start, summary, wait_for_step, wm, worker_pid

from agents.evolution import CMAES
from experiments.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each test starts `wm` under torchrun

# Two processes equal one only up to float32 rounding: pin float32, which `run.precision: auto` would replace with bf16
# on a CPU with bf16 units (bf16 rounds the shares' sums far more coarsely than TOLERANCE).
FLOAT32 = ["--set", "run.precision=float32"]
PRETRAIN = [*FLOAT32, "--set", "pretrain.optim.steps=16", "--set", "run.checkpoint_every=3"]
# A short world-model training (its decoder and video included) on the debug preset.
TRAIN = [*FLOAT32, "--set", "world_model.steps=6", "--set", "world_model.eval_every=0",
         "--set", "world_model.decoder_steps=2"]  # fmt: skip
CYCLE = [*TRAIN, "--set", "cycle.iterations=2", "--set", "cycle.train_steps=2", "--set", "cycle.generations=1"]
TOLERANCE = 1e-5  # float32 sums taken in another order: a few ulps per step


def latest(run: Path) -> dict:
    return read_checkpoint(run / "checkpoints/latest.pt")


def logged(run: Path, key: str) -> dict[int, float]:
    """{step: value} of one metric in metrics.jsonl."""
    return {record["step"]: record[key] for record in metrics(run) if key in record}


def assert_same_losses(a: Path, b: Path, key: str, rtol: float = 1e-4) -> None:
    """The metric `key` was logged at the same steps with the same values (up to float rounding) in both runs."""
    ours, theirs = logged(a, key), logged(b, key)
    assert ours.keys() == theirs.keys() and ours
    np.testing.assert_allclose([ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(ours)], rtol=rtol)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-process `wm train`: the reference for training, the episodes and world model for the others."""
    run = tmp_path_factory.mktemp("train") / "alone"
    result = wm("train", *DEBUG, *TRAIN, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


def test_pretraining_on_two_processes_stops_together_on_a_signal_to_one_and_resumes_on_one(tmp_path):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    launcher = start("pretrain", *DEBUG, *PRETRAIN, "--run-dir", str(shared))
    wait_for_step(shared, 3, launcher)
    os.kill(worker_pid(launcher, 1), signal.SIGTERM)  # rank 0 gets no signal: it must learn of it and stop too
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    assert stderr.count("interrupted; resume with --resume") == 2, stderr  # both processes stopped, not crashed
    stopped = summary(shared)
    assert stopped["status"] == "interrupted" and 3 <= stopped["step"] < 16
    assert latest(shared)["step"] == stopped["step"]

    resumed = wm(
        "pretrain", "--resume", "--set", "run.threads=1", "--set", "run.progress=false", "--run-dir", str(shared)
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {shared / 'checkpoints/latest.pt'} at step {stopped['step']}" in resumed.stderr
    result = wm("pretrain", *DEBUG, *PRETRAIN, "--run-dir", str(alone))
    assert result.returncode == 0, result.stderr

    assert summary(shared)["status"] == "done" and latest(shared)["step"] == latest(alone)["step"] == 16
    assert max_difference(latest(shared)["model"], latest(alone)["model"]) < TOLERANCE
    assert_same_losses(shared, alone, "loss/jepa")  # steps of both processes, then of one, as one process's
    assert summary(shared)["probe"].keys() == summary(alone)["probe"].keys()


def test_world_model_training_on_two_processes_equals_one_process(trained, tmp_path):
    shared = tmp_path / "shared"
    result = wm("train", *DEBUG, *TRAIN, "--episodes", str(trained / "episodes"), "--run-dir", str(shared), processes=2)
    assert result.returncode == 0, result.stderr
    ours, theirs = latest(shared), latest(trained)
    assert ours["step"] == theirs["step"] == 6 and ours["decoder_step"] == 2
    assert max_difference(ours["model"], theirs["model"]) < TOLERANCE
    assert max_difference(ours["decoder"], theirs["decoder"]) < TOLERANCE
    assert_same_losses(shared, trained, "loss/total")
    assert (shared / "videos/dream_vs_real.mp4").is_file()
    assert len(metrics(shared)) == len(metrics(trained))  # one writer: no line twice


# The debug world model whose dream gives the candidates distinct returns: the deterministic latent over a fine-tuned
# encoder, its dreams ended at a threshold of the continue head (the debug preset's settings until 2026-12-07).
DETERMINISTIC = ["--set", "world_model.latent=deterministic", "--set", "world_model.freeze_encoder=false",
                 "--set", "world_model.loss_weights.cont=1", "--set", "dream.cont_mode=threshold"]  # fmt: skip


def test_evolution_on_two_processes_proposes_and_scores_what_one_process_does(tmp_path):
    """Not on the debug preset's own model: 6 training steps leave its continue head unsure, so its sampled dreams
    end within a step or two and candidates that take the same first actions tie exactly in one process; a share's
    smaller batch rounds their returns apart in the last bits (1e-7), CMA-ES, which ranks them, orders the tied
    candidates otherwise, and the searches part from the second generation on."""
    trained = tmp_path / "deterministic"
    result = wm("train", *DEBUG, *TRAIN, *DETERMINISTIC, "--run-dir", str(trained))
    assert result.returncode == 0, result.stderr
    runs = {processes: tmp_path / f"evolve{processes}" for processes in (1, 2)}
    for processes, run in runs.items():
        result = wm("evolve", *DEBUG, *DETERMINISTIC, "--world-model", str(trained), "--run-dir", str(run),
                    processes=processes)  # fmt: skip
        assert result.returncode == 0, result.stderr
    alone, shared = (CMAES.from_state_dict(latest(run)["es"]) for run in runs.values())
    assert shared.generation == alone.generation == 3
    np.testing.assert_array_equal(shared.mean, alone.mean)
    np.testing.assert_array_equal(shared.best, alone.best)
    # A share's batched rollout has fewer rows, so its matmuls may round differently in the last bits; CMA-ES uses
    # only the ranking of the fitness, so the searches stay the same.
    for key in ("dream/fitness_best", "dream/fitness_mean"):
        assert_same_losses(runs[2], runs[1], key, rtol=1e-6)


def test_a_cycle_runs_on_two_processes_with_one_writer_of_the_run_and_the_store(tmp_path):
    run = tmp_path / "cycle"
    result = wm("cycle", *DEBUG, *CYCLE, "--run-dir", str(run), processes=2)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["iterations"] == 2
    # One shard per collection (rank 0 wrote every process's episodes at once), each of the size one process collects.
    assert len((run / "episodes/index.jsonl").read_text().splitlines()) == 2
    assert [r["collect_steps"] for r in done["history"]][1] in range(100, 100 + 2)  # cycle.collect_steps, 2 envs
    assert (run / "learning_curve.png").is_file() and (run / "checkpoints/best.pt").is_file()
    assert [r["cycle/iteration"] for r in metrics(run) if "cycle/iteration" in r] == [0, 1]  # each line once
