"""`wm cycle` with each agent of `wm evolve` (evolve.agent=es, planner, actor_critic), end to end in real subprocesses
on the debug preset: a complete run per agent, the exact resume of the planner's and the actor-critic's cycles after
SIGKILL, and the refusals of what a cycle cannot run (in process, through `experiments.cli.main`)."""

import json
import math
import subprocess
from pathlib import Path

import pytest
from run_wm import DEBUG, start, summary, wm
from test_cycle_cli import SHORT, assert_same_end, kill, resume, short_cycle, wait_for
from test_cycle_perception import refusal

from experiments.checkpoint import read_checkpoint

# Small searches and networks: seconds on the debug model (as tests/experiments/test_evolve_cli.py and
# test_actor_critic_cli.py run them); two iterations, so the second collects with the agent.
TWO = ["cycle.iterations=2", "cycle.train_steps=2", "cycle.generations=1"]
AGENTS = {
    "es": [],
    "planner": ["evolve.agent=planner", "planner.candidates=16", "planner.elites=4", "planner.horizon=5",
                "planner.iterations=2"],
    "actor_critic": ["evolve.agent=actor_critic", "actor_critic.starts=32", "actor_critic.width=32",
                     "actor_critic.steps=6"],
}  # fmt: skip
COLLECTS_WITH = {"es": "the best controller", "planner": "the planner", "actor_critic": "the actor"}


@pytest.fixture(scope="module", params=sorted(AGENTS))
def cycled(request, tmp_path_factory) -> tuple[str, Path, subprocess.CompletedProcess]:
    """A two-iteration debug cycle of the agent `request.param`: the agent, its run directory, the finished process."""
    agent = request.param
    run = tmp_path_factory.mktemp("cycle") / agent
    result = short_cycle(run, *TWO, *AGENTS[agent])
    assert result.returncode == 0, result.stderr
    return agent, run, result


@pytest.mark.slow
def test_a_debug_cycle_runs_with_each_agent(cycled):
    agent, run, result = cycled
    assert f"iteration 1: collect 100 steps with {COLLECTS_WITH[agent]}" in result.stderr
    done = summary(run)
    assert done["status"] == "done" and done["agent"] == agent and done["iterations"] == 2
    history = done["history"]
    assert [record["agent"] for record in history] == [agent, agent]
    for record in history:  # the real return and the milliseconds of a decision everywhere; the dream's where it is
        assert math.isfinite(record["eval_return_mean"]) and record["decision_ms"] > 0
        has_dream = agent != "planner"
        assert (record["dream_return"] is not None) == (record["dream_real_gap"] is not None) == has_dream
    assert done["decision_ms"] == history[-1]["decision_ms"] and done["dream_return"] == history[-1]["dream_return"]
    phases = ["collect", "train", "evaluate"] if agent == "planner" else ["collect", "train", "evolve", "evaluate"]
    assert list(done["phase_seconds"]) == phases
    assert (run / "checkpoints/best.pt").exists() == (agent == "es")  # only a controller can be replayed
    assert (run / "learning_curve.png").is_file() and (run / "videos/iteration-01.mp4").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == sorted(steps)  # one step axis that never steps back
    iterations = [record for record in records if "cycle/return_mean" in record]
    assert len(iterations) == 2 and all(("cycle/dream_return" in r) == (agent != "planner") for r in iterations)
    if agent == "actor_critic":  # the second iteration continues the first one's actor-critic
        assert [record["imagination_steps"] for record in history] == [6, 12]
        assert len([record for record in records if "loss/actor" in record]) == 6  # every run.log_every (2) steps
        learner = read_checkpoint(run / "checkpoints/latest.pt")["actor_critic"]["actor_critic"]
        assert learner["steps"] == 12
    if agent != "es":  # no controller to replay: `wm eval` says so in one line, as for a `wm evolve` run
        refused = wm("eval", "--run", str(run))
        assert refused.returncode == 2 and f"wm cycle` run of evolve.agent={agent} holds no" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("cycled", ["planner", "actor_critic"], indirect=True)
