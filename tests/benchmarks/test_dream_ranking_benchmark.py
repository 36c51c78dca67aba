"""benchmarks/dream_ranking.py: its rank correlation against hand-computed answers, and a quick run on a real debug
world model that prints every metric it promises."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from run_benchmark import REPO

from experiments.checkpoint import read_checkpoint
from experiments.evolution import save_controller
from experiments.load import build_controller, load_world_model

spec = importlib.util.spec_from_file_location("dream_ranking", REPO / "benchmarks" / "dream_ranking.py")
dream_ranking = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dream_ranking)


def test_ranks_share_ties():
    assert dream_ranking.ranks(np.array([30.0, 10.0, 20.0, 10.0])).tolist() == [4.0, 1.5, 3.0, 1.5]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        # ranks [1, 2, 3, 4] and [2, 1, 4, 3]: 1 - 6 * (1 + 1 + 1 + 1) / (4 * (16 - 1)) = 0.6
        ([5, 6, 7, 8], [2.0, 1.0, 9.0, 3.0], 0.6),
        # ranks [1, 2, 3] and [1.5, 1.5, 3]: centred [-1, 0, 1] and [-0.5, -0.5, 1]; 1.5 / sqrt(2 * 1.5) = 0.866025
        ([1, 2, 3], [7, 7, 9], 1.5 / math.sqrt(3.0)),
    ],
)
def test_spearman_by_hand(a, b, expected):
    assert dream_ranking.spearman(np.array(a), np.array(b)) == pytest.approx(expected)


def test_spearman_of_a_constant_is_undefined():
    assert math.isnan(dream_ranking.spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])))


def test_snapshot_generations_are_evenly_spaced_and_end_at_the_last():
    assert dream_ranking.snapshot_generations(40, 5) == [8, 16, 24, 32, 40]
    assert dream_ranking.snapshot_generations(3, 6) == [1, 2, 3]
    assert dream_ranking.snapshot_generations(7, 1) == [7]


def test_pair_agreement_by_hand():
    """Real 100, 200, 300 with standard errors 10: every pair differs by 100 > 2 * sqrt(200) = 28.3, so all three
    count. The dream orders (0, 1) and (0, 2) as reality does and ties (1, 2): (1 + 1 + 0.5) / 3."""
    real, se = np.array([100.0, 200.0, 300.0]), np.full(3, 10.0)
    assert dream_ranking.pair_agreement(np.array([1.0, 5.0, 5.0]), real, se) == (pytest.approx(2.5 / 3), 3)
    # Standard errors of 40: only (0, 2) differs by more than 2 * sqrt(3200) = 113.1; the dream orders it wrongly.
    assert dream_ranking.pair_agreement(np.array([9.0, 5.0, 1.0]), real, np.full(3, 40.0)) == (0.0, 1)
    agreement, pairs = dream_ranking.pair_agreement(np.array([1.0, 2.0]), np.array([5.0, 6.0]), np.ones(2))
    assert math.isnan(agreement) and pairs == 0


def train_debug_world_model(run, seed: int = 0):
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "train", "--config", "configs/debug.yaml", "--set", "run.threads=1",
         "--set", f"run.seed={seed}", "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    return train_debug_world_model(tmp_path_factory.mktemp("ranking") / "wm")


@pytest.fixture(scope="module")
def saved_set(world_model, tmp_path_factory):
    kept = tmp_path_factory.mktemp("set") / "controllers.npz"
    result = ranking("--world-model", str(world_model), "--save-controllers", str(kept))
    assert result.returncode == 0, result.stderr
    return kept, result


def ranking(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dream_ranking.py"), "--quick", "--threads", "1", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_quick_run_ranks_the_same_controllers_under_every_variant(world_model):
    result = ranking(
        "--world-model", str(world_model), "--variant", "dream.cont_mode=expected", "--variant", "dream.reset_starts=1"
    )  # the second draws a start pool of its own
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["bench"] == "dream_ranking" for r in records)
    controllers = [r for r in records if r["metric"] == "controller"]
    # --quick: dream means at generations 1 and 2, the dream's best candidate, the real search's mean after 1
    assert [r["source"] for r in controllers] == [
        "dream search, generation 1",
        "dream search, generation 2",
        "dream search, best candidate",
        "real search, generation 1",
    ]
    variants = ["the run's dream", "dream.cont_mode=expected", "dream.reset_starts=1"]
    assert all(list(r["dream"]) == variants for r in controllers)
    real = np.array([r["value"] for r in controllers])
    for variant in variants:
        figures = {r["metric"]: r for r in records if r.get("variant") == variant}
        assert set(figures) == {"rank_correlation", "pair_agreement", "pick_real_return", "pick_regret"}
        dream = np.array([r["dream"][variant] for r in controllers])
        # The pick is a controller the dream rates best; which one of a tie depends on rounding (bf16 or float32).
        pick = [r["source"] for r in controllers].index(figures["pick_real_return"]["pick"])
        assert dream[pick] == pytest.approx(dream.max(), abs=1e-4)
        assert figures["pick_real_return"]["value"] == pytest.approx(real[pick], abs=1e-4)
        assert figures["pick_regret"]["value"] == pytest.approx(real.max() - real[pick], abs=1e-4)
        correlation = figures["rank_correlation"]["value"]
        assert correlation is None if len(set(real)) == 1 else -1 <= correlation <= 1
        agreement, pairs = figures["pair_agreement"]["value"], figures["pair_agreement"]["pairs"]
        assert 0 <= pairs <= 6 and (agreement is None if pairs == 0 else 0 <= agreement <= 1)
    expected_settings = {r["variant"]: r["dream_settings"]["cont_mode"] for r in records if "dream_settings" in r}
    assert expected_settings == {
        "the run's dream": "sample",
        "dream.cont_mode=expected": "expected",
        "dream.reset_starts=1": "sample",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("evolve.sigma=0.5", "is not a dream.* key"),
        ("dream.cont_threshold=0", "dream.cont_threshold: must be in (0, 1)"),
    ],
)
def test_a_bad_variant_is_refused_naming_it(world_model, variant, message):
    result = ranking("--world-model", str(world_model), "--variant", variant)
    assert result.returncode != 0 and message in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_a_saved_set_ranks_again_without_the_real_env(world_model, saved_set):
    kept, first = saved_set
    again = ranking("--world-model", str(world_model), "--controllers", str(kept), "--variant", "dream.horizon=5")
    assert again.returncode == 0, again.stderr
    assert "real search" not in again.stderr and "real returns" not in again.stderr  # no search, no real episodes
    before, after = ([json.loads(line) for line in run.stdout.splitlines()] for run in (first, again))
    baseline = [r for r in before if r.get("variant") == "the run's dream" or r["metric"] == "controller"]
    assert [
        {**r, "dream": {"the run's dream": r["dream"]["the run's dream"]}} if "dream" in r else r
        for r in after
        if r.get("variant") != "dream.horizon=5"
    ] == baseline


@pytest.mark.slow
def test_a_file_that_is_no_saved_set_is_refused(world_model, tmp_path):
    bad = tmp_path / "controllers.npz"
    bad.write_bytes(b"not an npz file")
    result = ranking("--world-model", str(world_model), "--controllers", str(bad))
    assert result.returncode != 0 and "not a controller set saved by --save-controllers" in result.stderr
    assert bad.read_bytes() == b"not an npz file"


@pytest.mark.slow
def test_a_saved_set_is_refused_on_another_world_model_or_controller(world_model, saved_set, tmp_path):
    kept, _ = saved_set
    other = train_debug_world_model(tmp_path / "other", seed=1)
    result = ranking("--world-model", str(other), "--controllers", str(kept))
    assert result.returncode != 0 and "was made on another world model" in result.stderr and result.stdout == ""
    result = ranking("--world-model", str(world_model), "--controllers", str(kept), "--set", "evolve.controller=mlp")
    assert result.returncode != 0 and "this config's have" in result.stderr and result.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--real-episodes", "1", "--real-episodes must be >= 2, got 1"), ("--snapshots", "0", "--snapshots must be >= 1")],
)
def test_bad_sizes_are_refused_naming_the_flag(world_model, flag, value, message):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dream_ranking.py"), "--world-model", str(world_model), flag, value],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def evolve_checkpoint(world_model, parameters: np.ndarray, path, sha256: str | None = None, command: str = "evolve"):
    """A `wm evolve` best.pt holding `parameters`, as evolved on `world_model` (or on a model of another `sha256`; or
    the best.pt of another `command`)."""
    cfg = dream_ranking.config_lib.load_config(
        [], [], base=read_checkpoint(world_model / "checkpoints" / "latest.pt")["config"]
    )
    world = load_world_model(world_model, cfg)
    provenance = {"world_model": str(world.checkpoint), "world_model_sha256": sha256 or world.sha256}
    controller = build_controller(world.model, world.spec, cfg.evolve)
    save_controller(path, command, controller, parameters, cfg, provenance, figures={})
    return path


@pytest.mark.slow
def test_an_added_controller_plays_the_sets_own_real_episodes(world_model, saved_set, tmp_path):
    """A `wm evolve` checkpoint that holds the set's second controller, added to the set, gets that controller's real
    returns episode for episode: it played the same resets."""
    kept, _ = saved_set
    with np.load(kept) as saved:
        parameters, returns = saved["parameters"], saved["real_returns"]
    added = evolve_checkpoint(world_model, parameters[1], tmp_path / "best.pt")
    grown = tmp_path / "grown.npz"
    result = ranking("--world-model", str(world_model), "--controllers", str(kept), "--add-controller", str(added),
                     "--save-controllers", str(grown))  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(grown) as saved:
        assert saved["real_returns"].shape == (len(returns) + 1, returns.shape[1])
        np.testing.assert_array_equal(saved["real_returns"][-1], returns[1])
        assert str(saved["sources"][-1]) == f"wm evolve run {added}"
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in lines if r["metric"] == "controller"][-1] == f"wm evolve run {added}"


@pytest.mark.slow
def test_an_added_controller_is_refused_from_another_model_a_cycle_or_into_an_old_set(world_model, saved_set, tmp_path):
    kept, _ = saved_set
    with np.load(kept) as saved:
        parameters = saved["parameters"][0]
        old = {key: saved[key] for key in saved.files if key != "real_seed"}  # a set saved before the seed was kept
    foreign = evolve_checkpoint(world_model, parameters, tmp_path / "foreign.pt", sha256="0" * 64)
    result = ranking("--world-model", str(world_model), "--controllers", str(kept), "--add-controller", str(foreign))
    assert result.returncode != 0 and "was evolved on another world model" in result.stderr and result.stdout == ""
    np.savez(tmp_path / "old.npz", **old)
    mine = evolve_checkpoint(world_model, parameters, tmp_path / "mine.pt")
    result = ranking(
        "--world-model", str(world_model), "--controllers", str(tmp_path / "old.npz"), "--add-controller", str(mine)
    )
    assert result.returncode != 0 and "does not record the seed of its real episodes" in result.stderr
    cycled = evolve_checkpoint(world_model, parameters, tmp_path / "cycle.pt", command="cycle")
    result = ranking("--world-model", str(world_model), "--controllers", str(kept), "--add-controller", str(cycled))
    assert result.returncode != 0 and "is a `wm cycle` controller" in result.stderr and result.stdout == ""
    result = ranking(
        "--world-model", str(world_model), "--controllers", str(kept), "--add-controller", str(world_model)
    )  # a `wm train` run: no controller
    assert result.returncode != 0 and result.stdout == ""
    assert (
        f"--add-controller {world_model}: checkpoint {world_model}/checkpoints/best.pt does not exist" in result.stderr
    )
