"""`wm eval --run` and `wm video --run` on real debug runs, in subprocesses: the run's own evaluation comes back
exactly (with an action repeat too, its env steps counted), videos decode with the frames of the episode played,
runs without a controller or a decoder still get a video, and what is no run is refused by name."""

import json
from pathlib import Path

import pytest
from run_wm import DEBUG, mp4_frames, summary, wm

pytestmark = pytest.mark.slow  # each test starts `wm` subprocesses

QUICK = ["--set", "world_model.steps=6", "--set", "world_model.eval_every=0", "--set", "world_model.decoder_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A pixel train run, an evolve run on it, and a train run from state observations."""
    root = tmp_path_factory.mktemp("runs")
    paths = {name: root / name for name in ("train", "evolve", "state")}
    result = wm("train", *DEBUG, *QUICK, "--set", "world_model.video_steps=0", "--run-dir", str(paths["train"]))
    assert result.returncode == 0, result.stderr
    result = wm("evolve", *DEBUG, *QUICK, "--world-model", str(paths["train"]), "--run-dir", str(paths["evolve"]))
    assert result.returncode == 0, result.stderr
    result = wm("train", *DEBUG, *QUICK, "--set", "env.obs=state", "--run-dir", str(paths["state"]))
    assert result.returncode == 0, result.stderr
    return paths


def test_eval_replays_the_runs_own_evaluation_exactly(runs):
    result = wm("eval", "--run", str(runs["evolve"]), "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    assert "evaluate 100%" in result.stderr and "real return" in result.stderr
    ours, theirs = json.loads((runs["evolve"] / "eval.json").read_text()), summary(runs["evolve"])
    for key in ("eval_return_mean", "eval_return_std", "eval_env_steps"):
        assert ours[key] == theirs[key], key
    assert ours["eval_returns"] == theirs["eval_returns"]  # episode by episode
    assert len(ours["eval_returns"]) == ours["eval_episodes"] == theirs["eval_episodes"]
    assert sum(ours["eval_lengths"]) == ours["eval_env_steps"]


def test_eval_with_another_seed_and_count_plays_those_episodes(runs):
    result = wm(
        "eval", "--run", str(runs["evolve"]), "--episodes", "3", "--envs", "1", "--seed", "5", "--set", "run.threads=1"
    )
    assert result.returncode == 0, result.stderr
    ours = json.loads((runs["evolve"] / "eval.json").read_text())
    assert ours["eval_episodes"] == len(ours["eval_returns"]) == 3 and ours["seed"] == 5


def test_video_shows_the_controllers_episode_beside_the_dream(runs):
    out = runs["evolve"] / "clip.mp4"
    result = wm("video", "--run", str(runs["evolve"]), "--steps", "12", "--out", str(out), "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    steps = int(result.stderr.split(" over ")[-1].split(" steps")[0])
    assert 1 <= steps <= 12
    frames = mp4_frames(out)
    assert frames.shape == (steps + 1, 208, 384, 3)  # every observation, its last included; two 192 px panels


def test_video_of_a_run_without_a_controller_plays_random_actions(runs):
    result = wm("video", "--run", str(runs["train"]), "--steps", "8", "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    assert "playing random actions" in result.stderr
    frames = mp4_frames(runs["train"] / "videos" / "random.mp4")
    assert 2 <= len(frames) <= 9 and frames.shape[1:] == (208, 384, 3)


def test_video_of_a_state_run_shows_the_rendered_env_alone(runs):
    result = wm("video", "--run", str(runs["state"]), "--steps", "8", "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    frames = mp4_frames(runs["state"] / "videos" / "random.mp4")
    assert 2 <= len(frames) <= 9
    assert frames.shape[1:] == (400, 608, 3)  # CartPole renders 600 x 400; padded to multiples of 16


def test_eval_of_a_run_without_a_controller_is_refused(runs):
    result = wm("eval", "--run", str(runs["train"]))
    assert result.returncode == 2
    assert "no controller yet (no checkpoints/best.pt)" in result.stderr


@pytest.mark.parametrize("command", ["eval", "video"])
def test_what_is_no_run_is_refused_by_name(tmp_path, command):
    result = wm(command, "--run", str(tmp_path / "missing"))
    assert result.returncode == 2 and f"wm {command}: error: --run {tmp_path / 'missing'}: not a run" in result.stderr


def test_eval_of_a_run_with_an_action_repeat_replays_it_and_counts_env_steps(tmp_path):
    repeat = ["--set", "env.obs=state", "--set", "env.action_repeat=2"]
    train, evolve = tmp_path / "train", tmp_path / "evolve"
    result = wm("train", *DEBUG, *QUICK, *repeat, "--run-dir", str(train))
    assert result.returncode == 0, result.stderr
    result = wm("evolve", *DEBUG, *QUICK, *repeat, "--world-model", str(train), "--run-dir", str(evolve))
    assert result.returncode == 0, result.stderr
    result = wm("eval", "--run", str(evolve), "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    ours, theirs = json.loads((evolve / "eval.json").read_text()), summary(evolve)
    assert ours["eval_returns"] == theirs["eval_returns"] and ours["eval_lengths"] == theirs["eval_lengths"]
    assert ours["eval_env_steps"] == theirs["eval_env_steps"] == 2 * sum(ours["eval_lengths"])  # agent steps x 2


def test_eval_takes_only_the_run_settings_by_set_and_names_them(runs):
    """`--set` as every command takes it, but a player's only: the run's own config says the rest."""
    result = wm("eval", "--run", str(runs["evolve"]), "--set", "evolve.eval_episodes=3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--set evolve.eval_episodes: this command takes only run.threads, run.progress" in result.stderr
