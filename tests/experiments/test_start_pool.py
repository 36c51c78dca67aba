"""The dream's pool of real start states (`experiments.load.encode_start_pool`), on a real CartPole episode store,
and the final choice of a search scored in that dream (`choose_controller`)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.controllers import Controller
from agents.evolution import CMAES
from envs import EpisodeStore, RandomPolicy, collect, make_vector_env
from experiments.config import DreamConfig
from experiments.evolution import STREAM_FINAL, STREAM_FINAL_NOISE, DreamScorer, choose_controller
from experiments.load import encode_start_pool
from worldmodel.dream.rollout import DreamSettings
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EpisodeStore:
    envs, spec = make_vector_env("CartPole-v1", 2, obs="state", seed=0)
    store = EpisodeStore(Path(tmp_path_factory.mktemp("episodes")), spec=spec)
    collect(envs, RandomPolicy(spec, seed=0), 300, store=store)
    envs.close()
    return store


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel((4,), 2, latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=2).eval()


def reset_rows(model: WorldModel, pool) -> torch.Tensor:
    """(N,) bool: the start's h is the one after a reset, h = f(0, 0, 0)."""
    with torch.no_grad():
        reset_h = model.step(model.initial_state(1), torch.zeros(1, 8), torch.zeros(1, 2))[0]  # (1, hd)
    return (pool.hidden - reset_h).abs().amax(dim=1) < 1e-6


def first_observations(store: EpisodeStore, model: WorldModel) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(torch.stack([torch.as_tensor(episode.obs[0]) for episode in store]))  # (episodes, D)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_a_share_of_the_starts_are_real_resets(store, model, share):
    cfg = DreamConfig(start_windows=64, burn_in=3, reset_starts=share)
    pool = encode_start_pool(model, store, None, cfg, torch.device("cpu"), seed=0)
    at_reset = reset_rows(model, pool)
    assert len(pool.latent) <= 64 and len(pool.latent) >= 56  # only windows ending in a terminal step are dropped
    if share == 1.0:
        assert at_reset.all()
    else:
        # uniform windows also end at an episode's first step now and then (one step in ~20 for random CartPole)
        assert int(round(share * 64)) <= at_reset.sum() <= int(round(share * 64)) + 16
    # every reset start is the latent of some episode's first observation
    firsts = first_observations(store, model)  # (episodes, D)
    distances = (pool.latent[at_reset, None] - firsts[None]).abs().amax(dim=2).amin(dim=1)  # (resets,)
    assert torch.all(distances < 1e-5)


def test_the_pool_depends_only_on_the_seed(store, model):
    cfg = DreamConfig(start_windows=32, burn_in=3)
    a, b = (encode_start_pool(model, store, None, cfg, torch.device("cpu"), seed=1) for _ in range(2))
    c = encode_start_pool(model, store, None, cfg, torch.device("cpu"), seed=2)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.latent, b.latent)
    assert not torch.equal(a.latent, c.latent)


def test_reset_starts_outside_zero_to_one_is_a_config_error():
    from experiments.config import ConfigError

    with pytest.raises(ConfigError, match="reset_starts"):
        DreamConfig(reset_starts=1.5)


# ---------------------------------------------------------------------- the final choice of a search


@pytest.mark.parametrize("warm", [False, True])
def test_the_final_choice_is_the_finalist_the_dream_rates_highest(store, model, warm):
    """The search's mean, its best-ever candidate and, after a warm start, the start itself, each scored alone on
    the final starts and noise: the choice is the highest of them. The start here is the best of 64 random
    controllers and the search around it is wide, so a warm-started search must keep its start."""
    pool = encode_start_pool(model, store, None, DreamConfig(start_windows=64, burn_in=3), torch.device("cpu"), 0)
    controller = Controller(model.latent_dim + model.hidden_dim, spaces.Discrete(2), "linear")
    dream = DreamScorer(model, controller, pool, DreamSettings(horizon=30, cont_mode="sample"), seed=0)
    final = DreamScorer(
        model, controller, pool, dream.settings, 0, stream=STREAM_FINAL, noise_stream=STREAM_FINAL_NOISE
    )
    episodes = 16
    randoms = np.random.default_rng(0).normal(size=(64, controller.num_params))  # (64, n)
    start = randoms[int(np.argmax(final(randoms, 0, episodes)))]
    es = CMAES(start, 3.0, 6, seed=0)
    es.step(lambda candidates: dream(candidates, 0, episodes))

    parameters, figures = choose_controller(es, dream, episodes, warm)
    names = ("mean", "best", "start") if warm else ("mean", "best")
    points = {"mean": es.mean, "best": es.best, "start": es.start}
    alone = {name: final(points[name][None], 0, episodes)[0] for name in names}
    assert {key for key in figures if key.endswith("_candidate")} == {f"dream_return_{n}_candidate" for n in names}
    for name in names:
        assert figures[f"dream_return_{name}_candidate"] == pytest.approx(alone[name], rel=1e-5)
    assert figures["chosen"] == max(alone, key=alone.get)
    assert figures["dream_return"] == pytest.approx(max(alone.values()), rel=1e-5)
    np.testing.assert_array_equal(parameters, points[figures["chosen"]])
    if warm:
        assert figures["chosen"] == "start" and alone["start"] > max(alone["mean"], alone["best"])
