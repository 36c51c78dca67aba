"""`wm pretrain` end to end, in real subprocesses, on the debug preset."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_wm import DEBUG, start, summary, tensors_equal, wait_for_step, wm

from experiments.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each test starts `wm` subprocesses


def same_parameters(a: Path, b: Path) -> bool:
    return tensors_equal(read_checkpoint(a / "checkpoints/latest.pt")["model"],
                         read_checkpoint(b / "checkpoints/latest.pt")["model"])  # fmt: skip


def test_debug_run_leaves_a_complete_run_directory(tmp_path):
    run = tmp_path / "run"
    result = wm("pretrain", *DEBUG, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert "pretrain 100%" in result.stderr  # the progress bar
    done = summary(run)
    assert done["status"] == "done" and done["command"] == "pretrain" and done["step"] == 10
    assert done["wall_seconds"] > 0
    for key in (
        "knn_top1",
        "knn_top1_random",
        "linear_top1",
        "linear_top1_random",
        "knn_top1_centred",
        "knn_top1_context",
    ):
        assert 0.0 <= done["probe"][key] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/jepa" in r] == [2, 4, 6, 8, 10]
    assert any("eval/knn_top1" in r for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").read_text().startswith("run:")
    with Image.open(run / "masks.png") as picture:
        assert picture.size[0] > 3 * 32 and picture.size[1] > 2 * 32  # 2 rows of 3 tiles
    # The collapse watch beside the random-init twin, and the probes against the step as a picture.
    assert 1.0 <= done["probe"]["feature_rank"] <= 64 and 1.0 <= done["probe"]["feature_rank_random"] <= 64
    assert 0 < done["probe"]["feature_std_min"] <= done["probe"]["feature_std_mean"]
    assert "probe feature_rank:" in result.stderr
    with Image.open(run / "probe_curve.png") as picture:
        assert picture.size == (720, 440)


def test_config_error_stops_before_any_work(tmp_path):
    run = tmp_path / "run"
    result = wm("pretrain", *DEBUG, "--set", "pretrain.encoder.patch_size=5", "--run-dir", str(run))
    assert result.returncode == 2
    assert "pretrain.encoder.patch_size: must divide image_size" in result.stderr
    assert not run.exists()


def test_existing_run_and_missing_run_are_refused(tmp_path):
    run = tmp_path / "run"
    assert wm("pretrain", *DEBUG, "--set", "pretrain.optim.steps=3", "--run-dir", str(run)).returncode == 0
    again = wm("pretrain", *DEBUG, "--run-dir", str(run))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    missing = wm("pretrain", "--resume", "--run-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "holds no run" in missing.stderr
    changed = wm("pretrain", "--resume", "--run-dir", str(run), "--set", "pretrain.optim.lr=0.1")
    assert changed.returncode == 2 and "pretrain.optim.lr" in changed.stderr
    bad_name = wm("pretrain", *DEBUG, "--runs", str(tmp_path), "--name", "../escape")
    assert bad_name.returncode == 2 and "--name" in bad_name.stderr


def test_sigkill_then_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    args = [*DEBUG, "--set", "pretrain.optim.steps=60", "--set", "pretrain.eval.every=20"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert wm("pretrain", *args, "--run-dir", str(whole)).returncode == 0

    process = start("pretrain", *args, "--run-dir", str(broken))
    wait_for_step(broken, 5, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = summary(broken)
    assert killed_at["status"] == "running" and killed_at["step"] < 60  # it really died mid-run

    resumed = wm("pretrain", "--resume", "--run-dir", str(broken))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert summary(broken)["status"] == "done"
    assert same_parameters(whole, broken)
    # Evaluations before the kill are kept in the checkpoint: the curve has every one of them.
    history = read_checkpoint(broken / "checkpoints/latest.pt")["probe_history"]
    assert [record["step"] for record in history] == [20, 40, 60]
    assert history == read_checkpoint(whole / "checkpoints/latest.pt")["probe_history"]


def test_sigterm_saves_marks_interrupted_and_resumes(tmp_path):
    run = tmp_path / "run"
    process = start("pretrain", *DEBUG, "--set", "pretrain.optim.steps=100", "--run-dir", str(run))
    wait_for_step(run, 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and 5 <= stopped["step"] < 100
    assert read_checkpoint(run / "checkpoints/latest.pt")["step"] == stopped["step"]
    resumed = wm("pretrain", "--resume", "--run-dir", str(run), "--set", "pretrain.optim.steps=100")
    assert resumed.returncode == 0 and summary(run)["status"] == "done"


def test_diverging_run_stops_with_a_clear_failure(tmp_path):
    run = tmp_path / "run"
    result = wm(
        "pretrain",
        *DEBUG,
        "--run-dir",
        str(run),
        "--set",
        "pretrain.optim.lr=1e30",
        "--set",
        "pretrain.optim.start_lr=1e30",
        "--set",
        "pretrain.optim.warmup_steps=0",
        "--set",
        "pretrain.optim.grad_clip=0",
        "--set",
        "pretrain.optim.max_nonfinite=3",
    )
    assert result.returncode == 1, result.stderr
    # A learning rate of 1e30 makes the weights non-finite at the first step: the run stops there, before any
    # checkpoint could hold them (a merely non-finite loss skips its step; tests/battery/test_cycle_divergence.py).
    assert "made the parameters non-finite" in result.stderr
    failed = summary(run)
    assert failed["status"] == "failed" and "NonFiniteParametersError" in failed["error"]
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        state = torch.load(checkpoint, weights_only=True)
        tensors = [t for t in state["model"].values() if t.is_floating_point()]
        assert tensors and all(torch.isfinite(t).all() for t in tensors), checkpoint


def test_damaged_checkpoints_are_never_silently_replaced_by_a_fresh_start(tmp_path):
    run = tmp_path / "run"
    assert wm("pretrain", *DEBUG, "--run-dir", str(run)).returncode == 0
    for name in ("latest.pt", "previous.pt"):
        path = run / "checkpoints" / name
        data = bytearray(path.read_bytes())
        data[100] ^= 0x01
        path.write_bytes(bytes(data))
    result = wm("pretrain", "--resume", "--run-dir", str(run))
    assert result.returncode == 2
    assert "no valid checkpoint" in result.stderr and "damaged" in result.stderr


def test_image_folder_with_a_corrupt_file_is_counted_not_fatal(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            pixels[:, :, 0] = 250 if label == "cats" else 10
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    (folder / "cats" / "broken.jpg").write_bytes(b"not an image at all")
    run = tmp_path / "run"
    result = wm(
        "pretrain",
        *DEBUG,
        "--run-dir",
        str(run),
        "--set",
        f"pretrain.data.source=folder:{folder}",
        "--set",
        "pretrain.data.workers=2",
        "--set",
        "pretrain.optim.batch_size=25",
        "--set",
        "pretrain.optim.steps=3",
        "--set",
        "pretrain.optim.warmup_steps=1",
    )
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr
    done = summary(run)
    assert done["results"]["bad_images"] >= 1 and done["dataset"]["images"] == 25


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    result = wm(
        "pretrain",
        *DEBUG,
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"pretrain.data.source=folder:{tmp_path / 'empty'}",
    )
    assert result.returncode != 0
    assert "empty" in result.stderr and ".png" in result.stderr.lower()


def test_runs_table_lists_runs(tmp_path):
    assert wm("pretrain", *DEBUG, "--runs", str(tmp_path), "--name", "first").returncode == 0
    table = wm("runs", "--runs", str(tmp_path))
    assert table.returncode == 0
    assert "first" in table.stdout and "done" in table.stdout and "knn_top1" in table.stdout


def test_help_lists_commands():
    result = wm("--help")
    assert result.returncode == 0 and "pretrain" in result.stdout
