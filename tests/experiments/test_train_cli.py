"""`wm train` end to end, in real subprocesses on the debug preset, and its episode split in process."""

import json
import signal
import subprocess
from pathlib import Path

import imageio
import numpy as np
import pytest
from run_wm import DEBUG, REPO, start, summary, tensors_equal, wait_for_step, wm

from envs import EnvSpec, Episode, EpisodeStore, make_env
from experiments.checkpoint import read_checkpoint
from experiments.collection import collect_episodes
from experiments.config import load_config
from experiments.rundir import GracefulStop
from experiments.windows import StoreWindows, split_episodes

MODEL_KEYS = [
    *(f"pred_error_k{k}{suffix}" for k in (1, 5, 15) for suffix in ("", "_baseline")),
    "reward_error",
    "reward_error_baseline",
    "cont_auc",
    "probe_r2_z",
    "probe_r2_zh",
    "effective_rank",
    "collapsed",
]


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("train") / "debug"
    result = wm("train", *DEBUG, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A real `wm pretrain` checkpoint of the debug encoder shape (micro ViT, 32 px, patch 4)."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    steps = ["--set", "pretrain.optim.steps=3", "--set", "pretrain.optim.warmup_steps=1"]
    result = wm("pretrain", *DEBUG, *steps, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run / "checkpoints/latest.pt"


@pytest.mark.slow
def test_debug_run_leaves_a_complete_run_directory(debug_run):
    run, result = debug_run
    assert "collect CartPole-v1 100%" in result.stderr and "train 100%" in result.stderr  # the progress bars
    done = summary(run)
    assert done["status"] == "done" and done["command"] == "train" and done["step"] == 30
    assert set(MODEL_KEYS) <= set(done["model"])
    assert isinstance(done["model"]["collapsed"], bool)
    for key in MODEL_KEYS[:-1]:
        assert isinstance(done["model"][key], float)
    for key in ("pred_error_k1_baseline", "reward_error", "reward_error_baseline", "effective_rank"):
        assert np.isfinite(done["model"][key]), key
    assert done["data"]["collected"]["steps"] >= 400 and done["data"]["held_out_episodes"] >= 1
    assert done["data"]["collected"]["env_steps"] == done["data"]["collected"]["steps"]  # no action repeat

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/latent" in r] == list(range(2, 31, 2))
    logged = {key for r in records for key in r}
    assert {"loss/reward", "loss/cont", "loss/ensemble", "loss/decoder", "train/grad_norm", "perf/seq_per_s"} <= logged
    assert [r["step"] for r in records if "model/pred_error_k5" in r] == [15, 30]
    assert list((run / "tb").glob("events.out.tfevents.*"))

    state = read_checkpoint(run / "checkpoints/latest.pt")
    assert state["command"] == "train" and state["step"] == 30 and state["decoder_step"] == 5
    # The decoder trained beside the world model at every decoder_every-th step (0, 4, ..., 28), then 5 steps alone;
    # each logged step carries the latest decoder loss.
    assert int(state["decoder_optimizer"]["state"][0]["step"]) == len(range(0, 30, 4)) + 5
    assert all(np.isfinite(r["loss/decoder"]) for r in records if "loss/decoder" in r)
    assert EnvSpec.from_dict(state["env_spec"]).env_id == "CartPole-v1"

    video = run / done["video"]["path"]
    with imageio.get_reader(video, format="FFMPEG") as reader:  # an mp4 reader reports len() as inf: iterate
        frames = list(reader.iter_data())
    assert len(frames) == done["video"]["frames"] > done["video"]["context"]
    assert frames[0].shape[1] == 2 * (frames[0].shape[0] - 16)  # real | dream, under a caption band


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_parameters_of_an_uninterrupted_run(debug_run, tmp_path):
    whole, _ = debug_run
    broken = tmp_path / "broken"
    process = start("train", *DEBUG, "--run-dir", str(broken))
    wait_for_step(broken, 5, process)  # the step-5 checkpoint
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = summary(broken)
    assert killed_at["status"] == "running" and killed_at["step"] < 30  # it really died mid-run

    resumed = wm("train", "--resume", "--run-dir", str(broken))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "collect" not in resumed.stderr  # no second collection
    assert summary(broken)["status"] == "done"
    a, b = read_checkpoint(whole / "checkpoints/latest.pt"), read_checkpoint(broken / "checkpoints/latest.pt")
    assert tensors_equal(a["model"], b["model"]) and tensors_equal(a["decoder"], b["decoder"])
    assert summary(broken)["model"] == summary(whole)["model"]


@pytest.mark.slow
def test_sigterm_saves_and_marks_the_run_interrupted(tmp_path):
    run = tmp_path / "run"
    process = start("train", *DEBUG, "--set", "world_model.steps=400", "--run-dir", str(run))
    wait_for_step(run, 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and 5 <= stopped["step"] < 400
    assert read_checkpoint(run / "checkpoints/latest.pt")["step"] == stopped["step"]


@pytest.mark.slow
def test_an_encoder_that_does_not_fit_is_refused_naming_what_differs(debug_run, pretrained, tmp_path):
    run = tmp_path / "run"
    result = wm(
        "train", *DEBUG, "--encoder", str(pretrained), "--set", "world_model.patch_size=8", "--run-dir", str(run)
    )
    assert result.returncode == 2
    assert "world_model.patch_size is 8 here but 4 in the checkpoint" in result.stderr
    assert not run.exists()  # refused before any work
    not_pretrain = wm("train", *DEBUG, "--encoder", str(debug_run[0] / "checkpoints/latest.pt"), "--run-dir", str(run))
    assert not_pretrain.returncode == 2 and "not of 'pretrain'" in not_pretrain.stderr


@pytest.mark.slow
def test_frozen_pretrained_encoder_on_reused_episodes_caches_latents_and_stays_unchanged(
    debug_run, pretrained, tmp_path
):
    episodes = debug_run[0] / "episodes"
    run = tmp_path / "frozen"
    result = wm(
        "train", *DEBUG, "--encoder", str(pretrained), "--episodes", str(episodes),
        "--set", "world_model.freeze_encoder=true", "--set", "world_model.steps=10", "--run-dir", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and set(MODEL_KEYS) <= set(done["model"])
    assert not (run / "episodes").exists() and "collect" not in result.stderr  # reused, not collected
    assert done["data"]["episodes"] == str(episodes.resolve()) and done["data"]["collected"] is None
    key = done["data"]["latent_key"]
    assert len(list((episodes / "latents" / key).glob("*.npy"))) == done["data"]["num_episodes"]  # once per frame
    encoder = {
        k[len("encoder.") :]: v for k, v in read_checkpoint(pretrained)["model"].items() if k.startswith("encoder.")
    }
    model = read_checkpoint(run / "checkpoints/latest.pt")["model"]
    backbone = {k[len("backbone.") :]: v for k, v in model.items() if k.startswith("backbone.")}
    assert tensors_equal(backbone, encoder)  # neither training nor the decoder moved the frozen encoder


@pytest.mark.slow
def test_episodes_from_another_env_are_refused(debug_run, tmp_path):
    run = tmp_path / "run"
    result = wm(
        "train", *DEBUG, "--episodes", str(debug_run[0] / "episodes"), "--set", "env.size=48", "--run-dir", str(run)
    )
    assert result.returncode == 2
    assert "another env" in result.stderr and "obs_shape: (32, 32, 3) != (48, 48, 3)" in result.stderr
    assert not run.exists()


def test_training_and_held_out_windows_never_mix_episodes(tmp_path):
    spec = EnvSpec("Toy-v0", "state", (1,), "float32", True, 2, None, None, None)
    store = EpisodeStore(tmp_path / "episodes", spec)
    lengths = [5, 9, 3, 12, 7, 6, 8, 10, 4, 11]
    for number, length in enumerate(lengths):  # every observation of episode i holds the value i
        obs = np.full((length + 1, 1), number, dtype=np.float32)
        store.add_episode(
            Episode.from_transitions(obs, np.eye(2, dtype=np.float32)[[0] * length], np.ones(length), True)
        )
    split = split_episodes(store.episode_steps, eval_fraction=0.3)
    assert (split.num_episodes, split.first_held_out) == (10, 7)
    assert split.train_steps == sum(lengths[:7]) + 7 and split.total_steps == sum(lengths) + 10
    windows = StoreWindows(store, split)
    train = windows.train_windows(64, 6, np.random.default_rng(0))
    assert train.obs.max() <= 6 and train.is_first.sum() > 0  # training episodes only, spanning seams
    held_out = windows.held_out_windows(10, 6)
    assert held_out.obs.min() >= 7 and len(held_out.obs) == (split.total_steps - split.train_steps) // 6
    assert np.all(held_out.obs[:, 0, 0] == [7, 7, 8, 9])  # tiled from the first held-out step, no overlap
    assert held_out.is_first[0, 0]
    assert windows.held_out_episode().obs[0, 0] == 9  # the longest held-out episode (11 transitions)


def test_a_collection_with_held_actions_stores_them_in_runs_of_the_hold(tmp_path: Path) -> None:
    settings = ["env.id=Pendulum-v1", "env.obs=state", "world_model.collect_steps=300", "world_model.collect_hold=4"]
    cfg = load_config([REPO / "configs/debug.yaml"], settings)
    _, spec = make_env("Pendulum-v1", obs="state")
    store = EpisodeStore(tmp_path, spec=spec)
    stats = collect_episodes(cfg, store, GracefulStop())
    assert stats.steps == 300 and len(store) == 2  # 2 sub-envs, 150 steps each: cut before the 200-step limit
    for episode in store:
        actions = episode.action[1:, 0]  # the first row holds no action
        changes = np.flatnonzero(np.diff(actions)) + 1  # (R-1,) where a new action begins
        assert np.all(np.diff(changes) == 4) and changes[0] == 4, changes  # uniform draws never repeat exactly
