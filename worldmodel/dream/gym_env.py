"""The dream behind gymnasium's API, so that any gymnasium agent (PPO, SAC, DQN, ...) can train inside the world model.

`DreamVectorEnv` runs N dream episodes as one batch: every `step` is one `dream_step` for all N rows, so the cost of
N environments is that of one batched model call. `DreamEnv` is the single-environment view of it, for agents and
checkers (gymnasium's `check_env`) that take a `gymnasium.Env`.

Each episode starts from a state drawn uniformly from a pool of real start states (`dream_starts` rows), so that h
carries real history, and runs the dream as `worldmodel.dream.rollout.rollout` does:

    obs = [z, h]                                      what a controller sees (`DreamState.observation`)
    reward = model.reward - disagreement_penalty * disagreement
    terminated = not still_going(...)                 continue head below its threshold (or a Bernoulli draw
                                                      under "sample"), or the ensemble over its disagreement limit
    truncated = the episode reached settings.horizon steps

Every random number (start rows, latent noise, continue draws) comes from the env's own torch Generator, so the
same seed and the same actions give the same trajectory.

Shapes: N sub-envs, Q start states in the pool, D latent, X = D + hidden_dim observation features, A action dims
(the model's action vector; one-hot of length n for Discrete(n)).
    observations (N, X) float32, rewards (N,) float64, terminated / truncated (N,) bool,
    actions (N,) integers for Discrete(n) or (N, A) floats for a 1-D Box.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodel.dream.rollout import DreamSettings, DreamState, dream_step, penalty, still_going
from worldmodel.dynamics.world_model import WorldModel

# The observation bounds: any finite float32. Not ±inf: gymnasium's `check_env` warns on infinite Box bounds
# (`check_space_limit`), and finite bounds also make `obs in observation_space` reject inf, not only nan.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def observation_space(features: int) -> spaces.Box:
    """The space of one dream observation [z, h]: (X,) finite float32."""
    return spaces.Box(-FLOAT32_MAX, FLOAT32_MAX, shape=(features,), dtype=np.float32)


class DreamVectorEnv(VectorEnv):
    """N dream episodes as a gymnasium vector env, with gymnasium 1.x NEXT_STEP autoreset (as `SyncVectorEnv`).

    The step after sub-env i ended (terminated or truncated) ignores its action and returns a fresh start
    observation with reward 0 and both flags False. Actions of the other sub-envs must be valid: integers in the
    Discrete range, or finite and inside the Box bounds; anything else raises `ValueError` naming the sub-env
    (gymnasium's own checkers never look at actions).

    Infos: "cont" (N,) continue probability and "disagreement" (N,) ensemble disagreement of the step taken,
    "start_index" (N,) int64 row of the start pool a sub-env (re)started from (-1 where it did not); each with a
    "_<key>" (N,) bool mask of the sub-envs it holds a value for, as gymnasium's vector infos do.

    Args:
        model: the world model (its mode and device are the caller's; the env only runs it under no_grad).
        starts: the pool of Q >= 1 start states (e.g. `dream_starts` rows).
        settings: how an episode runs and ends (horizon, continuation, noise, disagreement).
        num_envs: N >= 1.
        action_space: one sub-env's action space: Discrete(n) with model.action_dim == n (the model takes a
            one-hot vector), or a 1-D float Box of shape (model.action_dim,) (the model takes the action as is).
        seed: seeds the env's generator; without it, a random seed (a later `reset(seed=...)` reseeds).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    render_mode = None

    def __init__(
        self,
        model: WorldModel,
        starts: DreamState,
        settings: DreamSettings,
        num_envs: int,
        action_space: spaces.Space,
        seed: int | None = None,
    ):
        if not isinstance(settings, DreamSettings):
            raise TypeError(f"settings must be a DreamSettings, got {type(settings).__name__}")
        if settings.cont_mode == "expected":
            raise ValueError(
                "cont_mode 'expected' weights rewards instead of ending episodes; a gymnasium env needs "
                "episodes that end: use 'threshold' or 'sample'"
            )
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.discrete = _check_action_space(action_space, model.action_dim)
        self.model = model
        self.settings = settings
        self.num_envs = int(num_envs)
        reference = model.initial_state(1)  # the model's device and dtype
        self.starts = _check_starts(starts, model, reference)
        self.single_observation_space = observation_space(model.latent_dim + model.hidden_dim)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = action_space
        self.action_space = batch_space(action_space, self.num_envs)
        self.generator = torch.Generator()
        _seed_generator(self.generator, seed)
        self.state: DreamState | None = None
        """The current dream state of every sub-env (rows (N, ...)); None before the first reset."""
        self.episode_steps = np.zeros(self.num_envs, dtype=np.int64)
        """(N,) steps taken in each sub-env's current episode."""
        self._autoreset = np.zeros(self.num_envs, dtype=bool)  # (N,) sub-envs whose episode ended last step

    # ------------------------------------------------------------------ gymnasium API

    @torch.no_grad()
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Fresh start states for all N sub-envs; `seed` reseeds the generator first.

        Returns:
            observations (N, X) float32 and infos {"start_index": (N,) int64, "_start_index": (N,) bool}.
        """
        if options:
            raise ValueError(f"DreamVectorEnv.reset takes no options, got {sorted(options)}")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed must be an int or None (one generator drives all sub-envs), got {seed!r}")
            _seed_generator(self.generator, int(seed))
        super().reset(seed=seed)  # seeds gymnasium's np_random too, for code that reads it; the dream does not use it
        index = self._draw_start_rows(self.num_envs)  # (N,)
        self.state = self.starts.select(index.to(self.starts.latent.device))
        self.episode_steps[:] = 0
        self._autoreset[:] = False
        observations = self._observations(self.state)
        return observations, {"start_index": index.numpy(), "_start_index": np.ones(self.num_envs, dtype=bool)}

    @torch.no_grad()
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One dream step of all N sub-envs (see the class docstring for autoreset and infos).

        Args:
            actions: (N,) integers for Discrete(n) or (N, A) floats for a Box.
        Returns:
            observations (N, X) float32, rewards (N,) float64, terminated (N,) bool, truncated (N,) bool, infos.
        """
        if self.state is None:
            raise RuntimeError("DreamVectorEnv: call reset() before step()")
        restarting = self._autoreset.copy()  # (N,) these sub-envs restart now and ignore their actions
        action = self._model_actions(actions, ~restarting)  # (N, A) on the model's device
        settings, rows = self.settings, self.num_envs
        device = self.starts.latent.device

        # The generator's draws happen in a fixed order (noise, uniforms, prior noise, start rows), so a seed fixes
        # all of them.
        noise = None
        if settings.latent_noise > 0:
            noise = settings.latent_noise * torch.randn(rows, self.model.latent_dim, generator=self.generator)
            noise = noise.to(device=device, dtype=self.starts.latent.dtype)  # (N, D)
        uniform = None
        if settings.cont_mode == "sample":
            uniform = torch.rand(rows, generator=self.generator).to(device)  # (N,)
        prior = None
        if self.model.samples_prior:  # the noise of its prior's sample
            prior = torch.randn(rows, self.model.latent_dim, generator=self.generator)
            prior = prior.to(device=device, dtype=self.starts.latent.dtype)  # (N, D)
        result = dream_step(self.model, self.state, action, noise, prior_noise=prior)
        going = still_going(result, settings, uniform)  # (N,)
        reward = result.reward - penalty(result, settings)  # (N,)

        self.episode_steps += 1
        terminated = ~going.cpu().numpy()  # (N,)
        truncated = self.episode_steps >= settings.horizon  # (N,)
        rewards = reward.double().cpu().numpy()  # (N,) float64
        cont = result.cont.double().cpu().numpy()  # (N,)
        disagreement = result.disagreement.double().cpu().numpy()  # (N,)
        state = result.state

        start_index = np.full(rows, -1, dtype=np.int64)
        if restarting.any():
            restart_rows = np.flatnonzero(restarting)  # (R,)
            index = self._draw_start_rows(len(restart_rows))  # (R,)
            start_index[restart_rows] = index.numpy()
            fresh = self.starts.select(index.to(device))  # (R, ...)
            which = torch.as_tensor(restart_rows, device=device)
            hidden, latent = state.hidden.clone(), state.latent.clone()
            hidden[which], latent[which] = fresh.hidden, fresh.latent
            state = DreamState(hidden, latent)
            rewards[restarting] = 0.0
            terminated[restarting] = False
            truncated[restarting] = False
            cont[restarting] = 0.0
            disagreement[restarting] = 0.0
            self.episode_steps[restarting] = 0

        observations = self._observations(state)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if len(bad):
            env = int(bad[0])
            raise ValueError(
                f"DreamVectorEnv: sub-env {env} (step {self.episode_steps[env]}): reward {rewards[env]} is not finite"
            )
        self.state = state
        self._autoreset = terminated | truncated
        stepped = ~restarting
        infos = {
            "cont": cont,
            "_cont": stepped,
            "disagreement": disagreement,
            "_disagreement": stepped.copy(),
            "start_index": start_index,
            "_start_index": restarting,
        }
        return observations, rewards, terminated, truncated, infos

    def render(self) -> None:
        """Nothing to render (render_mode is None): the dream has no pixels, only latents."""
        return None

    # ------------------------------------------------------------------ helpers

    def _draw_start_rows(self, count: int) -> torch.Tensor:
        """(count,) int64 rows of the start pool, uniform, from the env's generator (on the CPU)."""
        return torch.randint(self.starts.latent.shape[0], (count,), generator=self.generator)

    def _observations(self, state: DreamState) -> np.ndarray:
        """(N, X) float32 [z, h], checked finite (a diverging model must not reach an agent silently)."""
        observations = state.observation().float().cpu().numpy()  # (N, X)
        finite = np.isfinite(observations).all(axis=1)  # (N,)
        if not finite.all():
            env = int(np.flatnonzero(~finite)[0])
            columns = np.flatnonzero(~np.isfinite(observations[env]))[:5].tolist()
            raise ValueError(
                f"DreamVectorEnv: sub-env {env} (step {self.episode_steps[env]}): observation is not finite "
                f"at features {columns}"
            )
        return observations

    def _where(self, env: int) -> str:
        return f"DreamVectorEnv: sub-env {env} (step {self.episode_steps[env] + 1})"

    def _model_actions(self, actions: Any, used: np.ndarray) -> torch.Tensor:
        """Validate a batch of env actions and turn it into model action vectors (N, A) on the model's device.

        Only the rows in `used` (N,) bool are checked for values; the others are ignored (autoreset) and become
        zeros. Shape and dtype are checked for the whole batch.
        """
        array = np.asarray(actions)
        space = self.single_action_space
        rows, device, dtype = self.num_envs, self.starts.latent.device, self.starts.latent.dtype
        if self.discrete:
            if array.shape != (rows,):
                raise ValueError(f"DreamVectorEnv: actions must have shape ({rows},) for {space}, got {array.shape}")
            if array.dtype.kind not in "iu":
                raise ValueError(f"DreamVectorEnv: actions must be integers for {space}, got dtype {array.dtype}")
            low, high = int(space.start), int(space.start) + int(space.n)
            bad = np.flatnonzero(used & ((array < low) | (array >= high)))
            if len(bad):
                env = int(bad[0])
                raise ValueError(f"{self._where(env)}: action {array[env]} is outside [{low}, {high})")
            index = np.where(used, array - low, 0).astype(np.int64)  # (N,)
            one_hot = torch.nn.functional.one_hot(torch.as_tensor(index), int(space.n))  # (N,) -> (N, A)
            one_hot[torch.as_tensor(~used)] = 0
            return one_hot.to(device=device, dtype=dtype)
        expected = (rows, *space.shape)
        if array.shape != expected:
            raise ValueError(f"DreamVectorEnv: actions must have shape {expected} for {space}, got {array.shape}")
        if array.dtype.kind not in "fiu":
            raise ValueError(f"DreamVectorEnv: actions must be numeric for {space}, got dtype {array.dtype}")
        array = array.astype(space.dtype)
        finite = np.isfinite(array).all(axis=1)  # (N,)
        inside = ((array >= space.low) & (array <= space.high)).all(axis=1)  # (N,); False where nan
        bad = np.flatnonzero(used & ~(finite & inside))
        if len(bad):
            env = int(bad[0])
            reason = "is not finite" if not finite[env] else f"is outside the bounds low={space.low} high={space.high}"
            raise ValueError(f"{self._where(env)}: action {array[env]} {reason}")
        array = np.where(used[:, None], array, 0)  # (N, A)
        return torch.as_tensor(array, device=device, dtype=dtype)


class DreamEnv(gymnasium.Env):
    """One dream episode at a time as a `gymnasium.Env`: a `DreamVectorEnv` with one sub-env, unbatched.

    Observations (X,) float32, rewards float, flags bool. Episodes end as usual: after terminated or truncated the
    caller resets; stepping an ended episode raises `RuntimeError`. (The inner vector env would autoreset on the
    next step; instead every episode starts with the inner env's explicit `reset`, which clears its autoreset flag,
    and a step after the end is refused before it reaches the inner env. So the inner env never autoresets and
    needs no second mode.)

    Args: as `DreamVectorEnv`, without num_envs.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(
        self,
        model: WorldModel,
        starts: DreamState,
        settings: DreamSettings,
        action_space: spaces.Space,
        seed: int | None = None,
    ):
        self.vector_env = DreamVectorEnv(model, starts, settings, 1, action_space, seed=seed)
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self._episode_over = True  # no episode until the first reset

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """A fresh start state; `seed` reseeds the dream's generator, so the same seed gives the same episode
        under the same actions. Returns obs (X,) float32 and info {"start_index": int}."""
        super().reset(seed=seed)  # gymnasium's np_random (check_env inspects it); the dream draws from its own
        observations, infos = self.vector_env.reset(seed=seed, options=options)
        self._episode_over = False
        return observations[0], _unbatch_info(infos)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One dream step under `action` (an integer for Discrete, (A,) for a Box).

        Returns:
            obs (X,) float32, reward float, terminated bool, truncated bool, info {"cont", "disagreement"} floats.
        """
        if self._episode_over:
            raise RuntimeError("DreamEnv: the episode is over (or never began); call reset() before step()")
        array = np.asarray(action)
        expected = () if self.vector_env.discrete else self.action_space.shape
        if array.shape != expected:
            raise ValueError(f"DreamEnv: action must have shape {expected} for {self.action_space}, got {array.shape}")
        observations, rewards, terminated, truncated, infos = self.vector_env.step(array[None])  # (1, ...)
        self._episode_over = bool(terminated[0] or truncated[0])
        return observations[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]), _unbatch_info(infos)

    def render(self) -> None:
        """Nothing to render (render_mode is None)."""
        return None

    def close(self) -> None:
        self.vector_env.close()


