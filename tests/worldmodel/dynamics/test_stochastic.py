"""The stochastic world model (`RSSMWorldModel`) on a real tiny model: its KL against torch's, the
filter against the agent acting step by step, the dream's prior samples (batched equals a loop, by hand), its losses'
keys and gradients, the gymnasium checker on its dream, and the refusals of what it cannot do."""

import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

from agents.agent import LatentAgent
from agents.controllers import Controller
from worldmodel.dream.gym_env import DreamEnv
from worldmodel.dream.rollout import DreamSettings, DreamState, draw_noise, dream_starts, dream_step, rollout
from worldmodel.dynamics.build import build_world_model
from worldmodel.dynamics.rssm import MIN_STD, Gaussian, RSSMWorldModel, gaussian_kl
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

OBS_DIM, ACTIONS, LATENT, HIDDEN, MLP = 4, 2, 8, 16, 16
FEATURES = LATENT + HIDDEN
P, E, HORIZON = 4, 3, 12


def make_model(**changes) -> WorldModel:
    torch.manual_seed(0)
    options = dict(latent_dim=LATENT, hidden_dim=HIDDEN, mlp_dim=MLP, ensemble_size=2)
    model = RSSMWorldModel((OBS_DIM,), ACTIONS, **{**options, **changes}).eval()
    with torch.no_grad():  # a continue head biased towards "going on", so that rollouts end at different steps
        model.cont_head[-1].weight.mul_(6.0)
        model.cont_head[-1].bias.fill_(3.0)
    return model


