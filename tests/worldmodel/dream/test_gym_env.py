"""The dream as gymnasium envs: API checks, NEXT_STEP autoreset, seeding, the dream math, strict actions."""

import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

from worldmodel.dream.gym_env import DreamEnv, DreamVectorEnv
from worldmodel.dream.rollout import DreamSettings, DreamState, draw_noise, dream_starts, rollout
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

LATENT, HIDDEN, ACTIONS = 8, 16, 2
FEATURES = LATENT + HIDDEN
DISCRETE = spaces.Discrete(ACTIONS)
BOX = spaces.Box(-1.0, 1.0, (ACTIONS,), np.float32)
NEVER_ENDS = DreamSettings(horizon=50, cont_threshold=1e-6)  # the continue head never falls this low here


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel((4,), ACTIONS, latent_dim=LATENT, hidden_dim=HIDDEN, mlp_dim=16, ensemble_size=2).eval()


@pytest.fixture(scope="module")
def starts(model) -> DreamState:
    """Real start states: 16 windows of 4 random steps, observed teacher-forced."""
    generator = torch.Generator().manual_seed(1)
    B, T = 16, 4
    action = torch.nn.functional.one_hot(torch.randint(ACTIONS, (B, T), generator=generator), ACTIONS).float()
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    action[:, 0] = 0.0  # zeros at is_first, as the episode store keeps them
    batch = WorldModelBatch(
        obs=torch.randn(B, T, 4, generator=generator),
        action=action,
        reward=torch.zeros(B, T),
        cont=torch.ones(B, T),
        is_first=is_first,
    )
    return dream_starts(model, batch)


