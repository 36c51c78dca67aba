"""A controller acting in a real env through the world model: encode each frame, carry h, pick the action.

The agent follows `WorldModel.real_states` one step at a time (`filter_step`), so in the real env a controller sees
exactly what it saw in training windows and in the dream: at an episode's first observation h = f(0, 0, 0); after
that h_t = f(h_{t-1}, z_{t-1}, a_t), z_t = encode(obs_t) (the stochastic model: its posterior's mean), and the
controller maps [z_t, h_t] to a_{t+1}.

It is a policy for `envs.collect` and for real-env scoring: `reset(is_first)` before each step with the mask of
sub-envs whose observation starts an episode, then `agent(obs)` for their actions. Each sub-env can run its own
candidate (`set_parameters`), so a population is scored in one vector env. `record(limit)` keeps the frames and
action vectors of sub-env 0's next episode, for videos of the controller at work.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from agents.controllers import Controller
from worldmodel.dynamics.world_model import WorldModel, restart_at_first


def filter_observation(
    model: WorldModel,
    hidden: torch.Tensor,
    latent: torch.Tensor,
    action: torch.Tensor,
    first: torch.Tensor,
    obs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Restart the state where an episode starts and filter the new frame into it, for N envs.

    hidden (N, hidden_dim), latent (N, D), action (N, A) the previous decision's, first (N, 1) bool,
    obs (N, *obs_shape) -> hidden (N, hidden_dim), latent (N, D): the [z_t, h_t] an agent acts on. `decide` and the
    planner's `agents.planner.PlanningAgent` both filter through it.
    """
    start = model.initial_state(obs.shape[0])
    hidden, latent, action = restart_at_first(first, start, hidden, latent, action)
    embedding = model.encode(obs).to(hidden.dtype)  # (N, D or mlp_dim)
    return model.filter_step(hidden, latent, action, embedding)  # (N, hidden_dim), (N, D)


