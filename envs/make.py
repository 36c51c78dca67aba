"""make_env / make_vector_env: any gymnasium id as pixels or state, with true state, checks and seeding."""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.async_vector_env import AsyncState

from envs.spec import EnvSpec
from envs.wrappers import (
    ActionRepeat,
    ImageFn,
    PixelObservation,
    SeedOnce,
    StateFn,
    StateObservation,
    StrictCheck,
    TrueState,
)

OBS_MODES = ("pixels", "state")
MIN_SIZE, MAX_SIZE = 8, 1024
NAMESPACE = "wm"
"""The toolkit's own envs live in this gymnasium namespace: `gymnasium.make("wm/Parking-v0")` after `import envs`,
or `gymnasium.make("envs:wm/Parking-v0")` with no import at all (gymnasium imports the module first)."""
PARKING_ID = f"{NAMESPACE}/Parking-v0"
"""The parking task whose car starts with the space in its front camera's view (envs/parking.py)."""
PARKING_LOT_ID = f"{NAMESPACE}/ParkingLot-v0"
"""The same task with the car starting anywhere in the lot (Parking-v0's start until 2026-12-07)."""
LEGACY_IDS = {"Parking-v0": PARKING_ID}
"""Ids the toolkit's envs had before the namespace, kept so that the runs and presets that name them still work."""
PARKING_NAMES = ("Parking", "ParkingLot")
"""gymnasium's names (ids without namespace and version) of the envs made by `envs.parking.ParkingEnv`."""


def register_envs() -> None:
    """Register the toolkit's envs with gymnasium (importing `envs` does it, as gymnasium 1.x packages do).
    Idempotent. No reward_threshold: a Parking task is solved by its success rate, not a return."""
    from envs.parking import MAX_STEPS

    lot_start = {"start_distance": None, "start_heading_spread": math.pi}
    for env_id, kwargs in ((PARKING_ID, {}), (PARKING_LOT_ID, lot_start), *((legacy, {}) for legacy in LEGACY_IDS)):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.parking:ParkingEnv", max_episode_steps=MAX_STEPS, kwargs=kwargs)


# ---------------------------------------------------------------------------- per-env knowledge


def _cartpole_state(env: gym.Env, obs: Any) -> np.ndarray:
    return np.asarray(env.state, dtype=np.float32)  # x, x_dot, theta, theta_dot


def _pendulum_state(env: gym.Env, obs: Any) -> np.ndarray:
    theta, theta_dot = env.state
    # cos/sin rather than the angle: no jump at +-pi.
    return np.array([math.cos(theta), math.sin(theta), theta_dot], dtype=np.float32)


def _acrobot_state(env: gym.Env, obs: Any) -> np.ndarray:
    theta1, theta2, dtheta1, dtheta2 = env.state
    return np.array(
        [math.cos(theta1), math.sin(theta1), math.cos(theta2), math.sin(theta2), dtheta1, dtheta2], dtype=np.float32
    )


def _mountain_car_state(env: gym.Env, obs: Any) -> np.ndarray:
    return np.asarray(env.state, dtype=np.float32).reshape(-1)  # position, velocity


def _observation_state(env: gym.Env, obs: Any) -> np.ndarray:
    # LunarLander keeps no state attribute; its 8-dim observation is the state
    # (position, velocity, angle, angular velocity, leg contacts).
    return np.asarray(obs, dtype=np.float32).reshape(-1)


def _car_racing_state(env: gym.Env, obs: Any) -> np.ndarray:
    # The car's body: position, heading as cos/sin, velocity, yaw rate, front-wheel steering angle. The track is
    # not in it, so it is a probe target, not a usable observation.
    hull = env.car.hull
    angle = float(hull.angle)
    return np.array(
        [
            hull.position[0],
            hull.position[1],
            math.cos(angle),
            math.sin(angle),
            hull.linearVelocity[0],
            hull.linearVelocity[1],
            hull.angularVelocity,
            env.car.wheels[0].joint.angle,
        ],
        dtype=np.float32,
    )


def _parking_state(env: gym.Env, obs: Any) -> np.ndarray:
    return env.state_vector()


def _render_image(env: gym.Env, obs: Any) -> np.ndarray:
    return env.render()


def _own_image(env: gym.Env, obs: Any) -> np.ndarray:
    return obs


def _pendulum_image(env: gym.Env, obs: Any) -> np.ndarray:
    """Pendulum's frame without its torque indicator: `render()` draws the last action as an arrow around the pivot,
    which under random actions changes more from one frame to the next than the pendulum does (and only repeats
    the action the agent took). The rod and pivot are drawn as usual."""
    pendulum = env.unwrapped
    last_u = pendulum.last_u
    pendulum.last_u = None  # render() draws the arrow only when an action was taken
    try:
        return env.render()
    finally:
        pendulum.last_u = last_u


