"""benchmarks/reward_sums.py: its sums against hand-computed answers on a model whose heads are constants, batching
against one episode at a time and against `real_states`, and a run on a real debug world model that prints every
metric it promises."""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from run_benchmark import REPO, records_of, run_script

from envs import Episode
from worldmodel.dynamics.build import build_world_model
from worldmodel.dynamics.world_model import WorldModelBatch

spec = importlib.util.spec_from_file_location("reward_sums", REPO / "benchmarks" / "reward_sums.py")
reward_sums = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reward_sums)

OBS_DIM, ACTIONS = 4, 2
TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=2)
LATENTS = {"deterministic": {}, "stochastic": dict(latent="stochastic", freeze_encoder=True)}


class Constant(torch.nn.Module):
    """A head that predicts `value` whatever it sees: (..., in) -> (..., 1)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((*x.shape[:-1], 1), self.value)


def tiny_model(latent: str):
    torch.manual_seed(0)
    return build_world_model((OBS_DIM,), ACTIONS, **TINY, **LATENTS[latent]).eval()


def episode(length: int, seed: int, reward: float | None = None) -> Episode:
    """An episode of `length` transitions: random state observations and one-hot actions, rewards all `reward`
    (random when None)."""
    rng = np.random.default_rng(seed)
    actions = np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, length)]  # (L, A)
    rewards = np.full(length, reward, np.float32) if reward is not None else rng.normal(size=length)
    obs = rng.normal(size=(length + 1, OBS_DIM)).astype(np.float32)
    return Episode.from_transitions(obs, actions, rewards, terminated=bool(seed % 2))


@pytest.mark.parametrize("latent", LATENTS)
def test_constant_heads_give_hand_computed_sums(latent):
    """Reward head c = 0.25, continue logit 0 (probability 1/2), real rewards all 1, burn-in 2. An episode of L
    transitions: teacher-forced sum c L against L; open loop over n = L - 2 steps c n against n; expected mode
    c (1 + 1/2 + ... + 1/2^(n-1)) = c (2 - 2^(1-n)). An episode of L = 2 has nothing to imagine."""
    model = tiny_model(latent)
    model.reward_head, model.cont_head = Constant(0.25), Constant(0.0)
    lengths = [5, 9, 2]
    batch = reward_sums.episode_batch(model, [episode(length, seed, 1.0) for seed, length in enumerate(lengths)])
    sums = reward_sums.reward_sums(model, batch, burn_in=2)
    imagined = torch.tensor([3.0, 7.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sums.real, torch.tensor([5.0, 9.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(sums.teacher_forced, 0.25 * sums.real)
    torch.testing.assert_close(sums.real_imagined, imagined)
    torch.testing.assert_close(sums.open_loop, 0.25 * imagined)
    expected = torch.tensor([0.25 * (2 - 2.0**-2), 0.25 * (2 - 2.0**-6), 0.0], dtype=torch.float64)
    torch.testing.assert_close(sums.open_loop_expected, expected)
    assert sums.imagined.tolist() == [True, True, False]
    figures = reward_sums.error_figures(sums)
    # Teacher-forced errors 0.75 L: 3.75, 6.75, 1.5 (median 3.75); open loop 0.75 n over the two that imagine.
    assert figures["teacher_forced"] == pytest.approx((3.75, 12.0 / 3, -12.0 / 3))
    assert figures["open_loop"] == pytest.approx((0.75 * 5, 0.75 * 5, -0.75 * 5))
    assert figures["open_loop_expected"][0] == pytest.approx(((3 - expected[0]) + (7 - expected[1])).item() / 2)
    assert figures["open_loop_zero"] == pytest.approx((5.0, 5.0, -5.0))  # |3| and |7|


@pytest.mark.parametrize("latent", LATENTS)
def test_a_padded_batch_gives_each_episode_what_it_gets_alone(latent):
    model = tiny_model(latent)
    episodes = [episode(length, seed) for seed, length in enumerate([4, 11, 7])]
    together = reward_sums.reward_sums(model, reward_sums.episode_batch(model, episodes), burn_in=1)
    for i, alone in enumerate(episodes):
        single = reward_sums.reward_sums(model, reward_sums.episode_batch(model, [alone]), burn_in=1)
        for name, value in single._asdict().items():
            torch.testing.assert_close(getattr(together, name)[i : i + 1], value, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("latent", LATENTS)
def test_teacher_forced_sums_read_the_states_real_states_gives(latent):
    """The step-by-step filter reads the reward head at the states the trainer's `real_states` gives."""
    model = tiny_model(latent)
    real = episode(9, seed=3)
    sums = reward_sums.reward_sums(model, reward_sums.episode_batch(model, [real]), burn_in=2)
    window = WorldModelBatch(
        obs=torch.tensor(real.obs)[None],
        action=torch.tensor(real.action)[None],
        reward=torch.tensor(real.reward)[None],
        cont=1.0 - torch.tensor(real.is_terminal, dtype=torch.float32)[None],
        is_first=torch.tensor(real.is_first)[None],
    )
    with torch.no_grad():
        hidden, z, _ = model.real_states(window)
        expected = model.reward(hidden, z)[0, 1:].double().sum()
    torch.testing.assert_close(sums.teacher_forced[0], expected, rtol=1e-5, atol=1e-5)


