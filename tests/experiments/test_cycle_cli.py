"""`wm cycle` end to end, in real subprocesses on the debug preset; its window source and refusals in process."""

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_wm import DEBUG, mp4_frames, start, summary, tensorboard_events, tensors_equal, untimed, wm

from envs import EnvSpec, Episode, EpisodeStore
from experiments import cli
from experiments.checkpoint import read_checkpoint, save_checkpoint
from experiments.cycle import CycleWindows, improves, iteration_metrics, reaches_target
from experiments.windows import StoreWindows, split_episodes

# Two iterations with a frozen encoder (the latent cache grows with every collection); a later iteration's collection
# of 300 steps takes a few seconds, long enough to be killed in it.
CYCLE = ["--set", "cycle.iterations=2", "--set", "cycle.collect_steps=300", "--set", "world_model.freeze_encoder=true"]
LINEAR_PARAMS = (16 + 32) * 2 + 2  # a linear controller over [z, h] of the debug world model, CartPole's 2 actions
MODEL_KEYS = {"pred_error_k1", "pred_error_k5", "reward_error", "cont_auc", "effective_rank", "collapsed"}


def cycle(run: Path, *args: str) -> subprocess.CompletedProcess:
    return wm("cycle", *DEBUG, *args, "--run-dir", str(run))


# The fewest training steps and generations that still run every phase: for tests of what the cycle does around them.
SHORT = [
    "world_model.steps=4",
    "world_model.warmup_steps=1",
    "world_model.decoder_steps=0",
    "world_model.eval_every=0",
    "evolve.generations=1",
]


def short_cycle(run: Path, *settings: str) -> subprocess.CompletedProcess:
    """`cycle` with SHORT and then `settings` (KEY=VALUE each) as --set overrides."""
    return cycle(run, *[part for setting in [*SHORT, *settings] for part in ("--set", setting)])


def resume(run: Path) -> subprocess.Popen:
    return start("cycle", "--resume", "--set", "run.threads=1", "--run-dir", str(run))


def wait_for(run: Path, process: subprocess.Popen, condition: Callable[[dict], bool], timeout: float = 120) -> None:
    """Poll summary.json (written atomically with every checkpoint) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not ((run / "summary.json").exists() and condition(summary(run))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.01)


def kill(process: subprocess.Popen) -> str:
    process.kill()
    return process.communicate()[1]


def index_lines(run: Path) -> list[str]:
    """The episode store's index: one line per shard, one shard per collection."""
    return (run / "episodes/index.jsonl").read_text().splitlines(keepends=True)


def assert_same_end(a: Path, b: Path) -> None:
    """Two cycles ended in the same state: world model, decoder, best controller (evolve.agent=es) or actor-critic
    (evolve.agent=actor_critic), history (its figures but the milliseconds a decision took), env steps."""
    state_a, state_b = read_checkpoint(a / "checkpoints/latest.pt"), read_checkpoint(b / "checkpoints/latest.pt")
    assert (state_a["iteration"], state_a["phase"]) == (state_b["iteration"], state_b["phase"])
    trainer_a, trainer_b = state_a["trainer"], state_b["trainer"]
    assert trainer_a["step"] == trainer_b["step"]
    assert tensors_equal(trainer_a["model"], trainer_b["model"])
    assert tensors_equal(trainer_a["decoder"], trainer_b["decoder"])
    if state_a["best"] is None:  # the planner and the actor-critic keep no controller
        assert state_b["best"] is None and not (b / "checkpoints/best.pt").exists()
    else:
        assert torch.equal(state_a["best"], state_b["best"])
        best_a, best_b = read_checkpoint(a / "checkpoints/best.pt"), read_checkpoint(b / "checkpoints/best.pt")
        assert torch.equal(best_a["parameters"], best_b["parameters"])
    learner_a, learner_b = state_a.get("actor_critic"), state_b.get("actor_critic")
    assert (learner_a is None) == (learner_b is None)
    if learner_a is not None:
        learner_a, learner_b = learner_a["actor_critic"], learner_b["actor_critic"]
        assert learner_a["steps"] == learner_b["steps"] and torch.equal(learner_a["generator"], learner_b["generator"])
        for key in ("actor", "critic", "target_critic"):
            assert tensors_equal(learner_a[key], learner_b[key]), key
    done_a, done_b = summary(a), summary(b)
    assert json.dumps(untimed(done_a["history"])) == json.dumps(untimed(done_b["history"]))  # as text: NaN equals NaN
    for key in ("env_steps", "iterations", "stopped", "eval_return_mean", "best_eval_return"):
        assert done_a[key] == done_b[key], key