def test_iteration_zero_is_wm_train_then_wm_evolve_with_the_same_agent(cycled, tmp_path):
    """As for es (tests/experiments/test_cycle_cli.py): the same model, dream return and real episodes."""
    agent, run, _ = cycled
    trained, evolved = tmp_path / "train", tmp_path / "evolve"
    overrides = [part for setting in SHORT for part in ("--set", setting)]
    result = wm("train", *DEBUG, *overrides, "--set", "world_model.video_steps=0", "--run-dir", str(trained))
    assert result.returncode == 0, result.stderr
    overrides += [part for setting in AGENTS[agent] for part in ("--set", setting)]
    result = wm("evolve", *DEBUG, *overrides, "--world-model", str(trained), "--run-dir", str(evolved))
    assert result.returncode == 0, result.stderr
    record, theirs = summary(run)["history"][0], summary(evolved)
    for key in ("dream_return", "eval_returns", "eval_lengths"):  # the planner has no dream return in either
        assert record[key] == theirs.get(key), key


# Long enough to be killed mid-phase: the planner's evaluation (seconds of planning), the actor-critic's imagination
# (checkpointed every 5 steps: configs/debug.yaml's run.checkpoint_every).
RESUMED = {
    "planner": [*AGENTS["planner"], "planner.iterations=12", "evolve.eval_episodes=4"],
    "actor_critic": [*AGENTS["actor_critic"], "actor_critic.steps=20"],
}
# Where the second kill lands: iteration 1's evaluation (the planner), or its imagination after a checkpoint of its
# own (the actor-critic: past the phase's first checkpoint at 6 training steps + 20 imagined + 1 evaluation).
MID_PHASE = {
    "planner": lambda s: (s.get("iteration"), s.get("phase")) == (1, "evaluate"),
    "actor_critic": lambda s: (s.get("iteration"), s.get("phase")) == (1, "evolve") and s["step"] > 6 + 20 + 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("agent", sorted(RESUMED))
def test_sigkill_then_resume_ends_where_an_uninterrupted_cycle_ends(tmp_path, agent):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    settings = [*SHORT, *TWO, *RESUMED[agent]]
    result = short_cycle(whole, *TWO, *RESUMED[agent])
    assert result.returncode == 0, result.stderr

    process = start("cycle", *DEBUG, *[part for s in settings for part in ("--set", s)], "--run-dir", str(killed))
    wait_for(killed, process, lambda s: s.get("iteration", 0) >= 1)  # iteration 1 opens: it collects with the agent
    kill(process)
    process = resume(killed)
    wait_for(killed, process, MID_PHASE[agent])
    kill(process)
    state = read_checkpoint(killed / "checkpoints/latest.pt")
    assert summary(killed)["status"] == "running" and (state["iteration"], state["phase"]) in {
        (1, "evolve"),
        (1, "evaluate"),
    }
    if agent == "actor_critic":
        assert 20 < state["actor_critic"]["actor_critic"]["steps"] <= 40  # killed with the imagination under way
    finished = resume(killed)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr
    assert "resumed from" in stderr and summary(killed)["status"] == "done"
    assert_same_end(whole, killed)


def test_an_agent_the_cycle_cannot_run_is_refused_naming_the_key(tmp_path, capsys, monkeypatch):
    error = refusal(capsys, tmp_path, "--set", "evolve.agent=ppo")
    assert "evolve.agent: must be one of 'es', 'planner', 'actor_critic', got 'ppo'" in error
    monkeypatch.setenv("RANK", "0")  # as torchrun starts each of 2 processes
    monkeypatch.setenv("WORLD_SIZE", "2")
    error = refusal(capsys, tmp_path, "--set", "evolve.agent=planner")
    assert "evolve.agent=planner: wm cycle runs on several processes (torchrun) with evolve.agent=es alone" in error
