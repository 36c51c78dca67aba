"""The dream's pool of real start states (`experiments.evolve.encode_start_pool`), on a real CartPole episode store."""

from pathlib import Path

import pytest
import torch

from envs import EpisodeStore, RandomPolicy, collect, make_vector_env
from experiments.config import DreamConfig
from experiments.evolve import encode_start_pool
from worldmodel.world_model import WorldModel


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
    return WorldModel((4,), 2, latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=2).eval()


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
