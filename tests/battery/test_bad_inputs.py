"""Bad input known before work starts (an image folder that is missing, empty or wholly unreadable, an env that
cannot be made here, a runs directory that cannot be written) is one line `wm <command>: error: ...` and exit code 2,
for every command, before its run directory exists; a disk that fills up during a run is one line too."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from battery_helpers import DEBUG, ENV, REPO, summary, wm
from PIL import Image

from envs.make import EnvUnavailableError, make_env
from experiments.cli import input_error_message

QUICK = ["--set", "pretrain.optim.steps=3", "--set", "pretrain.optim.warmup_steps=1"]


def refused(result: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """Assert `result` is a one-line refusal of `command` (exit 2, no traceback) naming `words`; return the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("wm ")]
    assert len(lines) == 1 and lines[0].startswith(f"wm {command}: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def image_folder(root: Path, good: int, bad: int, classes: tuple[str, ...] = ("cats", "dogs")) -> Path:
    """`good` readable and `bad` unreadable png files in each class subfolder of `root`."""
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(good):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / label / f"good{i}.png")
        for i in range(bad):
            (root / label / f"bad{i}.png").write_bytes(b"not an image" * (i + 1))
    return root


# ------------------------------------------------------------------------------------------------------
# Image folders


@pytest.mark.slow
def test_an_all_corrupt_labelled_folder_is_refused_before_the_run_directory(tmp_path):
    folder = image_folder(tmp_path / "images", good=0, bad=6)
    runs = tmp_path / "runs"
    source = f"pretrain.data.source=folder:{folder}"
    result = wm("pretrain", *DEBUG, "--runs", str(runs), "--name", "run", "--set", source)
    refused(result, "pretrain", "pretrain.data.source", "only 0 of the 12 images", "bad0.png")
    assert "stack expects" not in result.stderr
    assert not runs.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "only text files", "one readable image", "less than a batch"])
def test_a_folder_that_cannot_feed_training_is_refused_naming_it(tmp_path, case):
    folder = tmp_path / "images"
    words = {
        "missing": "does not exist",
        "empty": "contains no images",
        "only text files": "contains no images",
        "one readable image": "only 1 of the 10 images",
        "less than a batch": "7 images, fewer than a batch (pretrain.optim.batch_size=8)",
    }[case]
    if case == "empty":
        folder.mkdir()
    elif case == "only text files":
        (folder / "a").mkdir(parents=True)
        (folder / "a" / "notes.txt").write_text("no image here")
    elif case == "one readable image":
        image_folder(folder, good=0, bad=9, classes=("a",))
        Image.new("RGB", (20, 20), (200, 0, 0)).save(folder / "a" / "only.png")
    elif case == "less than a batch":
        image_folder(folder, good=7, bad=0, classes=("a",))
    run = tmp_path / "run"
    result = wm("pretrain", *DEBUG, "--run-dir", str(run), "--set", f"pretrain.data.source=folder:{folder}")
    refused(result, "pretrain", str(folder), words)
    assert not run.exists()


@pytest.mark.slow
def test_a_folder_gone_before_resume_is_refused_and_the_run_keeps_its_status(tmp_path):
    folder = image_folder(tmp_path / "images", good=5, bad=0)
    run = tmp_path / "run"
    first = wm("pretrain", *DEBUG, *QUICK, "--run-dir", str(run), "--set", f"pretrain.data.source=folder:{folder}")
    assert first.returncode == 0, first.stderr
    before = (run / "summary.json").read_text()
    shutil.rmtree(folder)
    again = wm("pretrain", "--resume", "--set", "run.threads=1", "--run-dir", str(run))
    refused(again, "pretrain", "does not exist")
    assert (run / "summary.json").read_text() == before  # not turned into a failed run


@pytest.mark.slow
def test_a_synthetic_source_smaller_than_a_batch_is_refused(tmp_path):
    run = tmp_path / "run"
    result = wm("pretrain", *DEBUG, "--run-dir", str(run), "--set", "pretrain.data.num_images=8",
                "--set", "pretrain.optim.batch_size=16")  # fmt: skip
    refused(result, "pretrain", "pretrain.data.num_images: 8 images, fewer than a batch")
    assert not run.exists()