@pytest.fixture(scope="module")
def cycled(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("cycle") / "whole"
    result = cycle(run, *CYCLE)
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.mark.slow
def test_debug_cycle_leaves_a_complete_run_directory(cycled):
    run, result = cycled
    bars = ("collect CartPole-v1 100%", "encode 100%", "train 100%", "evolve 100%", "evaluate 100%", "cycle 100%")
    for bar in bars:
        assert bar in result.stderr, bar
    assert "tensorboard --logdir" in result.stderr and str(run / "learning_curve.png") in result.stderr
    assert "warning" not in result.stderr.lower() and "collapsed" not in result.stderr  # nothing a user must act on
    done = summary(run)
    assert done["status"] == "done" and done["command"] == "cycle" and done["stopped"] == "iterations"
    assert done["target_return"] == 475.0  # no cycle.target_return: CartPole-v1's registered reward_threshold
    assert isinstance(done["wall_seconds"], float) and done["wall_seconds"] > 0
    # The profile of where the time went, phase by phase, within the run's own wall time.
    profile = done["phase_seconds"]
    assert list(profile) == ["collect", "train", "evolve", "evaluate"] and all(v > 0 for v in profile.values())
    assert sum(profile.values()) <= done["wall_seconds"]
    assert isinstance(done["env_steps"], int) and isinstance(done["iterations"], int) and done["iterations"] == 2
    for key in ("eval_return_mean", "eval_return_std", "best_eval_return"):
        assert isinstance(done[key], float) and np.isfinite(done[key]), key
    assert MODEL_KEYS <= set(done["model"]) and isinstance(done["model"]["collapsed"], bool)
    history = done["history"]
    assert isinstance(history, list) and [r["iteration"] for r in history] == [0, 1]
    assert done["eval_return_mean"] == history[-1]["eval_return_mean"]
    assert done["best_eval_return"] == max(r["eval_return_mean"] for r in history)
    assert 400 <= history[0]["collect_steps"] < 402 and 300 <= history[1]["collect_steps"] < 302  # 2 envs
    assert [r["generations"] for r in history] == [3, 2]  # evolve.generations, then cycle.generations
    assert [r["train_step"] for r in history] == [30, 40]  # world_model.steps, then cycle.train_steps more
    assert [r["eval_episodes"] for r in history] == [2, 2]
    # The env steps are the collections' (the budget); the evaluations' are reported apart. The store holds every
    # collection.
    assert done["env_steps"] == sum(r["collect_steps"] for r in history)
    assert done["eval_env_steps_total"] == sum(r["eval_env_steps"] for r in history) > 0
    assert history[-1]["env_steps"] == done["env_steps"]
    store = EpisodeStore(run / "episodes", verify=False)
    assert store.num_steps - len(store) == sum(r["collect_steps"] for r in history)
    assert len(index_lines(run)) == 2  # one shard per collection
    key = done["data"]["latent_key"]
    assert len(list((run / "episodes/latents" / key).glob("*.npy"))) == len(store)  # later episodes encoded too

    with Image.open(run / "learning_curve.png") as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size[0] > 400

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)  # one step axis that never steps back
    iterations = [r for r in records if "cycle/return_mean" in r]
    assert [r["cycle/iteration"] for r in iterations] == [0, 1]
    assert [r["cycle/return_mean"] for r in iterations] == [r["eval_return_mean"] for r in history]
    assert [r["cycle/env_steps"] for r in iterations] == [r["env_steps"] for r in history]
    assert all(np.isfinite(r["cycle/dream_return"]) for r in iterations)
    assert len([r for r in records if "dream/fitness_best" in r]) == 5  # every generation of both searches
    assert len([r for r in records if "model/pred_error_k5" in r]) >= 2
    events = tensorboard_events(run)
    assert "cycle/return_mean" in events.Tags()["scalars"]
    # tensorboard plots the cycle's figures against the real env steps collected, not an internal counter.
    for tag in ("cycle/return_mean", "eval/return_mean"):
        assert [e.step for e in events.Scalars(tag)] == [r["env_steps"] for r in history], tag
    returns = [e.value for e in events.Scalars("eval/return_mean")]
    assert returns == pytest.approx([r["eval_return_mean"] for r in history])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")  # the config as hparams
    assert events.Tags()["images"] == ["video/real_vs_dream"] and len(events.Images("video/real_vs_dream")) == 2

    # A video per iteration: the first evaluation episode beside the dream, at most world_model.video_steps frames.
    assert [r["video"] for r in history] == ["videos/iteration-00.mp4", "videos/iteration-01.mp4"]
    for record in history:
        frames = mp4_frames(run / record["video"])
        assert 2 <= len(frames) <= 16 and frames.shape[1:] == (208, 384, 3)  # 192 px panels under a 16 px caption
        assert str(run / "videos") in result.stderr

    state = read_checkpoint(run / "checkpoints/latest.pt")
    assert state["command"] == "cycle" and (state["iteration"], state["phase"]) == (2, "collect")
    assert state["trainer"]["step"] == 40 and state["stopped"] == "iterations"
    best = read_checkpoint(run / "checkpoints/best.pt")
    assert best["command"] == "cycle" and best["parameters"].shape == (LINEAR_PARAMS,)
    assert best["figures"]["eval_return_mean"] == done["best_eval_return"]


