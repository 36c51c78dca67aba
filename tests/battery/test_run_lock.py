"""One writer per run directory: a second `wm train` on a run that is still running, new or `--resume`, is refused
naming the process that holds the run's lock, and the check that the directory holds no run is made under the lock."""

import argparse
import fcntl
import os

import pytest
from battery_helpers import DEBUG, REPO, start, summary, wait_until, wm

from experiments.rundir import RunError, add_run_arguments, open_run

SHORT = ["--set", "world_model.steps=10", "--set", "world_model.decoder_steps=2", "--set", "world_model.eval_every=0"]


@pytest.mark.slow
def test_a_second_train_and_a_resume_of_a_running_run_are_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    first = start("train", *DEBUG, "--set", "world_model.steps=120", "--run-dir", str(run))
    wait_until(lambda: (run / "config.yaml").exists(), first, "the first run to start")

    second = wm("train", *DEBUG, "--run-dir", str(run))
    resumed = wm("train", "--resume", "--set", "run.threads=1", "--run-dir", str(run))
    for refused in (second, resumed):
        assert refused.returncode == 2, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and f"process {first.pid}" in lines[0], refused.stderr
    assert first.poll() is None, "the first run ended before the others were refused: the test proves nothing"

    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    done = summary(run)
    assert done["status"] == "done" and done["step"] == 120


@pytest.mark.slow
def test_a_run_directory_locked_before_it_holds_a_run_keeps_a_new_run_out(tmp_path):
    """Two runs started together: the one that locked first has not written config.yaml yet, and the other must not
    pass the "already holds a run" check in that moment."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        result = wm("train", *DEBUG, *SHORT, "--run-dir", str(run))
    assert result.returncode == 2, result.stderr
    assert f"process {os.getpid()}" in result.stderr
    assert not (run / "config.yaml").exists() and not (run / "summary.json").exists()  # nothing was written


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(["--config", str(REPO / "configs/debug.yaml"), *argv])


def test_the_lock_lasts_as_long_as_the_run_is_open(tmp_path):
    path = str(tmp_path / "run")
    run = open_run(parse("--run-dir", path), "train")
    with pytest.raises(RunError, match=rf"process {os.getpid()}"):
        open_run(parse("--run-dir", path, "--resume"), "train")
    run.close()
    again = open_run(parse("--run-dir", path, "--resume"), "train")  # closed: free to continue
    again.close()
    with pytest.raises(RunError, match="already holds a run"):  # and a new run is refused for what it is
        open_run(parse("--run-dir", path), "train")
