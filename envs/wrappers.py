"""Gymnasium wrappers that `make_env` stacks, innermost first:

    gym.make (TimeLimit) -> TrueState -> ActionRepeat -> PixelObservation | StateObservation -> StrictCheck -> SeedOnce

Action repeat sits inside the observation wrapper so an image is rendered once per agent step, not once per
env step; the strict check sits outside everything so it sees exactly what the agent sends and receives.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

StateFn = Callable[[gym.Env, Any], np.ndarray]
"""(unwrapped env, its latest observation) -> true state, float32 (S,)."""
ImageFn = Callable[[gym.Env, Any], np.ndarray]
"""(wrapped env, its latest observation) -> uint8 image (H, W, 3) of any size."""


class TrueState(gym.Wrapper):
    """Put the true low-dimensional state, float32 (S,), into `info["state"]` at reset and every step."""

    def __init__(self, env: gym.Env, state_fn: StateFn, state_dim: int) -> None:
        super().__init__(env)
        self.state_fn = state_fn
        self.state_dim = state_dim

    def _with_state(self, obs: Any, info: dict) -> dict:
        state = np.asarray(self.state_fn(self.env.unwrapped, obs), dtype=np.float32).reshape(-1)
        if state.shape != (self.state_dim,):
            raise RuntimeError(f"true state has shape {state.shape}, expected ({self.state_dim},)")
        return {**info, "state": state}

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._with_state(obs, info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._with_state(obs, info)


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing the rewards; stop early when the episode ends.

    The info of the last inner step is returned (so `info["state"]` is the state after the last repeat).
    """

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W), (H, W, 3) or (H, W, 4) image to uint8 (size, size, 3), antialiased; aspect is not kept."""
    from PIL import Image  # local: only the pixel path needs Pillow

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    # reducing_gap=1: Pillow first box-averages by the largest integer factor (cheap, and a proper area filter), then
    # resamples the remaining < 2x bilinearly; about 2x faster than a full bilinear filter and looks the same.
    pil = Image.fromarray(np.ascontiguousarray(image))
    # np.array, not np.asarray: Pillow's buffer comes back read-only, and torch warns on every such frame it wraps.
    return np.array(pil.resize((size, size), Image.BILINEAR, reducing_gap=1.0))


class PixelObservation(gym.ObservationWrapper):
    """Replace the observation with a uint8 (size, size, 3) image made by `image_fn`."""

    def __init__(self, env: gym.Env, size: int, image_fn: ImageFn, env_id: str) -> None:
        super().__init__(env)
        self.size = size
        self.image_fn = image_fn
        self.env_id = env_id
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        image = self.image_fn(self.env, observation)
        if image is None or not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise ValueError(
                f"{self.env_id}: render() gave no image ({type(image).__name__}); use obs: state for this env"
            )
        return resize_image(image, self.size)


class StateObservation(gym.ObservationWrapper):
    """Flatten a low-dimensional observation to float32 (S,): a Box is flattened, a Discrete one-hot encoded."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        inner = env.observation_space
        if isinstance(inner, spaces.Box):
            low = inner.low.astype(np.float32).reshape(-1)
            high = inner.high.astype(np.float32).reshape(-1)
            self.observation_space = spaces.Box(low, high, dtype=np.float32)
        elif isinstance(inner, spaces.Discrete):
            self.observation_space = spaces.Box(0.0, 1.0, (int(inner.n),), np.float32)
        else:
            raise ValueError(f"cannot flatten a {inner} observation to a state vector")

    def observation(self, observation: Any) -> np.ndarray:
        inner = self.env.observation_space
        if isinstance(inner, spaces.Discrete):
            one_hot = np.zeros(int(inner.n), dtype=np.float32)
            one_hot[int(observation) - int(inner.start)] = 1.0
            return one_hot
        return np.asarray(observation, dtype=np.float32).reshape(-1)