def test_a_controller_chosen_again_keeps_its_first_score():
    """The best controller, chosen again by a warm-started search, cannot improve on itself by a luckier
    evaluation; any other controller improves by a higher real return."""
    best, other = np.array([0.5, -1.0]), np.array([0.5, -0.9])
    assert improves(best, None, 10.0, -np.inf)
    assert not improves(best.copy(), best, 500.0, 100.0)
    assert improves(other, best, 100.5, 100.0)
    assert not improves(other, best, 100.0, 100.0)


@pytest.mark.slow
def test_eval_replays_the_best_iterations_evaluation_with_that_iterations_model(cycled):
    run, _ = cycled
    result = wm("eval", "--run", str(run), "--set", "run.threads=1")
    assert result.returncode == 0, result.stderr
    best = max(summary(run)["history"], key=lambda r: r["eval_return_mean"])  # the first of equals stays best
    ours = json.loads((run / "eval.json").read_text())
    assert (ours["eval_return_mean"], ours["eval_return_std"]) == (best["eval_return_mean"], best["eval_return_std"])
    assert f"(iteration {best['iteration']})" in ours["controller"]


@pytest.mark.slow
def test_a_best_controller_without_its_world_model_is_refused_by_eval(cycled, tmp_path, capsys):
    """A cycle's best.pt from before they carried their iteration's model names none: refused, not guessed."""
    run = tmp_path / "old"
    shutil.copytree(cycled[0], run)
    best = read_checkpoint(run / "checkpoints/best.pt")
    del best["world_model"]
    save_checkpoint(run / "checkpoints/best.pt", best, keep_previous=False)
    code = cli.main(["eval", "--run", str(run)])
    assert code == 2 and "names no world model and carries none" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_resume_ends_in_the_state_of_an_uninterrupted_cycle(cycled, tmp_path):
    whole, _ = cycled
    killed = tmp_path / "killed"
    process = start("cycle", *DEBUG, *CYCLE, "--run-dir", str(killed))
    wait_for(killed, process, lambda s: s.get("iteration", 0) >= 1)  # the checkpoint that opens iteration 1
    kill(process)
    state = read_checkpoint(killed / "checkpoints/latest.pt")
    assert (state["iteration"], state["phase"]) == (1, "collect") and summary(killed)["status"] == "running"

    # A kill in a collection leaves the store without it, or (after its one add) with all of it. Make `other` the
    # case `killed` is not: its collection taken from the uninterrupted run, whose episodes are the same.
    other = tmp_path / "other"
    shutil.copytree(killed, other)
    lines = index_lines(other)
    if len(lines) == 1:
        added = json.loads(index_lines(whole)[1])["shard"]
        shutil.copy(whole / "episodes/shards" / added, other / "episodes/shards" / added)
        (other / "episodes/index.jsonl").write_text("".join(lines) + index_lines(whole)[1])
    else:
        (other / "episodes/shards" / json.loads(lines[1])["shard"]).unlink()
        (other / "episodes/index.jsonl").write_text(lines[0])

    # `killed` stopped again by SIGTERM while iteration 1 trains (it saves and says so), then to the end.
    process = resume(killed)
    wait_for(killed, process, lambda s: s.get("phase") == "train")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "resumed from" in stderr
    messages = ("collecting it again", "already holds this iteration's collection")
    assert messages[len(lines) - 1] in stderr
    stopped = summary(killed)
    assert stopped["status"] == "interrupted" and (stopped["iteration"], stopped["phase"]) == (1, "train")
    finished = resume(killed)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr
    assert summary(killed)["status"] == "done"
    assert_same_end(whole, killed)

    finished = resume(other)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr
    assert messages[2 - len(lines)] in stderr
    assert_same_end(whole, other)