def test_a_success_bonus_is_read_only_where_the_env_names_one():
    assert reward_sums.success_bonus("CartPole-v1") is None
    assert reward_sums.success_bonus("wm/Parking-v0") == reward_sums.success_bonus("ParkingLot-v0") == 5.0


@pytest.mark.parametrize("latent", LATENTS)
def test_bonus_episodes_are_those_paid_or_charged_half_the_bonus_and_their_figures_theirs_alone(latent):
    """Bonus 4: an episode with a step of +2 counts as paid, one with -2 as charged, one with 1.9 as neither."""
    model = tiny_model(latent)
    model.reward_head, model.cont_head = Constant(0.0), Constant(0.0)
    episodes = [episode(6, seed, 1.0) for seed in range(3)]
    for real, paid in zip(episodes, [2.0, -2.0, 1.9], strict=True):
        real.reward[-1] = paid
    batch = reward_sums.episode_batch(model, episodes)
    sums = reward_sums.reward_sums(model, batch, burn_in=2)
    figures = reward_sums.bonus_episode_figures(sums, batch.reward, bonus=4.0)
    assert figures["bonus"][0] == figures["penalty"][0] == 1
    # A head of 0: the errors are the real sums, 5 + 2 (paid) and 5 - 2 (charged); open loop over steps 3..6.
    assert figures["bonus"][1]["teacher_forced"] == pytest.approx((7.0, 7.0, -7.0))
    assert figures["penalty"][1]["open_loop"] == pytest.approx((1.0, 1.0, -1.0))


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    run = tmp_path_factory.mktemp("reward_sums") / "wm"
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "train", "--config", "debug", "--set", "run.threads=1",
         "--set", "run.progress=false", "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


METRICS = {
    f"{name}_error_{figure}"
    for name in ("teacher_forced", "open_loop", "open_loop_expected", "open_loop_zero")
    for figure in ("median", "mean")
} | {"real_return_median", "episodes", "mean_length"}


@pytest.mark.slow
def test_a_debug_run_prints_every_metric_on_its_held_out_episodes(world_model):
    records = records_of(run_script("reward_sums.py", "--world-model", str(world_model), "--threads", "1"))
    assert set(records) == METRICS  # CartPole has no success bonus
    assert all(r["bench"] == "reward_sums" and math.isfinite(r["value"]) for r in records.values())
    assert all(records[m]["value"] >= 0 for m in METRICS if "error" in m)
    summary = json.loads((world_model / "summary.json").read_text())
    assert records["episodes"]["value"] == summary["data"]["held_out_episodes"]
    assert records["episodes"]["episodes_from"] == "the run's split"
    assert records["open_loop_error_median"]["burn_in"] == 2  # the debug preset's dream.burn_in
    quick = records_of(run_script("reward_sums.py", "--world-model", str(world_model), "--quick", "--burn-in", "0"))
    assert set(quick) == METRICS and quick["episodes"]["value"] == reward_sums.QUICK_EPISODES
    assert quick["open_loop_error_median"]["burn_in"] == 0


@pytest.mark.slow
def test_an_env_with_a_success_bonus_gets_its_share_and_its_bonus_episodes(world_model, monkeypatch, capsys):
    """CartPole named as if its module held Parking's SUCCESS_BONUS: the lines Parking's runs print."""
    monkeypatch.setitem(reward_sums.SUCCESS_BONUSES, "CartPole-v1", ("envs.parking", "SUCCESS_BONUS"))
    reward_sums.main(["--world-model", str(world_model), "--quick"])
    records = {r["metric"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    share, median = records["open_loop_error_of_bonus"], records["open_loop_error_median"]["value"]
    assert share["bonus"] == 5.0 and share["value"] == pytest.approx(median / 5, abs=1e-4)
    assert records["bonus_episodes"]["value"] == 0  # CartPole pays 1 a step: no step is worth half the bonus
    assert records["bonus_open_loop_error_median"]["value"] is None


@pytest.mark.slow
def test_another_store_is_read_whole(world_model):
    """--store: every episode of the given store (here the run's own), its frames encoded afresh."""
    records = records_of(
        run_script("reward_sums.py", "--world-model", str(world_model), "--store", str(world_model / "episodes"))
    )
    summary = json.loads((world_model / "summary.json").read_text())
    assert records["episodes"]["value"] == summary["data"]["num_episodes"]
    assert records["episodes"]["episodes_from"] == f"every episode of {world_model / 'episodes'}"