class StrictCheck(gym.Wrapper):
    """Check every action before `step` and every observation after it; errors name the env and step.

    gymnasium's passive checker looks only at the first reset and step, only warns, and never checks actions.
    Here an action must be finite and inside the action space, an observation finite and inside the
    observation space; anything else raises `ValueError` at once. One exception: a finite observation of the
    right shape and dtype outside its Box's declared bounds only warns, once per env: some envs overstep bounds
    they declare themselves (LunarLander-v3's angle passes ±2π when the lander spins) and their data is sound.
    """

    def __init__(self, env: gym.Env, env_id: str) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.episode_step = 0  # agent steps since the last reset
        self.episode_index = -1  # resets so far, minus one
        self.warned_bounds = False

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self.episode_step = 0
        self.episode_index += 1
        self._check_observation(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self.episode_index < 0:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        action = self._check_action(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_step += 1
        self._check_observation(obs)
        if not np.isfinite(reward):
            raise ValueError(f"{self._where()}: reward {reward} is not finite")
        return obs, reward, terminated, truncated, info

    def _where(self) -> str:
        return f"{self.env_id} (episode {self.episode_index}, step {self.episode_step})"

    def _check_action(self, action: Any) -> Any:
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            try:
                index = operator.index(action)  # ints, numpy integers, 0-d integer arrays; floats are refused
            except TypeError:
                raise ValueError(
                    f"{self._where()}: action {action!r} must be an integer in "
                    f"[{int(space.start)}, {int(space.start) + int(space.n)})"
                ) from None
            low, high = int(space.start), int(space.start) + int(space.n)
            if not low <= index < high:
                raise ValueError(f"{self._where()}: action {index} is outside [{low}, {high})")
            return index
        if isinstance(space, spaces.Box):
            array = np.asarray(action)
            if array.dtype.kind not in "fiub":
                raise ValueError(f"{self._where()}: action must be numeric, got dtype {array.dtype}")
            array = array.astype(space.dtype)
            if array.shape != space.shape:
                raise ValueError(f"{self._where()}: action has shape {array.shape}, expected {space.shape}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{self._where()}: action {array} is not finite")
            if np.any(array < space.low) or np.any(array > space.high):
                raise ValueError(
                    f"{self._where()}: action {array} is outside the bounds low={space.low} high={space.high}"
                )
            return array
        if not space.contains(action):
            raise ValueError(f"{self._where()}: action {action!r} is not in the action space {space}")
        return action

    def _check_observation(self, obs: Any) -> None:
        space = self.observation_space
        if isinstance(obs, np.ndarray) and obs.dtype.kind == "f" and not np.all(np.isfinite(obs)):
            bad = np.argwhere(~np.isfinite(obs))[:5].tolist()
            raise ValueError(f"{self._where()}: observation has non-finite values at indices {bad}")
        if space.contains(obs):
            return
        detail = f" (shape {obs.shape}, dtype {obs.dtype})" if isinstance(obs, np.ndarray) else ""
        if isinstance(space, spaces.Box) and isinstance(obs, np.ndarray) and obs.shape == space.shape:
            if obs.dtype == space.dtype:  # finite (checked above), well formed, only past the declared bounds
                if not self.warned_bounds:
                    self.warned_bounds = True
                    outside = np.argwhere((obs < space.low) | (obs > space.high))[:5].tolist()
                    warnings.warn(
                        f"{self._where()}: observation outside the bounds its env declares, at indices "
                        f"{outside}; kept as it is (warned once per env)",
                        stacklevel=2,
                    )
                return
        raise ValueError(f"{self._where()}: observation is outside the observation space {space}{detail}")


class SeedOnce(gym.Wrapper):
    """Seed the first reset with `seed` (and the action space with it); later resets continue the env's RNG.

    A seed passed to `reset` explicitly wins over the stored one.
    """

    def __init__(self, env: gym.Env, seed: int | None) -> None:
        super().__init__(env)
        self.seed = seed
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if not self._seeded:
            self._seeded = True
            if seed is None:
                seed = self.seed
            if seed is not None:
                self.action_space.seed(seed)
        return self.env.reset(seed=seed, options=options)