def _unbatch_info(infos: dict[str, Any]) -> dict[str, Any]:
    """Sub-env 0's entries of a vector info dict, as Python scalars; keys it holds no value for are left out."""
    single = {}
    for key, values in infos.items():
        if not key.startswith("_") and infos.get(f"_{key}", np.ones(1, dtype=bool))[0]:
            single[key] = values[0].item()
    return single


def _check_action_space(action_space: spaces.Space, action_dim: int) -> bool:
    """Whether the space is discrete; raises ValueError when the model cannot take its actions."""
    if isinstance(action_space, spaces.Discrete):
        if int(action_space.n) != action_dim:
            raise ValueError(
                f"{action_space} needs a model with action_dim {int(action_space.n)} (one-hot actions), "
                f"the model has action_dim {action_dim}"
            )
        return True
    if isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1 or action_space.shape[0] != action_dim:
            raise ValueError(
                f"a Box action space must have shape ({action_dim},) to match the model's action_dim, "
                f"got {action_space}"
            )
        if not np.issubdtype(action_space.dtype, np.floating):
            raise ValueError(f"a Box action space must have a float dtype, got {action_space}")
        return False
    raise ValueError(f"the dream takes Discrete or 1-D Box action spaces, got {action_space}")


def _check_starts(starts: DreamState, model: WorldModel, reference: torch.Tensor) -> DreamState:
    """The start pool on the model's device and dtype; raises ValueError for wrong shapes or non-finite values."""
    hidden, latent = starts.hidden, starts.latent
    if hidden.ndim != 2 or latent.ndim != 2 or hidden.shape[0] != latent.shape[0] or hidden.shape[0] < 1:
        raise ValueError(
            f"starts must be Q >= 1 rows of hidden (Q, hidden_dim) and latent (Q, D), "
            f"got {tuple(hidden.shape)} and {tuple(latent.shape)}"
        )
    if hidden.shape[1] != model.hidden_dim or latent.shape[1] != model.latent_dim:
        raise ValueError(
            f"starts must have hidden_dim {model.hidden_dim} and latent_dim {model.latent_dim}, "
            f"got {hidden.shape[1]} and {latent.shape[1]}"
        )
    if not (torch.isfinite(hidden).all() and torch.isfinite(latent).all()):
        raise ValueError("starts hold non-finite values")
    return DreamState(hidden.detach().to(reference), latent.detach().to(reference))


def _seed_generator(generator: torch.Generator, seed: int | None) -> None:
    if seed is None:
        generator.seed()  # a fresh random seed
    else:
        generator.manual_seed(seed)
