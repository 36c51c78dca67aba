"""make_env: spaces, dtypes, true state, seeding, action repeat, strict checks and argument errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from envs import EnvSpec, make_env, register_envs
from envs.wrappers import resize_image

# (env id, state_dim, discrete, action_dim)
ENVS = [
    ("CartPole-v1", 4, True, 2),
    ("Pendulum-v1", 3, False, 1),
    ("Acrobot-v1", 6, True, 3),
    ("MountainCarContinuous-v0", 2, False, 1),
    ("LunarLander-v3", 8, True, 4),
    ("Parking-v0", 10, True, 9),
]
CASES = [(env_id, obs, *rest) for env_id, *rest in ENVS for obs in ("pixels", "state")]
CASES.append(("CarRacing-v3", "pixels", 8, False, 3))


class NoImageEnv(gym.Env):
    """A real env that can only render text, to check the pixels error."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


class NanAtStepEnv(gym.Env):
    """A real env whose observation turns NaN at its third step."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        value = np.nan if self.t == 3 else 0.0
        return np.full(2, value, np.float32), 0.0, False, False, {}


class PastBoundsEnv(NanAtStepEnv):
    """A real env whose finite observations leave the bounds it declares from its second step on (as LunarLander-v3's
    angle does when the lander spins)."""

    def step(self, action):
        self.t += 1
        return np.full(2, 5.0 if self.t >= 2 else 0.0, np.float32), 0.0, False, False, {}


for _id, _cls in (
    ("EnvsTest/NoImage-v0", NoImageEnv),
    ("EnvsTest/NanAtStep-v0", NanAtStepEnv),
    ("EnvsTest/PastBounds-v0", PastBoundsEnv),
):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)


@pytest.mark.parametrize(("env_id", "obs", "state_dim", "discrete", "action_dim"), CASES)
def test_make_env_walks(env_id: str, obs: str, state_dim: int, discrete: bool, action_dim: int) -> None:
    env, spec = make_env(env_id, obs=obs, size=48, seed=0)
    try:
        assert spec.env_id == env_id and spec.obs_mode == obs
        assert spec.discrete is discrete and spec.action_dim == action_dim and spec.state_dim == state_dim
        assert (spec.action_low is None) is discrete
        if obs == "pixels":
            assert spec.obs_shape == (48, 48, 3) and spec.obs_dtype == "uint8"
        else:
            assert len(spec.obs_shape) == 1 and spec.obs_dtype == "float32"
        assert env.observation_space.shape == spec.obs_shape
        assert env.observation_space.dtype == np.dtype(spec.obs_dtype)
        observation, info = env.reset()
        for _ in range(4):
            assert observation.shape == spec.obs_shape and observation.dtype == np.dtype(spec.obs_dtype)
            assert env.observation_space.contains(observation)
            state = info["state"]
            assert state.dtype == np.float32 and state.shape == (state_dim,) and np.all(np.isfinite(state))
            if obs == "state" and env_id != "Parking-v0":
                np.testing.assert_array_equal(observation, state)  # these envs observe their true state
            observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert isinstance(reward, float) and not truncated
        if obs == "pixels":
            assert observation.std() > 0  # an image, not a blank frame
    finally:
        env.close()


def test_parking_state_obs_is_its_true_state() -> None:
    env, spec = make_env("Parking-v0", obs="state", seed=1)
    observation, info = env.reset()
    np.testing.assert_array_equal(observation, info["state"])
    assert spec.obs_shape == (10,)
    env.close()


def test_pendulum_state_is_cos_sin_velocity() -> None:
    env, _ = make_env("Pendulum-v1", obs="pixels", size=16, seed=3)
    env.reset()
    _, _, _, _, info = env.step(np.array([0.5], np.float32))
    theta, theta_dot = env.unwrapped.state
    np.testing.assert_allclose(info["state"], [math.cos(theta), math.sin(theta), theta_dot], rtol=1e-6)
    env.close()


def test_pendulum_pixels_leave_out_the_torque_indicator() -> None:
    env, _ = make_env("Pendulum-v1", obs="pixels", size=64, seed=0)
    env.reset()
    obs, *_ = env.step(np.array([2.0], dtype=np.float32))
    pendulum = env.unwrapped
    assert pendulum.last_u == 2.0  # left as it was: env.render() (videos) still draws the arrow
    with_arrow = resize_image(env.render(), 64)
    pendulum.last_u = None
    without = resize_image(env.render(), 64)
    env.close()
    assert np.array_equal(obs, without)
    assert np.abs(with_arrow.astype(int) - without).max() > 100  # the arrow is a dark stroke on white


def test_car_racing_has_no_state_observation() -> None:
    with pytest.raises(ValueError, match="use obs: pixels"):
        make_env("CarRacing-v3", obs="state")


def test_unknown_id_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown env id 'CartPol-v1'.*CartPole-v1"):
        make_env("CartPol-v1")
    with pytest.raises(ValueError, match="Parking-v0"):
        make_env("Parkng-v0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"obs": "rgb"}, "obs must be one of"),
        ({"size": 0}, "size must be an integer"),
        ({"size": 64.0}, "size must be an integer"),
        ({"size": 4096}, "size must be an integer"),
        ({"action_repeat": 0}, "action_repeat must be an integer >= 1"),
        ({"seed": -1}, "seed must be None or an integer >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_env("CartPole-v1", **kwargs)


def test_env_without_images_says_use_state() -> None:
    with pytest.raises(ValueError, match="use obs: state"):
        make_env("EnvsTest/NoImage-v0", obs="pixels")
    env, spec = make_env("EnvsTest/NoImage-v0", obs="state")  # and state works
    assert spec.state_dim == 2  # a fully observed low-dim env: its observation is its state
    env.close()


def test_seed_applies_at_first_reset_only() -> None:
    first = [make_env("CartPole-v1", obs="state", seed=7)[0].reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])  # same seed, same start
    reference = gym.make("CartPole-v1")
    np.testing.assert_array_equal(first[0], reference.reset(seed=7)[0])  # the seed reached the env
    env, _ = make_env("CartPole-v1", obs="state", seed=7)
    starts = [env.reset()[0] for _ in range(3)]
    assert not np.array_equal(starts[0], starts[1])  # later resets continue the RNG ...
    np.testing.assert_array_equal(starts[1], reference.reset()[0])  # ... exactly like an env seeded once
    other = make_env("CartPole-v1", obs="state", seed=8)[0].reset()[0]
    assert not np.array_equal(first[0], other)


def test_action_repeat_sums_rewards_and_shortens_the_limit() -> None:
    env, spec = make_env("CartPole-v1", obs="state", action_repeat=3, seed=0)
    assert spec.max_episode_steps == math.ceil(500 / 3) and spec.action_repeat == 3
    env.reset()
    _, reward, terminated, _, _ = env.step(0)
    assert reward == 3.0 and not terminated  # three env steps, +1 each
    steps = 1
    while not terminated:
        _, reward, terminated, _, _ = env.step(0)
        steps += 1
    assert 1.0 <= reward <= 3.0  # the last repeat may stop early
    assert steps < 20  # pushing left only: it falls within a few dozen env steps


def test_strict_check_refuses_bad_actions_with_env_and_step() -> None:
    env, _ = make_env("Pendulum-v1", obs="state", seed=0)
    env.reset()
    env.step(np.array([1.0], np.float32))
    with pytest.raises(ValueError, match=r"Pendulum-v1 \(episode 0, step 1\).*outside the bounds"):
        env.step(np.array([2.5], np.float32))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2, np.float32))
    discrete, _ = make_env("CartPole-v1", obs="state", seed=0)
    discrete.reset()
    with pytest.raises(ValueError, match=r"CartPole-v1 \(episode 0, step 0\).*must be an integer"):
        discrete.step(0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        discrete.step(2)
    discrete.step(np.int64(1))  # numpy integers are fine


def test_strict_check_refuses_non_finite_observations() -> None:
    env, _ = make_env("EnvsTest/NanAtStep-v0", obs="state", seed=0)
    env.reset()
    env.step(0)
    env.step(1)
    with pytest.raises(ValueError, match=r"EnvsTest/NanAtStep-v0 \(episode 0, step 3\).*non-finite"):
        env.step(0)


def test_observations_past_their_declared_bounds_warn_once_and_pass_through() -> None:
    env, _ = make_env("EnvsTest/PastBounds-v0", obs="state", seed=0)
    env.reset()
    env.step(0)
    message = r"EnvsTest/PastBounds-v0 \(episode 0, step 2\).*outside the bounds.*indices \[\[0\], \[1\]\]"
    with pytest.warns(UserWarning, match=message):
        obs, *_ = env.step(1)
    np.testing.assert_array_equal(obs, [5.0, 5.0])  # kept as the env gave it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        env.step(0)


def test_spec_round_trips_through_plain_types() -> None:
    import json

    for env_id in ("CartPole-v1", "Pendulum-v1"):
        env, spec = make_env(env_id, obs="pixels", size=32)
        env.close()
        data = json.loads(json.dumps(spec.to_dict()))
        assert EnvSpec.from_dict(data) == spec
        assert all(not isinstance(v, tuple) for v in data.values())
    other = EnvSpec.from_dict({**spec.to_dict(), "obs_shape": [16, 16, 3]})
    assert spec.differences(other) == ["obs_shape: (32, 32, 3) != (16, 16, 3)"]
    with pytest.raises(ValueError, match="unknown keys"):
        EnvSpec.from_dict({**spec.to_dict(), "colour": 1})


def test_import_registers_the_namespace_and_nothing_else_and_register_envs_is_idempotent() -> None:
    """Importing envs registers the toolkit's envs (the gymnasium 1.x convention) and no other env."""
    code = (
        "import gymnasium; before = set(gymnasium.registry); import envs; "
        "print(sorted(set(gymnasium.registry) - before))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "['Parking-v0', 'wm/Parking-v0', 'wm/ParkingLot-v0']"
    before = dict(gym.registry)
    register_envs()
    register_envs()
    assert dict(gym.registry) == before and "wm/Parking-v0" in gym.registry


def test_pixels_on_a_headless_machine_print_nothing() -> None:
    """pygame draws CartPole off screen; SDL must not go looking for a display and complain on stderr."""
    code = (
        "from envs import make_env; env, _ = make_env('CartPole-v1', obs='pixels', size=16, seed=0); env.reset(); "
        "env.step(0); env.close(); print('ok')"
    )
    headless = {key: value for key, value in os.environ.items() if key not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=headless)
    assert run.stdout.strip() == "ok" and "XDG_RUNTIME_DIR" not in run.stderr, run.stderr


def test_sigterm_still_ends_a_process_that_renders() -> None:
    """pygame's SDL takes over SIGTERM when classic control's renderer starts it (if nothing else has) and swallows
    it; a process that renders must still be stopped by it, with the default action (exit status -15)."""
    code = (
        "import os, signal, time; from envs import make_env; env, _ = make_env('CartPole-v1', obs='pixels', size=16, "
        "seed=0); env.reset(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('still running')"
    )
    environment = {key: value for key, value in os.environ.items() if key != "SDL_NO_SIGNAL_HANDLERS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment)
    assert run.returncode == -15 and "still running" not in run.stdout, (run.returncode, run.stdout, run.stderr)


def test_spec_validates_its_fields() -> None:
    good = dict(
        env_id="X-v0",
        obs_mode="pixels",
        obs_shape=(8, 8, 3),
        obs_dtype="uint8",
        discrete=False,
        action_dim=2,
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        max_episode_steps=None,
    )
    assert EnvSpec(**good).action_shape == (2,)
    with pytest.raises(ValueError, match="obs_mode must be"):
        EnvSpec(**{**good, "obs_mode": "rgb"})
    with pytest.raises(ValueError, match="need action_dim=2 entries"):
        EnvSpec(**{**good, "action_low": (-1.0,)})
    with pytest.raises(ValueError, match="None exactly when the actions are discrete"):
        EnvSpec(**{**good, "discrete": True})


@pytest.mark.parametrize("size", [16, 600])  # the 600 x 400 render shrunk, and stretched
def test_pixel_observations_are_ordinary_writable_arrays(size) -> None:
    """Pillow hands back a read-only buffer; an observation that is one made torch warn on every frame it wrapped
    (`wm video`) and would break any user's in-place preprocessing."""
    env, _ = make_env("CartPole-v1", obs="pixels", size=size, seed=0)
    first, _ = env.reset()
    after, *_ = env.step(0)
    env.close()
    assert first.flags.writeable and after.flags.writeable and first.shape == (size, size, 3)