@pytest.fixture(scope="module")
def first_iteration_only(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A debug cycle whose target every controller meets: it stops after iteration 0."""
    run = tmp_path_factory.mktemp("cycle") / "target"
    result = cycle(run, "--set", "cycle.target_return=-1")
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.mark.slow
def test_the_cycle_stops_at_its_target(first_iteration_only):
    run, result = first_iteration_only
    done = summary(run)
    assert done["status"] == "done" and done["stopped"] == "target"
    assert done["iterations"] == 1 and len(done["history"]) == 1 and done["eval_return_mean"] >= -1
    assert done["target_return"] == -1
    assert "the real return reached the target, -1.0 (cycle.target_return" in result.stderr
    assert (run / "learning_curve.png").is_file()


@pytest.mark.slow
def test_iteration_zero_is_wm_train_then_wm_evolve(first_iteration_only, tmp_path):
    run, _ = first_iteration_only
    trained, evolved = tmp_path / "train", tmp_path / "evolve"
    result = wm("train", *DEBUG, "--set", "world_model.video_steps=0", "--run-dir", str(trained))
    assert result.returncode == 0, result.stderr
    result = wm("evolve", *DEBUG, "--world-model", str(trained), "--run-dir", str(evolved))
    assert result.returncode == 0, result.stderr
    ours = read_checkpoint(run / "checkpoints/latest.pt")["trainer"]
    theirs = read_checkpoint(trained / "checkpoints/latest.pt")
    assert ours["step"] == theirs["step"] == 30
    assert tensors_equal(ours["model"], theirs["model"]) and tensors_equal(ours["decoder"], theirs["decoder"])
    parameters = read_checkpoint(run / "checkpoints/best.pt")["parameters"]
    assert torch.equal(parameters, read_checkpoint(evolved / "checkpoints/best.pt")["parameters"])
    record, theirs = summary(run)["history"][0], summary(evolved)
    for key in ("dream_return", "eval_return_mean", "eval_return_std", "chosen"):
        assert record[key] == theirs[key], key
    assert record["start_states"] == theirs["data"]["start_states"]


@pytest.mark.slow
def test_the_cycle_stops_before_it_would_exceed_its_env_step_budget(tmp_path):
    run = tmp_path / "budget"
    result = short_cycle(run, "cycle.max_env_steps=450")
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["stopped"] == "budget" and done["iterations"] == 1
    assert done["env_steps"] + 100 > 450  # another collection of cycle.collect_steps would not have fitted
    assert "would take the env steps past cycle.max_env_steps" in result.stderr


@pytest.mark.slow
def test_with_an_action_repeat_the_budget_counts_env_steps_not_agent_steps(tmp_path):
    run = tmp_path / "repeat"
    # 200 random-policy transitions of 2 env steps each (about 400), then 100 more transitions would take the count
    # past 500: one iteration. Counted as agent steps, a second one (about 300) would have fitted.
    settings = [
        "env.action_repeat=2",
        "world_model.collect_steps=200",
        "cycle.max_env_steps=500",
    ]
    result = short_cycle(run, *settings)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["stopped"] == "budget" and done["iterations"] == 1
    (record,) = done["history"]
    assert 200 <= record["collect_steps"] <= 201  # transitions: agent steps, over 2 sub-envs
    assert done["env_steps"] == record["env_steps"] == 2 * record["collect_steps"]
    assert record["eval_env_steps"] == 2 * sum(record["eval_lengths"]) > 0
    refused = cycle(tmp_path / "over", "--set", "env.action_repeat=2", "--set", "cycle.max_env_steps=700")
    assert refused.returncode != 0
    assert (
        "fewer than iteration 0's random-policy collection (world_model.collect_steps=400 x env.action_repeat=2"
        in refused.stderr
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cycle.iterations=0", "cycle.iterations: must be >= 1"),
        ("cycle.collect_steps=0", "cycle.collect_steps: must be >= 1"),
        ("cycle.train_steps=0", "cycle.train_steps: must be >= 1"),
        ("cycle.generations=0", "cycle.generations: must be >= 1"),
        ("cycle.exploration=1.5", "cycle.exploration: must be in [0, 1]"),
        ("cycle.lr=0", "cycle.lr: must be a finite number > 0"),
        ("cycle.sigma=-1", "cycle.sigma: must be a finite number > 0"),
        ("cycle.target_return=high", "cycle.target_return: expected a number"),
        ("cycle.max_env_steps=300", "cycle.max_env_steps: 300 is fewer than iteration 0's random-policy collection"),
        ("cycle.iteration=3", "cycle.iteration: unknown key (did you mean 'iterations'?)"),
        ("cycle.search=fresh", "cycle.search: unknown key"),  # a key older configs hold
    ],
)
def test_impossible_cycle_settings_are_refused_naming_the_key(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    code = cli.main(["cycle", *DEBUG, "--set", override, "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("wm cycle: error: ") and message in stderr, stderr
    assert not run.exists()  # refused before any work


def test_training_windows_skip_the_held_out_episodes_of_iteration_zero(tmp_path):
    spec = EnvSpec("Toy-v0", "state", (1,), "float32", True, 2, None, None, None)
    store = EpisodeStore(tmp_path / "episodes", spec)

    def add(number: int, length: int) -> None:  # every observation of episode i holds the value i
        obs = np.full((length + 1, 1), number, dtype=np.float32)
        store.add_episode(
            Episode.from_transitions(obs, np.eye(2, dtype=np.float32)[[0] * length], np.ones(length), True)
        )

    for number, length in enumerate([5, 9, 3, 12, 7, 6, 8, 10, 4, 11]):
        add(number, length)
    split = split_episodes(store.episode_steps, eval_fraction=0.3)  # episodes 7, 8, 9 held out
    # Before later episodes exist, the windows are those of `wm train`, draw for draw.
    alone = CycleWindows(store, split, len(store)).train_windows(32, 6, np.random.default_rng(1))
    assert np.array_equal(alone.obs, StoreWindows(store, split).train_windows(32, 6, np.random.default_rng(1)).obs)
    for number, length in zip(range(10, 13), [9, 2, 14], strict=True):  # the collections of later iterations
        add(number, length)
    windows = CycleWindows(store, split, len(store))
    train = windows.train_windows(512, 6, np.random.default_rng(0))
    seen = set(np.unique(train.obs).tolist())
    assert seen.isdisjoint({7, 8, 9}) and {0, 6, 10, 12} <= seen  # both ranges, never the held-out one
    assert set(np.unique(windows.held_out_windows(10, 6).obs).tolist()) <= {7, 8, 9}
    # A window source of an earlier iteration ignores episodes stored after it.
    earlier = CycleWindows(store, split, 11).train_windows(512, 6, np.random.default_rng(0))
    assert set(np.unique(earlier.obs).tolist()) <= set(range(7)) | {10}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env_id", "obs"), [("Acrobot-v1", "pixels"), ("LunarLanderContinuous-v3", "state"), ("Parking-v0", "pixels")]
)
def test_any_gymnasium_id_runs_the_cycle_from_pixels_or_state(tmp_path, env_id, obs):
    """Another classic-control env (3 discrete actions) from pixels, a Box2D one (continuous actions) from state, and
    Parking, whose episodes report success: only `--set env.id` and `env.obs` change. The Box2D run holds each random
    action of iteration 0 for 3 steps (world_model.collect_hold)."""
    run = tmp_path / "any"
    hold = 3 if obs == "state" else 1
    settings = [
        "evolve.eval_episodes=1",
        "cycle.iterations=1",
        f"env.id={env_id}",
        f"env.obs={obs}",
        f"world_model.collect_hold={hold}",
    ]
    result = short_cycle(run, *settings)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["env"]["env_id"] == env_id and done["env"]["obs_mode"] == obs
    assert np.isfinite(done["eval_return_mean"]) and done["env_steps"] >= 400
    assert (run / "videos/iteration-00.mp4").is_file() == (obs == "pixels")  # a decoder draws pixels only
    if hold > 1:  # a sub-env's episodes follow each other, so only an episode's first run of actions may be short
        for episode in EpisodeStore(run / "episodes"):
            changes = np.flatnonzero(np.any(np.diff(episode.action[1:], axis=0) != 0, axis=1)) + 1
            assert np.all(np.diff(changes) == hold) and changes[0] <= hold, changes
    # The success rate is reported wherever the env says whether an episode succeeded, and only there.
    reports_success = env_id == "Parking-v0"
    assert ("eval_success_rate" in done) == ("eval_success_rate" in done["history"][-1]) == reports_success
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("cycle/success_rate" in record for record in records) == reports_success
    assert ("% successful" in result.stdout + result.stderr) == reports_success
    if reports_success:
        assert 0.0 <= done["eval_success_rate"] <= 1.0
        assert done["eval_success_rate"] == done["history"][-1]["eval_success_rate"]


@pytest.mark.slow
def test_a_start_curriculum_sets_where_the_parking_car_starts_and_is_checkpointed(tmp_path):
    """With cycle.start_curriculum on the whole lot's id, every collected episode still starts at the curriculum's
    first stage (the space within 12.5 m, in front of the car): the stage reaches the envs, not the id's own start."""
    run = tmp_path / "curriculum"
    settings = [
        "env.id=wm/ParkingLot-v0",
        "cycle.start_curriculum=true",
        "cycle.iterations=2",
        "evolve.eval_episodes=2",
        "cycle.generations=1",
        "cycle.train_steps=2",
    ]
    result = short_cycle(run, *settings)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert [record["start_stage"] for record in done["history"]] == [0, 0]  # no success on the near start yet
    starts = [episode.state[0] for episode in EpisodeStore(run / "episodes")]
    assert len(starts) >= 4
    for state in starts:  # state[6], state[7]: the space's centre in the car's frame
        assert 6.0 - 1e-4 <= np.hypot(state[6], state[7]) <= 12.5 + 1e-4, state
        assert abs(np.arctan2(state[7], state[6])) <= np.radians(26.5), state
    curriculum = read_checkpoint(run / "checkpoints/latest.pt")["curriculum"]
    assert curriculum["index"] == 0 and len(curriculum["recent"]) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["cycle/start_stage"] for r in records if "cycle/start_stage" in r] == [0, 0]