@pytest.mark.slow
def test_corrupt_images_met_in_training_stop_the_run_with_a_clear_error_past_the_limit(tmp_path):
    folder = image_folder(tmp_path / "images", good=2, bad=6, classes=("all",))
    run = tmp_path / "run"
    result = wm("pretrain", *DEBUG, "--run-dir", str(run), "--set", f"pretrain.data.source=folder:{folder}",
                "--set", "pretrain.data.max_bad_images=3")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"wm pretrain: failed: \d+ unreadable images .* more than the allowed 3", result.stderr)
    assert "bad0.png" in result.stderr and "max_bad_images" in result.stderr
    assert summary(run)["status"] == "failed"


# ------------------------------------------------------------------------------------------------------
# Envs


def not_installed(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is not None, reason=f"{package} is installed here")


@not_installed("jax")
def test_an_env_whose_package_is_missing_names_it():
    with pytest.raises(EnvUnavailableError, match=r"'phys2d/CartPole-v1' cannot be made here.*'jax'.*not installed"):
        make_env("phys2d/CartPole-v1")
    with pytest.raises(ValueError, match="unknown env id 'CartPoel-v1'; did you mean: CartPole-v1"):
        make_env("CartPoel-v1")


@pytest.mark.slow
@not_installed("jax")
@not_installed("mujoco")
@pytest.mark.parametrize(
    ("command", "env_id", "package"),
    [
        ("train", "phys2d/CartPole-v1", "jax"),
        ("train", "HalfCheetah-v5", "mujoco"),
        ("cycle", "HalfCheetah-v5", "mujoco"),
        ("pretrain", "HalfCheetah-v5", "mujoco"),
    ],
)
def test_an_env_that_cannot_be_made_is_refused_before_the_run_directory(tmp_path, command, env_id, package):
    key = "pretrain.data.source" if command == "pretrain" else "env.id"
    value = f"env:{env_id}" if command == "pretrain" else env_id
    run = tmp_path / "run"
    result = wm(command, *DEBUG, "--run-dir", str(run), "--set", f"{key}={value}")
    refused(result, command, repr(env_id), repr(package), "not installed")
    assert not run.exists()


def test_an_env_error_in_a_command_without_a_run_directory_is_one_line():
    # `wm eval` and `wm video` make the env of a finished run: one moved to a machine without its package.
    error = EnvUnavailableError("env id 'HalfCheetah-v5' cannot be made here: it needs the package 'mujoco'")
    assert input_error_message(error) == f"env: {error}"
    assert input_error_message(RuntimeError("a bug")) is None  # anything else keeps its traceback


# ------------------------------------------------------------------------------------------------------
# The disk


@pytest.mark.slow
def test_a_runs_directory_under_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = wm("pretrain", *DEBUG, "--runs", str(tmp_path / "a-file" / "runs"), "--name", "run")
    refused(result, "pretrain", "is a file, not a directory")


def read_only_runs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`wm <args> --runs R` with R read-only: by permissions for a user, by a read-only mount for root (who may write
    into any folder), in a private mount namespace; skipped where neither is possible."""
    runs = tmp_path / "runs"
    runs.mkdir()
    command = [sys.executable, "-m", "experiments", *args, "--runs", str(runs)]
    if os.geteuid() != 0:
        runs.chmod(0o555)
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a read-only directory")
    script = f'mount -t tmpfs -o ro,size=64k none "{runs}" && exec "$@"'
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    if "mount:" in result.stderr or "unshare:" in result.stderr:
        pytest.skip(f"no private read-only mount here: {result.stderr.strip()}")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_a_read_only_runs_directory_is_refused(tmp_path, command):
    result = read_only_runs(tmp_path, command, *DEBUG, "--name", "run")
    refused(result, command, "is not writable")


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_run_is_one_line(tmp_path):
    # The run's metrics file is /dev/full, where every write fails as on a full disk (ENOSPC).
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    result = wm("pretrain", *DEBUG, *QUICK, "--run-dir", str(run))
    refused(result, "pretrain", "No space left on device")
    assert summary(run)["status"] == "failed"