def decide(
    model: WorldModel,
    controller: Controller,
    parameters: torch.Tensor,
    hidden: torch.Tensor,
    latent: torch.Tensor,
    action: torch.Tensor,
    first: torch.Tensor,
    obs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decision for N envs: restart the state where an episode starts, filter the frame into it, act on [z, h].

    parameters (N, n), hidden (N, hidden_dim), latent (N, D), action (N, A) the previous decision's, first (N, 1) bool,
    obs (N, *obs_shape) -> the action vector (N, A), hidden (N, hidden_dim), latent (N, D). The exported
    `agents.policy.PolicyStep` acts through it, and `LatentAgent` through its two parts.
    """
    hidden, latent = filter_observation(model, hidden, latent, action, first, obs)
    return controller_actions(controller, parameters, hidden, latent), hidden, latent


def controller_actions(
    controller: Controller, parameters: torch.Tensor, hidden: torch.Tensor, latent: torch.Tensor
) -> torch.Tensor:
    """The controllers' action vectors (N, A) on [z, h]: parameters (N, n), hidden (N, hidden_dim), latent (N, D)."""
    features = torch.cat([latent, hidden], dim=-1)[:, None]  # (N, 1, X): N candidates, 1 episode each
    return controller.act(parameters, features)[:, 0]  # (N, 1, A) -> (N, A)


def explore(
    action: torch.Tensor, exploration: float, rng: np.random.Generator, bounds: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Exploration noise on action vectors (N, A) for a collection, from `rng`: with `bounds` None (a discrete space,
    one-hot vectors) a uniformly random action with probability `exploration`; with a Box's (low, high) (A,) Gaussian
    noise of std `exploration` times the range, clipped to the bounds. Every agent a cycle collects with explores so."""
    if exploration == 0:
        return action
    n, dims = action.shape
    if bounds is None:
        swap = torch.as_tensor(rng.random(n) < exploration, device=action.device)
        random = torch.as_tensor(rng.integers(0, dims, size=n), device=action.device)
        one_hot = torch.nn.functional.one_hot(random, dims).to(action.dtype)
        return torch.where(swap[:, None], one_hot, action)
    low, high = bounds[0].to(action), bounds[1].to(action)
    noise = torch.as_tensor(rng.standard_normal((n, dims)), device=action.device, dtype=action.dtype)
    return torch.clamp(action + noise * exploration * (high - low), low, high)


def timed(call: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Count an agent's decisions and their wall time (its `decisions` and `seconds`, encoding included): a cycle
    reports the milliseconds a real decision takes for every agent (the planner's search makes them count)."""

    @functools.wraps(call)
    def counted(agent, obs: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        actions = call(agent, obs)
        agent.decisions, agent.seconds = agent.decisions + 1, agent.seconds + time.perf_counter() - start
        return actions

    return counted


def decision_ms(agent) -> float:
    """Milliseconds a `timed` agent's decisions took on average (one decision acts for every sub-env); 0 before any."""
    return 1000 * agent.seconds / max(agent.decisions, 1)


class ActionKind(NamedTuple):
    """How an agent that outputs action vectors acts in an action space."""

    discrete: bool
    dim: int
    """A: n logits for a Discrete space, the Box's length otherwise."""
    start: int
    """The Discrete space's first action (0 for a Box)."""


def action_kind(action_space: spaces.Space, model: WorldModel, agent: str) -> ActionKind:
    """The kind of a Discrete or 1-D finite Box action space, checked against the model's action width; `agent` names
    who asks, in the ValueError for any other space."""
    if isinstance(action_space, spaces.Discrete):
        kind = ActionKind(True, int(action_space.n), int(action_space.start))
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError(f"a continuous action space needs finite bounds, got {action_space}")
        kind = ActionKind(False, int(action_space.shape[0]), 0)
    else:
        raise ValueError(f"{agent} acts in Discrete or 1-D Box action spaces, got {action_space}")
    if kind.dim != model.action_dim:
        raise ValueError(f"the action space has {kind.dim} dims but the model takes {model.action_dim}")
    return kind


class Recording:
    """Sub-env 0's observations and the action vectors chosen on them, from its first episode after
    `LatentAgent.record`, up to `limit` steps (the episode's last observation included)."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a recording needs a limit of at least 1 step, got {limit}")
        self.limit = limit
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.closed = False

    def add(self, obs: np.ndarray, action: np.ndarray) -> None:
        if not self.closed and len(self.obs) < self.limit:
            self.obs.append(np.array(obs))
            self.actions.append(np.array(action))

    def episode(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, *obs_shape) observations and (T, A) actions in the episode store's order: action[t] led to
        obs[t], so action[0] is zeros and the action chosen on the last observation is dropped."""
        if not self.obs:
            raise ValueError("nothing was recorded")
        actions = np.stack(self.actions)
        return np.stack(self.obs), np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])


class ModelAgent:
    """An agent that acts through its world model in N real sub-envs and decides each step from the state alone:
    `reset(is_first)` before each step, then `agent(obs)` for the env actions. It filters each frame into (h, z)
    (`filter_observation`), then a subclass's `choose_actions` gives the action vectors there and its `env_actions`
    the env's actions (`LatentAgent` runs its controller, the planner searches, the actor-critic reads its actor).
    `decisions` and `seconds` count the calls and their wall time, encoding included.

    Args:
        model: the world model acted through (eval mode).
        num_envs: N.
        bounds: the Box's (low, high) (A,) a continuous agent's action vectors lie in; None for a discrete one.
        exploration: `LatentAgent`'s exploration noise, as `wm cycle` collects with it (`explore`); 0 to act as is.
        seed: seed of the exploration noise.
    """

    def __init__(
        self,
        model: WorldModel,
        num_envs: int,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
        exploration: float = 0.0,
        seed: int = 0,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 0.0 <= exploration <= 1.0:
            raise ValueError(f"exploration must be in [0, 1], got {exploration}")
        self.model, self.num_envs, self.bounds, self.exploration = model, num_envs, bounds, exploration
        self.rng = np.random.default_rng(seed)
        weight = model.gru.weight_hh
        self.device, self.dtype = weight.device, weight.dtype
        self.hidden = model.initial_state(num_envs)  # (N, hidden_dim)
        self.latent = torch.zeros(num_envs, model.latent_dim, device=self.device, dtype=self.dtype)  # (N, D)
        self.action = torch.zeros(num_envs, model.action_dim, device=self.device, dtype=self.dtype)  # (N, A)
        self.first = np.ones(num_envs, dtype=bool)
        self.recording: Recording | None = None
        self.decisions, self.seconds = 0, 0.0

    def choose_actions(self, hidden: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Action vectors (N, A) from the filtered state h (N, hidden_dim), z (N, D)."""
        raise NotImplementedError

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        """Action vectors (N, A) -> env actions (N,) ints or (N, A) floats."""
        raise NotImplementedError

    def record(self, limit: int) -> Recording:
        """Keep sub-env 0's observations and action vectors of its next episode, up to `limit` steps."""
        self.recording = Recording(limit)
        return self.recording

    def reset(self, is_first: np.ndarray | None = None) -> None:
        """Mark the sub-envs (N,) bool whose next observation is the first of an episode (None: all of them)."""
        self.first = np.ones(self.num_envs, dtype=bool) if is_first is None else np.asarray(is_first, dtype=bool).copy()
        if self.recording is not None and self.first[0] and self.recording.obs:
            self.recording.closed = True

    @torch.no_grad()
    @timed
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, *obs_shape) -> env actions (N,) ints or (N, A) floats."""
        first = torch.as_tensor(self.first, device=self.device)[:, None]  # (N, 1)
        frames = torch.as_tensor(obs, device=self.device)
        self.hidden, self.latent = filter_observation(self.model, self.hidden, self.latent, self.action, first, frames)
        chosen = self.choose_actions(self.hidden, self.latent).to(self.dtype)  # (N, A)
        self.action = explore(chosen, self.exploration, self.rng, self.bounds)
        if self.recording is not None:
            self.recording.add(obs[0], self.action[0].float().cpu().numpy())
        self.first[:] = False
        return self.env_actions(self.action)


class LatentAgent(ModelAgent):
    """A controller (one parameter vector per sub-env) acting through the world model in N real sub-envs: a
    `ModelAgent` whose action vectors are the controller's on [z, h] (`decide`'s, as the exported policy's).

    Args:
        model: the world model whose latents the controller was evolved on (eval mode).
        controller: the controller's shape.
        parameters: (n,) one controller for every sub-env, or (N, n) one per sub-env.
        num_envs: N.
        exploration: discrete: probability of a uniformly random action instead of the controller's; continuous:
            std of Gaussian noise added to the action, as a fraction of the bounds' range (clipped to them).
        seed: seed of the exploration noise.
    """

    def __init__(
        self,
        model: WorldModel,
        controller: Controller,
        parameters: np.ndarray | torch.Tensor,
        num_envs: int,
        exploration: float = 0.0,
        seed: int = 0,
    ):
        bounds = None if controller.discrete else (controller.low, controller.high)
        super().__init__(model, num_envs, bounds, exploration, seed)
        self.controller = controller
        self.parameters = torch.zeros(num_envs, controller.num_params, device=self.device, dtype=self.dtype)
        self.set_parameters(np.arange(num_envs), parameters)

    def set_parameters(self, envs: np.ndarray, parameters: np.ndarray | torch.Tensor) -> None:
        """Sub-envs `envs` (envs,) act with `parameters` (n,) or (envs, n) from their next step on."""
        values = torch.as_tensor(np.asarray(parameters), device=self.device, dtype=self.dtype)
        if values.shape[-1] != self.controller.num_params:
            raise ValueError(f"controller parameters must end in {self.controller.num_params}, got {values.shape}")
        self.parameters[torch.as_tensor(envs, dtype=torch.long)] = values

    def choose_actions(self, hidden: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return controller_actions(self.controller, self.parameters, hidden, latent)

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        return self.controller.env_actions(action)
