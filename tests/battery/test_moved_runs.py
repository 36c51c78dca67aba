"""A run reads its own files wherever it lies: a `wm train` run that was moved or copied still serves `wm evolve`
and `--resume` from its own episode store, and a missing store is an error naming it, never an empty store made
in its place."""

import shutil
from pathlib import Path

import pytest
from battery_helpers import DEBUG, summary, wm

from experiments.checkpoint import read_checkpoint
from experiments.collection import recorded_store
from experiments.rundir import RunError, path_in_run, recorded_path

EVOLVE = ["--set", "evolve.generations=1", "--set", "evolve.final_episodes=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A debug world model trained at `original`, copied to `copy`, then moved to `moved`."""
    root = tmp_path_factory.mktemp("runs")
    original, copy, moved = root / "original", root / "copy", root / "moved"
    result = wm("train", *DEBUG, "--run-dir", str(original))
    assert result.returncode == 0, result.stderr
    shutil.copytree(original, copy)
    shutil.move(original, moved)
    return original, copy, moved


@pytest.mark.slow
def test_a_moved_world_model_serves_evolve_from_its_own_store(runs, tmp_path):
    original, _, moved = runs
    result = wm("evolve", *DEBUG, *EVOLVE, "--world-model", str(moved), "--run-dir", str(tmp_path / "evolve"))
    assert result.returncode == 0, result.stderr
    assert summary(tmp_path / "evolve")["status"] == "done"
    assert not original.exists()  # no empty store was made at the old place


@pytest.mark.slow
def test_a_moved_run_that_is_done_resumes_to_done(runs):
    _, _, moved = runs
    result = wm("train", "--resume", "--set", "run.threads=1", "--run-dir", str(moved))
    assert result.returncode == 0, result.stderr
    assert summary(moved)["status"] == "done"


@pytest.mark.slow
def test_a_copied_run_reads_its_own_store_and_a_missing_store_is_named(runs, tmp_path):
    _, copy, moved = runs
    data = read_checkpoint(copy / "checkpoints/latest.pt")["data"]
    assert data["episodes"] == "episodes"  # recorded inside the run, relative to it
    shutil.rmtree(moved / "episodes")  # the copy must not need the run it was copied from
    result = wm("evolve", *DEBUG, *EVOLVE, "--world-model", str(copy), "--run-dir", str(tmp_path / "from-copy"))
    assert result.returncode == 0, result.stderr

    missing = wm("evolve", *DEBUG, *EVOLVE, "--world-model", str(moved), "--run-dir", str(tmp_path / "from-moved"))
    assert missing.returncode == 2, missing.stderr
    assert str(moved / "episodes") in missing.stderr and "Traceback" not in missing.stderr
    assert not (moved / "episodes").exists() and not (tmp_path / "from-moved").exists()


def test_paths_inside_a_run_are_recorded_relative_to_it_and_others_absolute(tmp_path):
    run = tmp_path / "runs" / "a"
    assert path_in_run(run / "episodes", run) == "episodes"
    assert path_in_run(tmp_path / "store", run) == str((tmp_path / "store").resolve())
    assert recorded_path("episodes", tmp_path / "moved") == tmp_path / "moved" / "episodes"
    (tmp_path / "old-store").mkdir()
    old = str((tmp_path / "old-store").resolve())  # an older run's absolute path still reads while it exists
    assert recorded_path(old, tmp_path / "moved") == Path(old)
    with pytest.raises(RunError, match=f"episode store {tmp_path / 'moved' / 'episodes'} is missing"):
        recorded_store("episodes", tmp_path / "moved")
    assert not (tmp_path / "moved").exists()
