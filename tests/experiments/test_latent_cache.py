"""A frozen encoder's latent cache (experiments/features.py: fill_latent_cache) against what the agent computes in the
real env: a world model trained on cached features must meet the very same numbers when it acts, frame by frame."""

import numpy as np
import pytest
import torch

from agents.agent import LatentAgent
from agents.controllers import Controller
from envs import EpisodeStore, RandomPolicy, collect, make_vector_env
from experiments.features import encoder_fingerprint, fill_latent_cache
from experiments.load import action_space
from experiments.rundir import GracefulStop
from worldmodel.dynamics.jepa import JEPAWorldModel

SIZE = 32


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny frozen-encoder model of pixel CartPole, a store of real random-policy episodes and its filled cache."""
    envs, spec = make_vector_env("CartPole-v1", 1, obs="pixels", size=SIZE, seed=3)
    store = EpisodeStore(tmp_path_factory.mktemp("cache") / "episodes", spec=spec)
    collect(envs, RandomPolicy(spec, seed=3), 60, store)
    envs.close()
    torch.manual_seed(0)
    model = JEPAWorldModel(
        spec.obs_shape,
        spec.action_dim,
        latent_dim=8,
        hidden_dim=16,
        mlp_dim=16,
        ensemble_size=2,
        vit_size="micro",
        image_size=SIZE,
        patch_size=4,
        freeze_encoder=True,
        input_blur=2.0,
        pooling="mean_std",
    ).eval()
    key = encoder_fingerprint(model)
    assert fill_latent_cache(model, store, key, torch.device("cpu"), GracefulStop(), show_progress=False) == len(store)
    features = torch.as_tensor(np.concatenate([store.latents(key).get(i) for i in range(len(store))]))
    model.set_feature_statistics(features)
    return model, spec, store, key


def test_the_cache_keeps_the_encoder_s_features_exactly(recorded):
    model, _, store, key = recorded
    for index in range(len(store)):
        frames = torch.as_tensor(store.episode(index).obs)
        with torch.no_grad():
            fresh = model.encode_features(frames).numpy()
        # Rounded to float16, as the cache once kept them, they would differ by up to 5e-4 of their size.
        np.testing.assert_array_equal(store.latents(key).get(index), fresh)


def test_the_agent_in_the_real_env_sees_the_latents_the_model_was_trained_on(recorded):
    model, spec, store, key = recorded
    controller = Controller(model.latent_dim + model.hidden_dim, action_space(spec), "linear")
    agent = LatentAgent(model, controller, np.zeros(controller.num_params), 1)
    episode = store.episode(0)
    with torch.no_grad():
        trained_on = model.encode(features=torch.tensor(store.latents(key).get(0)))  # (L+1, D)
    seen = []
    for t, frame in enumerate(episode.obs):
        agent.reset(np.array([t == 0]))
        agent(frame[None])
        seen.append(agent.latent[0])
    np.testing.assert_allclose(torch.stack(seen).numpy(), trained_on.numpy(), rtol=0, atol=1e-5)


def test_episodes_encoded_together_equal_each_encoded_alone(recorded, monkeypatch, tmp_path):
    """The cache fill batches frames across episodes (ENCODE_BATCH at a time, splitting episodes between batches);
    each episode's features must be the ones its frames give alone."""
    import experiments.features

    model, _, store, _ = recorded
    assert len(store) >= 3 and store.episode_steps.max() + 1 > 7  # batches of 7 frames cut through episodes
    monkeypatch.setattr(experiments.features, "ENCODE_BATCH", 7)
    key = "batched-by-7"
    assert fill_latent_cache(model, store, key, torch.device("cpu"), GracefulStop(), show_progress=False) == len(store)
    for index in range(len(store)):
        with torch.no_grad():
            alone = model.encode_features(torch.as_tensor(store.episode(index).obs)).numpy()
        np.testing.assert_allclose(store.latents(key).get(index), alone, rtol=0, atol=1e-6)