def make_windows(batch: int = 8, time: int = 6, seed: int = 0) -> WorldModelBatch:
    """Random state windows starting episodes; window 1 restarts an episode at step 3."""
    generator = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(batch, time, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True
    action = torch.nn.functional.one_hot(torch.randint(0, ACTIONS, (batch, time), generator=generator), ACTIONS)
    action = action.float().masked_fill(is_first[..., None], 0.0)
    obs = torch.randn(batch, time, OBS_DIM, generator=generator)
    return WorldModelBatch(
        obs, action, torch.randn(batch, time, generator=generator), torch.ones(batch, time), is_first
    )


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return make_model()


@pytest.fixture(scope="module")
def starts(model) -> DreamState:
    return dream_starts(model, make_windows())


# ---------------------------------------------------------------------------------------------- oracle


def test_gaussian_kl_equals_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    p = Gaussian(torch.randn(5, LATENT, generator=generator), torch.rand(5, LATENT, generator=generator) + 0.1)
    q = Gaussian(torch.randn(5, LATENT, generator=generator), torch.rand(5, LATENT, generator=generator) + 0.1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(p.mean, p.std), torch.distributions.Normal(q.mean, q.std)
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(p, q), expected)
    assert torch.all(gaussian_kl(p, p).abs() < 1e-6)


def test_gaussian_std_never_falls_below_its_floor():
    output = torch.tensor([[0.0, -1e4], [1.0, 2.0]])  # (2, 2D) with D = 1
    gaussian = Gaussian.from_output(output)
    assert gaussian.std[0, 0] == MIN_STD and gaussian.std[1, 0] > MIN_STD
    torch.testing.assert_close(gaussian.sample(torch.tensor([[2.0], [0.0]])), torch.tensor([[2 * MIN_STD], [1.0]]))


def test_kl_counts_only_above_the_free_nats():
    free = make_model(free_nats=1e6)  # every step's KL is far below: the term is the constant, with no gradient
    losses = free.loss(make_windows(), horizon=3, generator=torch.Generator().manual_seed(0))
    assert losses["kl"].item() == pytest.approx(1e6)
    losses["kl"].backward()
    assert all(p.grad is None or not p.grad.any() for p in free.parameters())


# ---------------------------------------------------------------------------------------------- equivalence


@torch.no_grad()
def test_agent_acting_step_by_step_follows_the_filter(model):
    controller = Controller(FEATURES, spaces.Discrete(ACTIONS), "linear")
    N, T = 3, 10
    params = 3.0 * np.random.default_rng(0).standard_normal((N, controller.num_params))
    obs = np.random.default_rng(1).standard_normal((T, N, OBS_DIM)).astype(np.float32)
    is_first = np.zeros((T, N), dtype=bool)
    is_first[0] = True
    is_first[6, 2] = True  # sub-env 2 starts a new episode at step 6
    agent = LatentAgent(model, controller, params, N)
    actions, hidden, latent = [], [], []
    for t in range(T):
        agent.reset(is_first[t])
        actions.append(agent(obs[t]))
        hidden.append(agent.hidden.clone())
        latent.append(agent.latent.clone())
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(np.stack(actions)), ACTIONS).float()  # (T, N, A)
    led_to = torch.cat([torch.zeros(1, N, ACTIONS), one_hot[:-1]]).transpose(0, 1)  # (N, T, A)
    batch = WorldModelBatch(
        torch.as_tensor(obs).transpose(0, 1), led_to, torch.zeros(N, T), torch.ones(N, T), torch.as_tensor(is_first).T
    )
    expected_hidden, expected_latent, targets = model.real_states(batch)
    for t in range(T):
        torch.testing.assert_close(hidden[t], expected_hidden[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(latent[t], expected_latent[:, t], rtol=1e-5, atol=1e-6)
    assert torch.equal(targets, expected_latent)
    assert len(np.unique(actions)) == 2, "a constant controller would test little"


def test_filter_gives_every_step_the_prior_and_posterior_that_stepping_by_hand_gives(model):
    """The filter takes the priors after its loop, all steps at once: they must be the transition's, step by step."""
    batch = make_windows()
    embeddings = model.encode(batch.obs)
    noise = torch.randn(*batch.is_first.shape, LATENT, generator=torch.Generator().manual_seed(3))
    hidden, z, prior, posterior = model.filter(embeddings, batch.action, batch.is_first, noise)
    B, T = batch.is_first.shape
    h, z_prev = model.initial_state(B), torch.zeros(B, LATENT)
    for t in range(T):
        first = batch.is_first[:, t, None]
        h = torch.where(first, model.initial_state(B), h)
        z_prev = torch.where(first, 0.0, z_prev)
        h, step_prior = model.transition(h, z_prev, batch.action[:, t])
        step_posterior = model.posterior(h, embeddings[:, t])
        for ours, theirs in ((hidden[:, t], h), (prior.mean[:, t], step_prior.mean), (prior.std[:, t], step_prior.std)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(posterior.mean[:, t], step_posterior.mean, rtol=1e-5, atol=1e-6)
        z_prev = step_posterior.sample(noise[:, t])
        torch.testing.assert_close(z[:, t], z_prev, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(prior.mean, posterior.mean), "a prior equal to the posterior would test little"


@pytest.mark.parametrize("mode", ["threshold", "sample", "expected"])
def test_batched_dream_equals_loop_over_candidates(model, starts, mode):
    controller = Controller(FEATURES, spaces.Discrete(ACTIONS), "linear")
    params = 2.0 * torch.randn(P, controller.num_params, generator=torch.Generator().manual_seed(1))
    settings = DreamSettings(horizon=HORIZON, cont_mode=mode, latent_noise=0.2, disagreement_penalty=0.5)
    start = starts.select(torch.randint(0, len(starts.latent), (P * E,), generator=torch.Generator().manual_seed(2)))
    noise = draw_noise(P * E, settings, LATENT, torch.Generator().manual_seed(3), prior=True)
    assert noise.prior is not None and noise.prior.shape == (P * E, HORIZON, LATENT)
    batched = rollout(model, controller.policy(params, E), start, settings, noise)
    if mode != "expected":  # 'expected' rows run while their chance of going on lasts: here the whole horizon
        assert len(set(batched.lengths.tolist())) > 1, "the rollouts must end at different steps to test anything"
    for p in range(P):
        rows = slice(p * E, (p + 1) * E)
        alone = rollout(model, controller.policy(params[p : p + 1], E), start.select(rows), settings, noise.rows(rows))
        assert torch.equal(alone.lengths, batched.lengths[rows])
        torch.testing.assert_close(alone.returns, batched.returns[rows], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_dream_step_samples_the_prior(model, starts):
    action = torch.nn.functional.one_hot(torch.arange(len(starts.latent)) % ACTIONS, ACTIONS).float()
    noise = torch.randn(len(starts.latent), LATENT, generator=torch.Generator().manual_seed(4))
    result = dream_step(model, starts, action, prior_noise=noise)
    hidden = model.gru(model.dynamics_input(torch.cat([starts.latent, action], dim=-1)), starts.hidden)
    mean, raw = model.latent_head(hidden).chunk(2, dim=-1)
    by_hand = mean + (torch.nn.functional.softplus(raw) + MIN_STD) * noise
    torch.testing.assert_close(result.state.hidden, hidden)
    torch.testing.assert_close(result.state.latent, by_hand)
    torch.testing.assert_close(result.reward, model.reward(hidden, by_hand))
    # Without prior noise the step is the prior's mean, which `step` returns.
    torch.testing.assert_close(dream_step(model, starts, action).state.latent, mean)


def test_a_rollout_of_a_stochastic_model_needs_its_prior_noise(model, starts):
    controller = Controller(FEATURES, spaces.Discrete(ACTIONS), "linear")
    params = torch.zeros(1, controller.num_params)
    settings = DreamSettings(horizon=HORIZON)
    with pytest.raises(ValueError, match="noise.prior"):
        rollout(
            model,
            controller.policy(params, 2),
            starts.select(torch.arange(2)),
            settings,
            draw_noise(2, settings, LATENT),
        )


# ---------------------------------------------------------------------------------------------- property


def test_losses_match_the_keys_and_train_every_part():
    model = make_model().train()
    losses = model.loss(make_windows(), horizon=3, generator=torch.Generator().manual_seed(0))
    assert set(losses) == set(model.loss_keys) == {"latent", "kl", "reward", "cont", "ensemble"}
    assert all(torch.isfinite(value) and value.ndim == 0 for value in losses.values())
    sum(losses.values()).backward()
    for name in ("projection", "posterior_head", "latent_head", "feature_head", "gru", "reward_head", "cont_head"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in model.backbone.parameters())  # the frozen encoder


def test_the_loss_draws_its_posterior_noise_from_the_generator():
    model = make_model()
    windows = make_windows()
    first, again, other = (
        model.loss(windows, 3, generator=torch.Generator().manual_seed(s))["latent"] for s in (0, 0, 1)
    )
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_restart_inside_a_window_forgets_the_history(model):
    windows = make_windows()
    hidden, latent, _ = model.real_states(windows)
    tail = WorldModelBatch(
        windows.obs[1:2, 3:],
        windows.action[1:2, 3:],
        windows.reward[1:2, 3:],
        windows.cont[1:2, 3:],
        windows.is_first[1:2, 3:],
    )
    tail_hidden, tail_latent, _ = model.real_states(tail)
    torch.testing.assert_close(hidden[1:2, 3:], tail_hidden)
    torch.testing.assert_close(latent[1:2, 3:], tail_latent)


def test_check_env_passes_on_the_stochastic_dream(model, starts):
    settings = DreamSettings(horizon=20, cont_mode="sample")

    def make() -> DreamEnv:
        return DreamEnv(model, starts, settings, spaces.Discrete(ACTIONS), seed=0)

    env = make()
    env.spec = EnvSpec("Dream-v0", entry_point=make)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


# ---------------------------------------------------------------------------------------------- refusals


def test_what_a_stochastic_model_cannot_be_is_refused():
    with pytest.raises(ValueError, match="freeze_encoder: the stochastic latent predicts the frozen encoder's"):
        make_model(freeze_encoder=False)
    with pytest.raises(TypeError, match="collapse_guard"):  # it has no target network to choose
        build_world_model((OBS_DIM,), ACTIONS, latent="stochastic", collapse_guard="sigreg")
    with pytest.raises(ValueError, match="latent must be one of"):
        build_world_model((OBS_DIM,), ACTIONS, latent="bayesian")


def test_one_frame_has_no_stochastic_target(model):
    with pytest.raises(ValueError, match="real_states"):
        model.targets(torch.randn(2, OBS_DIM))
