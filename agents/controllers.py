"""Controllers: small policies over the world model's [z, h], a whole population acting at once.

A controller's parameters are one flat vector, so CMA-ES can search them; a population is one tensor (P, n) and
acts on observations (P, E, X) with batched matmuls, each candidate on its own E episodes. The output is the world
model's action vector: one-hot for a discrete action space (argmax of the scores, as World Models' controller
picks an action), tanh scaled to the bounds for a continuous one.

Kinds: "linear" (World Models, https://arxiv.org/abs/1803.10122: a = W [z, h] + b) and "mlp" (one tanh hidden
layer).

Letters (declared in `worldmodel`): P candidates, E episodes per candidate, X = D + hidden_dim what a controller sees
([z, h]), A action dims, n parameters of one controller.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

CONTROLLER_KINDS: tuple[str, ...] = ("linear", "mlp")


class Controller:
    """The shape of a controller and how a population of them acts (the parameters live outside, in the ES).

    Args:
        in_dim: X, features of an observation ([z, h]: latent_dim + hidden_dim).
        action_space: the env's gymnasium action space: Discrete(n), or a 1-D Box with finite bounds.
        kind: "linear" or "mlp".
        hidden: width of the MLP's hidden layer ("mlp" only).
    """

    def __init__(self, in_dim: int, action_space: spaces.Space, kind: str = "linear", hidden: int = 32):
        if kind not in CONTROLLER_KINDS:
            raise ValueError(f"controller kind must be one of {CONTROLLER_KINDS}, got {kind!r}")
        if in_dim < 1 or hidden < 1:
            raise ValueError(f"in_dim and hidden must be >= 1, got {in_dim} and {hidden}")
        if isinstance(action_space, spaces.Discrete):
            self.discrete = True
            self.action_dim = int(action_space.n)
            self.start = int(action_space.start)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
                raise ValueError(f"a continuous action space needs finite bounds, got {action_space}")
            self.discrete = False
            self.action_dim = int(action_space.shape[0])
            self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self.high = torch.as_tensor(action_space.high, dtype=torch.float32)
        else:
            raise ValueError(f"controllers act in Discrete or 1-D Box action spaces, got {action_space}")
        self.in_dim, self.kind, self.hidden = in_dim, kind, hidden
        out = self.action_dim
        # (name, shape) of each parameter block, in the order of the flat vector.
        if kind == "linear":
            self.blocks = [("weight", (in_dim, out)), ("bias", (out,))]
        else:
            self.blocks = [("w1", (in_dim, hidden)), ("b1", (hidden,)), ("w2", (hidden, out)), ("b2", (out,))]
        self.num_params = sum(math.prod(shape) for _, shape in self.blocks)

    def describe(self) -> dict:
        """Plain facts that fix the parameter layout, to store beside the parameters and compare on load (a linear
        controller has no hidden width)."""
        facts = {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "action_dim": self.action_dim,
            "discrete": self.discrete,
            "num_params": self.num_params,
        }
        return facts if self.kind == "linear" else {**facts, "hidden": self.hidden}

    def initial_parameters(self, seed: int) -> np.ndarray:
        """A start point for the search (n,): zeros for linear; for the MLP a fan-in scaled random first layer
        (an all-zero MLP has no gradient of its output in any first-layer weight, so the ES would start blind)."""
        params = np.zeros(self.num_params)
        if self.kind == "mlp":
            rng = np.random.default_rng(seed)
            size = self.in_dim * self.hidden
            params[:size] = rng.standard_normal(size) / math.sqrt(self.in_dim)
        return params

    def unflatten(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """(P, n) -> {name: (P, *shape)}."""
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"parameters must have shape (P, {self.num_params}), got {tuple(params.shape)}")
        out, offset = {}, 0
        for name, shape in self.blocks:
            size = math.prod(shape)
            out[name] = params[:, offset : offset + size].reshape(params.shape[0], *shape)  # (P, size) -> (P, *shape)
            offset += size
        return out

    def scores(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Raw outputs: params (P, n), obs (P, E, X) -> (P, E, A)."""
        if obs.ndim != 3 or obs.shape[0] != params.shape[0] or obs.shape[2] != self.in_dim:
            raise ValueError(f"obs must have shape (P={params.shape[0]}, E, {self.in_dim}), got {tuple(obs.shape)}")
        p = self.unflatten(params.to(obs.dtype))
        if self.kind == "linear":
            return torch.baddbmm(p["bias"][:, None], obs, p["weight"])  # (P, E, X) @ (P, X, A) -> (P, E, A)
        hidden = torch.tanh(torch.baddbmm(p["b1"][:, None], obs, p["w1"]))  # (P, E, hidden)
        return torch.baddbmm(p["b2"][:, None], hidden, p["w2"])  # (P, E, A)

    def act(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The world model's action vectors: params (P, n), obs (P, E, X) -> (P, E, A), one-hot or in the bounds."""
        scores = self.scores(params, obs)
        if self.discrete:
            return torch.nn.functional.one_hot(scores.argmax(dim=-1), self.action_dim).to(obs.dtype)
        low, high = self.low.to(obs), self.high.to(obs)
        return low + (torch.tanh(scores) + 1) * 0.5 * (high - low)

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """World-model action vectors (..., A) -> what the env takes: (...,) ints, or (..., A) float32."""
        if self.discrete:
            return actions.argmax(dim=-1).cpu().numpy().astype(np.int64) + self.start
        return actions.cpu().numpy().astype(np.float32)

    def policy(self, params: torch.Tensor, episodes: int):
        """A dream policy for a population: obs (P*E, X) -> actions (P*E, A), rows candidate-major."""
        population = params.shape[0]

        def act(obs: torch.Tensor) -> torch.Tensor:
            batched = obs.reshape(population, episodes, -1)  # (P*E, X) -> (P, E, X)
            return self.act(params, batched).reshape(population * episodes, -1)  # (P, E, A) -> (P*E, A)

        return act
