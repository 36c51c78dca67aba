"""A `wm train` stopped during its first collection resumes: the episodes stored so far are kept, `--resume`
collects the rest (to the configured number of steps) and trains to the end; SIGTERM says one thing about it."""

import signal
from pathlib import Path

import numpy as np
import pytest
from battery_helpers import DEBUG, REPO, start, stored_steps, summary, wait_until, wm

from envs import EpisodeStore, make_env
from experiments.collection import collect_episodes
from experiments.config import load_config
from experiments.rundir import GracefulStop

COLLECT = 3000  # about 6 s of the debug env here: long enough to be stopped with some shards stored
NUM_ENVS = 2  # the debug preset's world_model.num_envs
LONG = ["--set", f"world_model.collect_steps={COLLECT}", "--set", "world_model.steps=10",
        "--set", "world_model.decoder_steps=2", "--set", "world_model.eval_every=0"]  # fmt: skip


def stop_while_collecting(run: Path, signum: int) -> tuple[int, str]:
    """Start a debug `wm train`, send `signum` once its store holds a shard and before it holds the whole collection;
    returns the exit code and stderr."""
    process = start("train", *DEBUG, *LONG, "--run-dir", str(run))
    wait_until(lambda: stored_steps(run / "episodes")[1] > 0, process, "the first shard of the collection")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert 0 < stored_steps(run / "episodes")[1] < COLLECT, "the signal did not land during the collection"
    return process.returncode, stderr


def assert_resumes_to_the_whole_collection(run: Path) -> None:
    kept = stored_steps(run / "episodes")
    resumed = wm("train", "--resume", "--set", "run.threads=1", "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr
    done = summary(run)
    assert done["status"] == "done" and done["step"] == 10
    store = EpisodeStore(run / "episodes")
    transitions = store.num_steps - len(store)
    assert COLLECT <= transitions < COLLECT + NUM_ENVS  # what an uninterrupted collection holds
    assert len(store) > kept[0] and done["data"]["num_episodes"] == len(store)
    assert done["data"]["collected"]["steps"] == transitions  # the figures count the kept episodes too


@pytest.mark.slow
def test_sigkill_during_the_first_collection_then_resume_completes_the_run(tmp_path):
    run = tmp_path / "run"
    code, _ = stop_while_collecting(run, signal.SIGKILL)
    assert code == -signal.SIGKILL and summary(run)["status"] == "running"
    assert_resumes_to_the_whole_collection(run)


@pytest.mark.slow
def test_sigterm_during_the_first_collection_says_one_thing_and_resumes(tmp_path):
    run = tmp_path / "run"
    code, stderr = stop_while_collecting(run, signal.SIGTERM)
    assert code == 143, stderr
    assert "cannot be resumed" not in stderr and stderr.count("resume with --resume") == 1, stderr
    assert summary(run)["status"] == "interrupted"
    assert_resumes_to_the_whole_collection(run)


def test_a_collection_continues_a_store_that_holds_part_of_it(tmp_path):
    cfg = load_config(
        [REPO / "configs/debug.yaml"], ["env.obs=state", "world_model.collect_steps=300", "run.progress=false"]
    )
    _, spec = make_env("CartPole-v1", obs="state")
    part = load_config(
        [REPO / "configs/debug.yaml"], ["env.obs=state", "world_model.collect_steps=120", "run.progress=false"]
    )
    store = EpisodeStore(tmp_path / "episodes", spec)
    collect_episodes(part, store, GracefulStop())
    first = [episode.obs.copy() for episode in store]
    stats = collect_episodes(cfg, store, GracefulStop())
    transitions = store.num_steps - len(store)
    assert 300 <= transitions < 300 + NUM_ENVS and stats.steps == transitions
    assert stats.episodes + stats.cut == len(store)  # the kept episodes are counted too
    assert all(np.array_equal(a, store.episode(i).obs) for i, a in enumerate(first))  # kept, in front