@dataclass(frozen=True)
class _Adapter:
    """What we know about one env family (keyed by gymnasium's name without version)."""

    state_fn: StateFn | None = None
    state_dim: int | None = None
    state_is_observation: bool = True  # the true state alone is enough to act on (usable as obs="state")
    image_fn: ImageFn | None = None  # how pixels are drawn, when not by render() (or the env's own image)


_ADAPTERS: dict[str, _Adapter] = {
    "CartPole": _Adapter(_cartpole_state, 4),
    "Pendulum": _Adapter(_pendulum_state, 3, image_fn=_pendulum_image),
    "Acrobot": _Adapter(_acrobot_state, 6),
    "MountainCar": _Adapter(_mountain_car_state, 2),
    "MountainCarContinuous": _Adapter(_mountain_car_state, 2),
    "LunarLander": _Adapter(_observation_state, 8),
    "LunarLanderContinuous": _Adapter(_observation_state, 8),
    "CarRacing": _Adapter(_car_racing_state, 8, state_is_observation=False),
    **{name: _Adapter(_parking_state, 10) for name in PARKING_NAMES},
}


def _parking_image(env: gym.Env, obs: Any, size: int) -> np.ndarray:
    from envs.parking import parking_pixels

    return parking_pixels(obs["cameras"], obs["vector"], size)


# ---------------------------------------------------------------------------- validation


class EnvUnavailableError(ValueError):
    """The env cannot be made here: its id is not registered, or a package it needs is not installed."""


