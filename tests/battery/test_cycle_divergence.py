"""A `wm cycle` whose fine-tune diverges tells the user to lower the learning rate the fine-tune uses (cycle.lr), not
iteration 0's (world_model.lr)."""

import pytest
from battery_helpers import DEBUG, summary, wm

pytestmark = pytest.mark.slow  # each test starts `wm` subprocesses

# Two iterations as short as the debug preset allows, and a fine-tune that stops at its second bad step.
CYCLE = ["--set", "world_model.steps=6", "--set", "world_model.decoder_steps=2", "--set", "world_model.eval_every=0",
         "--set", "evolve.generations=1", "--set", "evolve.final_episodes=2", "--set", "cycle.iterations=2",
         "--set", "cycle.train_steps=10", "--set", "cycle.generations=1", "--set", "world_model.max_nonfinite=2",
         "--set", "run.progress=false"]  # fmt: skip


@pytest.mark.parametrize(
    ("lr", "message"),
    [("1e8", "non-finite losses in a row"), ("1e30", "made the parameters non-finite")],
    ids=["nonfinite-losses", "nonfinite-parameters"],
)
def test_a_diverging_fine_tune_names_cycle_lr(tmp_path, lr, message):
    run = tmp_path / "run"
    result = wm("cycle", *DEBUG, *CYCLE, "--set", f"cycle.lr={lr}", "--run-dir", str(run))
    assert result.returncode == 1, result.stderr
    failure = [line for line in result.stderr.splitlines() if line.startswith("wm cycle: failed:")]
    assert len(failure) == 1 and message in failure[0], result.stderr
    assert "lower cycle.lr" in failure[0] and "world_model.lr" not in failure[0], failure[0]
    assert summary(run)["status"] == "failed" and summary(run)["iteration"] == 1  # iteration 0 trained fine