def test_a_start_curriculum_is_for_parking_envs_alone(tmp_path, capsys):
    code = cli.main(["cycle", *DEBUG, "--set", "cycle.start_curriculum=true", "--run-dir", str(tmp_path / "r")])
    stderr = capsys.readouterr().err
    assert code == 2 and "cycle.start_curriculum widens a Parking env's start; env.id is 'CartPole-v1'" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_without_a_config_the_cycle_runs_the_default_task(tmp_path, capsys):
    """The defaults are the default task (its budget of 30k env steps), here refused before any work."""
    run = tmp_path / "default"
    code = cli.main(["cycle", "--set", "world_model.collect_steps=40000", "--run-dir", str(run)])
    stderr = capsys.readouterr().err
    assert code == 2 and "cycle.max_env_steps: 30000 is fewer than iteration 0's random-policy collection" in stderr
    assert not run.exists()


def test_the_target_stops_a_curriculum_only_on_its_last_stage():
    assert reaches_target({"eval_return_mean": 5.0}, 4.0) and not reaches_target({"eval_return_mean": 3.0}, 4.0)
    assert not reaches_target({"eval_return_mean": 5.0}, None)
    assert not reaches_target({"eval_return_mean": 5.0, "start_stage": 2}, 4.0, last_stage=4)
    assert reaches_target({"eval_return_mean": 5.0, "start_stage": 4}, 4.0, last_stage=4)
    assert not reaches_target({"eval_return_mean": 3.0, "start_stage": 4}, 4.0, last_stage=4)


def test_iteration_metrics_carry_a_success_rate_only_where_the_env_reports_one():
    record = {
        "iteration": 1,
        "env_steps": 9000,
        "eval_return_mean": 3.5,
        "eval_return_std": 1.0,
        "eval_length_mean": 120.0,
        "dream_return": 7.0,
        "dream_real_gap": 3.5,
        "collect_steps": 3000,
        "eval_env_steps": 2400,
    }
    plain = iteration_metrics(record, best_return=4.0)
    assert "cycle/success_rate" not in plain and plain["cycle/best_return"] == 4.0
    parking = iteration_metrics({**record, "eval_success_rate": 0.25}, best_return=4.0)
    assert parking["cycle/success_rate"] == 0.25 and parking.items() >= plain.items()
    assert parking["eval/success_rate"] == 0.25 and plain["eval/return_mean"] == 3.5