def _check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id`: a registered id, a namespaced one (`wm/Parking-v0`), or `module:id`, for
    which the module is imported first so that it can register the env (as `gymnasium.make` does)."""
    register_envs()
    if not isinstance(env_id, str):
        raise EnvUnavailableError(f"env id must be a string, got {env_id!r}")
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise EnvUnavailableError(
                f"env id {env_id!r}: its module {module!r} cannot be imported ({error}); the module must be importable "
                "from where the command runs (on PYTHONPATH) and register the env when imported"
            ) from None
    if name not in gym.registry:
        known = sorted(gym.registry)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else f"{len(known)} ids are registered, e.g. CartPole-v1"
        where = f" after importing {module!r}" if module else ""
        raise EnvUnavailableError(f"unknown env id {name!r}{where}; {hint}")
    return gym.spec(name)


def _unavailable(env_id: str, error: Exception) -> EnvUnavailableError:
    """The error for an env whose module (or a package that module imports) failed to import."""
    missing = None
    cause: BaseException | None = error
    while cause is not None and missing is None:  # gymnasium wraps the ImportError in DependencyNotInstalled
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            missing = cause.name.split(".")[0]
        cause = cause.__cause__ or cause.__context__
    what = f"the package {missing!r}, which is not installed" if missing else "a package that fails to import"
    return EnvUnavailableError(f"env id {env_id!r} cannot be made here: it needs {what} ({error})")


def _check_args(obs: str, size: int, action_repeat: int, seed: int | None) -> None:
    if obs not in OBS_MODES:
        raise ValueError(f"obs must be one of {OBS_MODES}, got {obs!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if isinstance(action_repeat, bool) or not isinstance(action_repeat, (int, np.integer)) or action_repeat < 1:
        raise ValueError(f"action_repeat must be an integer >= 1, got {action_repeat!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")


def _is_image_space(space: spaces.Space) -> bool:
    return (
        isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] in (3, 4)
    )


def _is_low_dim(space: spaces.Space) -> bool:
    return (isinstance(space, spaces.Box) and len(space.shape) <= 1) or isinstance(space, spaces.Discrete)


# ---------------------------------------------------------------------------- make_env


def make_env(
    env_id: str, obs: str = "pixels", size: int = 64, action_repeat: int = 1, seed: int | None = None
) -> tuple[gym.Env, EnvSpec]:
    """Make a gymnasium env whose observations are images or state vectors.

    Args:
        env_id: any id gymnasium can make: registered ("CartPole-v1"), namespaced ("wm/Parking-v0", the toolkit's
            own), or "module:EnvId-v0" (the module is imported first and registers the env).
        obs: "pixels": uint8 (size, size, 3) images, from `render()` (or the env's own image observation when it
            already is one, e.g. CarRacing, which saves a second render); Parking-v0 gives its tiled cameras with
            speed and steering gauges. "state": the env's own low-dimensional observation as float32 (S,)
            (Parking-v0: its true state).
        size: image side in pixels (pixels mode only; the image is squashed to a square, aspect not kept).
        action_repeat: env steps per agent step; rewards are summed.
        seed: applied at the first reset only; later resets continue the env's RNG.

    Returns:
        (env, spec). `info["state"]`, float32 (spec.state_dim,), is present at reset and every step when
        spec.state_dim is not None.
    Raises:
        EnvUnavailableError: an unknown id, or one whose package is not installed (naming it).
        ValueError: settings the env cannot serve (obs mode, size, action space).
    """
    gym_spec = _check_env_id(env_id)
    _check_args(obs, size, action_repeat, seed)
    adapter = _ADAPTERS.get(gym_spec.name, _Adapter())
    is_parking = gym_spec.name in PARKING_NAMES

    make_kwargs: dict[str, Any] = {}
    if is_parking and obs == "state":
        make_kwargs["observation"] = "state"  # no cameras rendered at all
    env = _make_rendering(env_id, gym_spec, require_images=(obs == "pixels" and not is_parking), **make_kwargs)
    own_space = env.observation_space

    state_fn, state_dim = adapter.state_fn, adapter.state_dim
    if state_fn is None and _is_low_dim(own_space) and not isinstance(own_space, spaces.Discrete):
        state_fn, state_dim = _observation_state, int(np.prod(own_space.shape))  # fully observed: obs is the state
    if state_fn is not None:
        env = TrueState(env, state_fn, state_dim)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)

    if obs == "pixels":
        if is_parking:
            image_fn: ImageFn = functools.partial(_parking_image, size=size)
        elif _is_image_space(own_space):
            image_fn = _own_image
        elif adapter.image_fn is not None:
            image_fn = adapter.image_fn
        else:
            image_fn = _render_image
        env = PixelObservation(env, size, image_fn, env_id)
    elif not _is_low_dim(own_space):
        env.close()
        raise ValueError(
            f"{env_id} observes {own_space}, not a low-dimensional vector, so obs: state is not available; "
            "use obs: pixels"
        )
    elif not adapter.state_is_observation:
        env.close()
        raise ValueError(f"{env_id}: its state does not describe the task; use obs: pixels")
    else:
        env = StateObservation(env)

    env = StrictCheck(env, env_id)
    env = SeedOnce(env, None if seed is None else int(seed))
    return env, _spec_of(env, env_id, obs, state_dim, action_repeat, gym_spec.max_episode_steps)


def reward_threshold(env_id: str) -> float | None:
    """The return at which the env's registration calls it solved (CartPole-v1: 475), None where it names none.

    Raises EnvUnavailableError as `make_env` does for an id gymnasium cannot resolve."""
    threshold = _check_env_id(env_id).reward_threshold
    return None if threshold is None else float(threshold)


def _make_rendering(env_id: str, gym_spec: Any, require_images: bool, **kwargs: Any) -> gym.Env:
    """gym.make with render_mode="rgb_array" where the env supports it (for pixels, and for videos in state mode).

    Frames are drawn off screen, so pygame (classic control, Box2D) gets SDL's dummy video driver unless the user
    chose one: without it, SDL looks for a display and on a headless machine prints an error about XDG_RUNTIME_DIR
    into every run's output. And SDL keeps its hands off signals: where SIGTERM still has its default action when
    pygame starts, SDL installs a handler that turns it into a quit event nobody reads, so `kill` would no longer
    stop a process that renders (a benchmark, `wm eval`) and it would run on.
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    entry = gym_spec.entry_point
    try:  # an env's module imports its engine (mujoco, Box2D, jax) when loaded or made
        env_class = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        modes = list(getattr(env_class, "metadata", {}).get("render_modes", []))
        if "rgb_array" in modes:
            return gym.make(env_id, render_mode="rgb_array", **kwargs)
        if require_images:
            raise ValueError(f"{env_id} cannot render images (its render modes are {modes}); use obs: state")
        return gym.make(env_id, **kwargs)
    except (ImportError, gym.error.DependencyNotInstalled) as error:
        raise _unavailable(env_id, error) from None


def _spec_of(
    env: gym.Env, env_id: str, obs: str, state_dim: int | None, action_repeat: int, max_steps: int | None
) -> EnvSpec:
    action_space = env.action_space
    if isinstance(action_space, spaces.Discrete):
        discrete, action_dim, low, high = True, int(action_space.n), None, None
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        discrete, action_dim = False, int(action_space.shape[0])
        low = tuple(float(v) for v in action_space.low)
        high = tuple(float(v) for v in action_space.high)
    else:
        env.close()
        raise ValueError(f"{env_id}: only Discrete and 1-D Box action spaces are supported, got {action_space}")
    return EnvSpec(
        env_id=env_id,
        obs_mode=obs,
        obs_shape=tuple(int(v) for v in env.observation_space.shape),
        obs_dtype="uint8" if obs == "pixels" else "float32",
        discrete=discrete,
        action_dim=action_dim,
        action_low=low,
        action_high=high,
        max_episode_steps=None if max_steps is None else math.ceil(max_steps / action_repeat),
        state_dim=state_dim,
        action_repeat=int(action_repeat),
    )


# ---------------------------------------------------------------------------- vector envs


def _make_env_only(env_id: str, obs: str, size: int, action_repeat: int, seed: int | None) -> gym.Env:
    return make_env(env_id, obs=obs, size=size, action_repeat=action_repeat, seed=seed)[0]


def make_vector_env(
    env_id: str,
    num_envs: int,
    obs: str = "pixels",
    size: int = 64,
    action_repeat: int = 1,
    seed: int | None = None,
    asynchronous: bool = False,
    timeout_s: float = 60.0,
    context: str | None = None,
) -> tuple[VectorEnv, EnvSpec]:
    """`num_envs` copies of `make_env(...)` in a gymnasium vector env, sub-env i seeded `seed + i`.

    Autoreset is gymnasium's NEXT_STEP mode: the step after a sub-env's episode ended returns its reset
    observation, and the action sent for it is ignored (`envs.collect` handles this).

    Args:
        asynchronous: one worker process per sub-env (`BoundedAsyncVectorEnv`), else all in this process.
        timeout_s: async only: the longest wait for any worker's reply before it is declared hung.
        context: async only: multiprocessing start method (None: the platform's default).

    Returns:
        (vector env, spec of one sub-env). The vector env's `metadata["action_repeat"]` is `action_repeat`.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    probe, spec = make_env(env_id, obs=obs, size=size, action_repeat=action_repeat, seed=seed)
    probe.close()
    fns = [
        functools.partial(_make_env_only, env_id, obs, size, action_repeat, None if seed is None else seed + i)
        for i in range(num_envs)
    ]
    if asynchronous:
        envs: VectorEnv = BoundedAsyncVectorEnv(
            fns, env_id=env_id, timeout_s=timeout_s, context=context, autoreset_mode=AutoresetMode.NEXT_STEP
        )
    else:
        envs = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
    envs.metadata["action_repeat"] = int(action_repeat)  # the vector env's own copy: what `run_episodes` counts by
    return envs, spec


class WorkerTimeoutError(TimeoutError):
    """An async vector env worker did not answer in time (hung) or died."""


class BoundedAsyncVectorEnv(AsyncVectorEnv):
    """AsyncVectorEnv whose every wait is bounded: a hung or dead worker raises `WorkerTimeoutError` naming it.

    gymnasium's `step()`/`reset()` wait forever by default and its timeout message does not say which worker
    hung. On a timeout the workers are terminated and the env closed, since the hung call cannot be cancelled.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], *, env_id: str, timeout_s: float, **kwargs: Any):
        self.env_id = env_id
        self.timeout_s = float(timeout_s)
        super().__init__(env_fns, **kwargs)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self.reset_async(seed=seed, options=options)
        return self._collect("reset", self.reset_wait)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self._collect("step", self.step_wait)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self.call_async(name, *args, **kwargs)
        return self._collect(f"call {name!r}", self.call_wait)

    def _collect(self, what: str, wait: Callable[[], Any]) -> Any:
        self._await(what)
        try:
            return wait()
        except (EOFError, BrokenPipeError, ConnectionResetError) as error:  # a worker died as it answered
            dead = {i: p.exitcode for i, p in enumerate(self.processes) if not p.is_alive()}
            self._terminate()
            raise WorkerTimeoutError(
                f"{self.env_id}: worker(s) {sorted(dead)} died during {what} ({error!r})"
            ) from error

    def _terminate(self) -> None:
        """Kill the workers: the pending call cannot be waited for, so do not (the default close would warn)."""
        self._state = AsyncState.DEFAULT
        self.close(terminate=True)

    def _await(self, what: str) -> None:
        """Wait until every worker has answered, at most `timeout_s` in all; else name the silent ones."""
        deadline = time.monotonic() + self.timeout_s
        silent = []
        for index, pipe in enumerate(self.parent_pipes):
            if pipe is None or pipe.closed:
                silent.append(index)
                continue
            if not pipe.poll(max(deadline - time.monotonic(), 0.0)):
                silent.append(index)
        dead = {i: p.exitcode for i, p in enumerate(self.processes) if p.exitcode is not None}
        if not silent:
            if dead:  # answered (the pipe is readable) but gone: the answer is an EOF
                self._terminate()
                raise WorkerTimeoutError(
                    f"{self.env_id}: worker(s) {sorted(dead)} died during {what} (exit codes {dead})"
                )
            return
        names = [self.processes[i].name for i in silent]
        detail = f"; dead with exit codes {dead}" if dead else ""
        self._terminate()
        raise WorkerTimeoutError(
            f"{self.env_id}: worker(s) {silent} ({', '.join(names)}) gave no answer to {what} within "
            f"{self.timeout_s:g} s{detail}; the vector env was closed"
        )