def random_actions(space: spaces.Space, rows: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return rng.integers(0, int(space.n), size=rows)
    return rng.uniform(-1.0, 1.0, size=(rows, *space.shape)).astype(np.float32)


def pool_rows(starts: DreamState, observations: np.ndarray) -> np.ndarray:
    """For each observation (N, F), the index of the identical start-pool row, or -1."""
    pool = starts.observation().numpy()  # (M, F)
    same = (observations[:, None, :] == pool[None]).all(axis=-1)  # (N, M)
    return np.where(same.any(axis=1), same.argmax(axis=1), -1)


# ---------------------------------------------------------------------- gymnasium's checker


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_check_env_passes_with_warnings_as_errors(model, starts, space):
    settings = DreamSettings(horizon=20, cont_mode="sample", latent_noise=0.1, disagreement_penalty=0.5)

    def make() -> DreamEnv:
        return DreamEnv(model, starts, settings, space, seed=0)

    env = make()
    # check_env compares the observations of seeded resets only when the env has a spec (and warns that it cannot
    # test render modes without one), so give it a spec that rebuilds the same env.
    env.spec = EnvSpec("Dream-v0", entry_point=make)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


# ---------------------------------------------------------------------- the vector env


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_vector_env_shapes_dtypes_and_spaces(model, starts, space):
    env = DreamVectorEnv(model, starts, NEVER_ENDS, 5, space, seed=0)
    assert env.metadata["autoreset_mode"].name == "NEXT_STEP"
    assert env.render_mode is None
    assert env.single_observation_space.shape == (FEATURES,)
    assert env.observation_space.shape == (5, FEATURES)
    assert env.single_action_space is space
    observations, infos = env.reset(seed=1)
    assert observations.shape == (5, FEATURES) and observations.dtype == np.float32
    assert observations in env.observation_space
    assert (pool_rows(starts, observations) == infos["start_index"]).all()
    rng = np.random.default_rng(0)
    for _ in range(3):
        observations, rewards, terminated, truncated, infos = env.step(random_actions(space, 5, rng))
        assert observations.shape == (5, FEATURES) and observations.dtype == np.float32
        assert observations in env.observation_space
        assert rewards.shape == (5,) and rewards.dtype == np.float64
        assert terminated.shape == truncated.shape == (5,)
        assert terminated.dtype == truncated.dtype == np.bool_
        assert infos["cont"].shape == infos["disagreement"].shape == (5,)
        assert infos["_cont"].all() and not infos["_start_index"].any()
        assert not terminated.any() and not truncated.any()


def test_truncation_at_the_horizon_then_next_step_autoreset(model, starts):
    settings = DreamSettings(horizon=3, cont_threshold=1e-6)
    env = DreamVectorEnv(model, starts, settings, 4, DISCRETE, seed=0)
    twin = DreamVectorEnv(model, starts, settings, 4, DISCRETE, seed=0)
    env.reset()
    twin.reset()
    actions = np.array([0, 1, 1, 0])
    for step in (1, 2, 3):
        _, _, terminated, truncated, _ = env.step(actions)
        twin.step(actions)
        assert not terminated.any()
        assert truncated.all() == (step == 3) and truncated.any() == (step == 3)

    # The step after the end: fresh starts, reward 0, flags False, and the actions are ignored (even invalid ones).
    observations, rewards, terminated, truncated, infos = env.step(np.array([7, -3, 1, 0]))
    twin_observations, *_ = twin.step(np.array([1, 0, 0, 1]))
    np.testing.assert_array_equal(observations, twin_observations)
    assert (rewards == 0.0).all() and not terminated.any() and not truncated.any()
    assert (pool_rows(starts, observations) == infos["start_index"]).all()
    assert infos["_start_index"].all() and not infos["_cont"].any()

    # A new episode of 3 steps follows.
    for step in (1, 2, 3):
        _, rewards, _, truncated, _ = env.step(actions)
        assert (rewards != 0.0).all()
        assert truncated.all() == (step == 3)


@pytest.mark.parametrize(
    "settings",
    [DreamSettings(horizon=50, cont_threshold=1 - 1e-6), DreamSettings(horizon=50, disagreement_limit=1e-12)],
    ids=["continue-head", "disagreement-limit"],
)
def test_termination_then_next_step_autoreset(model, starts, settings):
    env = DreamVectorEnv(model, starts, settings, 3, BOX, seed=0)
    env.reset()
    actions = np.zeros((3, ACTIONS), np.float32)
    _, rewards, terminated, truncated, _ = env.step(actions)
    assert terminated.all() and not truncated.any() and (rewards != 0.0).all()
    observations, rewards, terminated, truncated, infos = env.step(np.full((3, ACTIONS), np.nan, np.float32))
    assert (rewards == 0.0).all() and not terminated.any() and not truncated.any()
    assert (pool_rows(starts, observations) >= 0).all()
    _, _, terminated, _, _ = env.step(actions)
    assert terminated.all()


def test_only_ended_sub_envs_restart(model, starts):
    """A threshold between the rows' continue probabilities ends some rows; the others go on undisturbed."""
    reference = DreamVectorEnv(model, starts, NEVER_ENDS, 8, DISCRETE, seed=3)
    reference.reset()
    actions = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    _, _, _, _, infos = reference.step(actions)
    cont = np.sort(infos["cont"])
    threshold = float(cont[3] + cont[4]) / 2
    assert cont[3] < threshold < cont[4]
    expected, expected_rewards, *_ = reference.step(actions)

    env = DreamVectorEnv(model, starts, DreamSettings(horizon=50, cont_threshold=threshold), 8, DISCRETE, seed=3)
    env.reset()
    _, _, terminated, _, _ = env.step(actions)
    assert terminated.sum() == 4
    observations, rewards, terminated_after, _, infos = env.step(actions)
    np.testing.assert_array_equal(infos["_start_index"], terminated)
    np.testing.assert_array_equal(observations[~terminated], expected[~terminated])
    np.testing.assert_array_equal(rewards[~terminated], expected_rewards[~terminated])
    assert (rewards[terminated] == 0.0).all() and not terminated_after[terminated].any()
    assert (pool_rows(starts, observations[terminated]) == infos["start_index"][terminated]).all()


def test_same_seed_same_trajectory_and_different_seeds_differ(model, starts):
    settings = DreamSettings(horizon=2, cont_mode="sample", latent_noise=0.1, disagreement_penalty=0.5)
    rng = np.random.default_rng(0)
    actions = [random_actions(BOX, 6, rng) for _ in range(10)]

    def trajectory(env: DreamVectorEnv, seed: int | None) -> list:
        outputs = [env.reset(seed=seed)]
        outputs += [env.step(action) for action in actions]
        return outputs

    first = DreamVectorEnv(model, starts, settings, 6, BOX, seed=3)
    second = DreamVectorEnv(model, starts, settings, 6, BOX)
    run = trajectory(first, None)  # the constructor's seed
    for again in (trajectory(second, 3), trajectory(first, 3)):  # a new env, and a reseeded used one
        for outputs, outputs_again in zip(run, again, strict=True):
            for value, value_again in zip(outputs[:-1], outputs_again[:-1], strict=True):
                np.testing.assert_array_equal(value, value_again)
            for key in outputs[-1]:
                np.testing.assert_array_equal(outputs[-1][key], outputs_again[-1][key])
    assert any(step[3].any() for step in run[1:]) and any(step[2].any() for step in run[1:])  # both kinds of end

    other, _ = DreamVectorEnv(model, starts, settings, 6, BOX, seed=4).reset()
    assert not np.array_equal(run[0][0], other)


def test_latent_noise_has_the_settings_std(model, starts):
    """Noise on ẑ has std `latent_noise` (in latent units); h is untouched."""
    one_start = starts.select(torch.tensor([0]))
    noisy = DreamVectorEnv(model, one_start, DreamSettings(horizon=5, latent_noise=0.05), 256, DISCRETE, seed=0)
    clean = DreamVectorEnv(model, one_start, DreamSettings(horizon=5), 256, DISCRETE, seed=0)
    noisy.reset()
    clean.reset()
    actions = np.zeros(256, dtype=np.int64)
    noisy_observations, *_ = noisy.step(actions)
    clean_observations, *_ = clean.step(actions)
    np.testing.assert_array_equal(noisy_observations[:, LATENT:], clean_observations[:, LATENT:])
    difference = noisy_observations[:, :LATENT] - clean_observations[:, :LATENT]  # (N, D)
    assert difference.std() == pytest.approx(0.05, rel=0.1)


# ---------------------------------------------------------------------- equivalence with the dream


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_rewards_equal_the_dream_math_and_rollout(model, starts, space):
    """A controller acting through the env gets reward = model.reward - penalty * disagreement at every step and
    continue probability sigmoid(model.cont), from the same start rows, and the episode sums equal `dream.rollout`'s
    returns."""
    penalty, horizon, rows = 0.5, 5, 6
    settings = DreamSettings(horizon=horizon, cont_threshold=1e-6, disagreement_penalty=penalty)
    weight = torch.randn(FEATURES, ACTIONS, generator=torch.Generator().manual_seed(2))
    discrete = isinstance(space, spaces.Discrete)

    def policy(observation: torch.Tensor) -> torch.Tensor:  # (N, F) -> model actions (N, A)
        scores = observation @ weight
        return torch.nn.functional.one_hot(scores.argmax(-1), ACTIONS).float() if discrete else torch.tanh(scores)

    def env_actions(observation: np.ndarray) -> np.ndarray:
        action = policy(torch.as_tensor(observation))
        return action.argmax(-1).numpy() if discrete else action.numpy()

    env = DreamVectorEnv(model, starts, settings, rows, space, seed=5)
    observation, infos = env.reset()
    start = starts.select(torch.as_tensor(infos["start_index"]))
    hidden, latent = start
    total = np.zeros(rows)
    with torch.no_grad():
        for _ in range(horizon):
            action = policy(torch.cat([latent, hidden], dim=-1))
            hidden, latent = model.step(hidden, latent, action)
            expected = model.reward(hidden, latent) - penalty * model.disagreement(hidden)
            cont = torch.sigmoid(model.cont(hidden, latent))
            observation, reward, _, _, infos = env.step(env_actions(observation))
            np.testing.assert_allclose(reward, expected.numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(infos["cont"], cont.numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(observation, torch.cat([latent, hidden], dim=-1).numpy(), rtol=1e-6, atol=1e-6)
            total += reward
        result = rollout(model, policy, start, settings, draw_noise(rows, settings, LATENT))
    np.testing.assert_allclose(total, result.returns.numpy(), rtol=1e-5, atol=1e-5)
    assert (result.lengths == horizon).all()


# ---------------------------------------------------------------------- strict checks


@pytest.mark.parametrize(
    "space, actions, message",
    [
        (BOX, lambda a: a.__setitem__((2, 1), np.nan), "sub-env 2 .*not finite"),
        (BOX, lambda a: a.__setitem__((1, 0), 1.5), "sub-env 1 .*outside the bounds"),
        (DISCRETE, lambda a: a.__setitem__(3, 2), "sub-env 3 .*outside"),
        (DISCRETE, lambda a: a.__setitem__(0, -1), "sub-env 0 .*outside"),
    ],
    ids=["nan-box", "out-of-bounds-box", "too-large-int", "negative-int"],
)
def test_invalid_action_values_name_the_sub_env(model, starts, space, actions, message):
    env = DreamVectorEnv(model, starts, NEVER_ENDS, 4, space, seed=0)
    env.reset()
    batch = np.zeros((4, ACTIONS), np.float32) if space is BOX else np.zeros(4, np.int64)
    actions(batch)
    with pytest.raises(ValueError, match=message):
        env.step(batch)


@pytest.mark.parametrize(
    "space, actions",
    [
        (DISCRETE, np.zeros((4, 1), np.int64)),
        (DISCRETE, np.zeros(3, np.int64)),
        (DISCRETE, np.zeros(4, np.float32)),
        (BOX, np.zeros((4, 3), np.float32)),
        (BOX, np.zeros(4 * ACTIONS, np.float32)),
        (BOX, np.full((4, ACTIONS), "a")),
    ],
    ids=["discrete-2d", "discrete-too-few", "discrete-floats", "box-too-wide", "box-flat", "box-strings"],
)
def test_malformed_action_batches_raise(model, starts, space, actions):
    env = DreamVectorEnv(model, starts, NEVER_ENDS, 4, space, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="actions must"):
        env.step(actions)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Discrete(3),
        spaces.Box(-1.0, 1.0, (3,), np.float32),
        spaces.Box(-1.0, 1.0, (ACTIONS, 1), np.float32),
        spaces.Box(-1, 1, (ACTIONS,), np.int64),
        spaces.MultiDiscrete([2, 2]),
    ],
    ids=["discrete-3", "box-3", "box-2d", "box-int", "multi-discrete"],
)
def test_action_space_that_does_not_fit_the_model_raises(model, starts, space):
    with pytest.raises(ValueError, match="action"):
        DreamVectorEnv(model, starts, NEVER_ENDS, 2, space)


def test_bad_construction_and_order_raise(model, starts):
    with pytest.raises(ValueError, match="hidden_dim"):
        DreamVectorEnv(model, DreamState(starts.latent, starts.hidden), NEVER_ENDS, 2, DISCRETE)
    with pytest.raises(ValueError, match="non-finite"):
        DreamVectorEnv(model, DreamState(starts.hidden * np.inf, starts.latent), NEVER_ENDS, 2, DISCRETE)
    with pytest.raises(ValueError, match="num_envs"):
        DreamVectorEnv(model, starts, NEVER_ENDS, 0, DISCRETE)
    with pytest.raises(ValueError, match="cont_mode 'expected'.*use 'threshold' or 'sample'"):
        DreamVectorEnv(model, starts, DreamSettings(cont_mode="expected"), 2, DISCRETE)
    with pytest.raises(RuntimeError, match="reset"):
        DreamVectorEnv(model, starts, NEVER_ENDS, 2, DISCRETE).step(np.zeros(2, np.int64))
    with pytest.raises(RuntimeError, match="reset"):
        DreamEnv(model, starts, NEVER_ENDS, DISCRETE).step(0)


# ---------------------------------------------------------------------- the single env


def test_single_env_episode_ends_and_the_caller_resets(model, starts):
    env = DreamEnv(model, starts, DreamSettings(horizon=2, cont_threshold=1e-6), BOX, seed=0)
    observation, info = env.reset(seed=1)
    assert observation.shape == (FEATURES,) and observation.dtype == np.float32
    assert isinstance(info["start_index"], int)
    observation, reward, terminated, truncated, info = env.step(np.zeros(ACTIONS, np.float32))
    assert observation.shape == (FEATURES,) and type(reward) is float
    assert terminated is False and truncated is False and set(info) == {"cont", "disagreement"}
    *_, truncated, _ = env.step(np.zeros(ACTIONS, np.float32))
    assert truncated is True
    with pytest.raises(RuntimeError, match="reset"):  # no silent autoreset inside the single view
        env.step(np.zeros(ACTIONS, np.float32))
    env.reset()
    env.step(np.zeros(ACTIONS, np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, ACTIONS), np.float32))


def test_single_env_seeded_reset_is_deterministic(model, starts):
    settings = DreamSettings(horizon=6, cont_mode="sample", latent_noise=0.1)
    env = DreamEnv(model, starts, settings, DISCRETE)

    def episode(seed: int) -> list:
        outputs = [env.reset(seed=seed)[0]]
        for step in range(6):
            observation, reward, terminated, truncated, _ = env.step(step % 2)
            outputs += [observation, reward, terminated]
            if terminated or truncated:
                break
        return outputs

    first, again, other = episode(7), episode(7), episode(8)
    assert len(first) == len(again)
    for value, value_again in zip(first, again, strict=True):
        np.testing.assert_array_equal(value, value_again)
    assert not np.array_equal(first[0], other[0])
