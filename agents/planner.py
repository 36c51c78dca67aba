"""A planner: at every real step, search action sequences in the dream and act on the first action of the best.

Where a controller is evolved once and then maps [z, h] to an action, the planner searches afresh at each real
step (model-predictive control, as PlaNet's CEM, https://arxiv.org/abs/1811.04551, and TD-MPC's MPPI,
https://arxiv.org/abs/2203.04955): for each of N real envs it samples P action sequences of U steps from a Gaussian,
rolls all N*P of them forward from the env's filtered state [z, h] in one batched dream, scores each by its
discounted expected return, refits the Gaussian, and after `iterations` rounds returns the first action of the mean. It
uses the dream's own step (`worldmodel.dream.rollout.dream_step`) and continuation weighting, so a plan and an evolved
controller are scored on the same model.

    'cem'   the mean and std of the `elites` best sequences.
    'mppi'  the mean and std of the elites weighted by softmax(return / temperature), TD-MPC's variant: weighting
            all P instead narrows the std onto a few lucky samples within an iteration or two (on the tests' line
            world the first action then misses by up to 0.35 of its range, against 0.03 on the elites).

The search runs in a normalised space: a continuous Box's actions in [-1, 1] (samples clipped there, then mapped to
the bounds), a discrete space's actions as n logits per step whose argmax is the action (the model sees it one-hot),
so one Gaussian search serves both. Warm start: after a decision the mean is shifted one step forward (its last
step back to zeros) and starts the next search, as TD-MPC2 (https://arxiv.org/abs/2310.16828) and LeWorldModel do;
the std starts from `initial_std` at every decision. `reset(is_first)` clears it for envs that start an episode.

Choices:
- The stochastic model's ẑ is its prior's mean (`step` with no prior noise): every candidate is scored on the same
  prediction, so the elites are the best sequences, not the luckiest draws of the prior (a noise draw per candidate
  would let the search select noise). The deterministic model draws nothing either way.
- Randomness: env row b draws from its own torch.Generator, seeded `seed + b`, a fixed amount per decision (whatever
  the model predicts), so planning N envs at once equals planning each alone with its row's seed, and the
  generators' states (`state_dict`) resume a search exactly.
- No value at the horizon: the return is the U predicted rewards only (this toolkit trains no critic).

Written by hand: CEM and MPPI over a batched dream are a few tensor operations, and the libraries that ship them
(TD-MPC2, mbrl-lib) bind them to their own models.

Letters (declared in `worldmodel`): N real envs, P candidate sequences, U steps of a sequence (the horizon),
A action dims (n logits when discrete); the elites are written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from agents.agent import ModelAgent, action_kind
from worldmodel.dream.rollout import DreamState, dream_step
from worldmodel.dynamics.world_model import WorldModel

PLAN_METHODS: tuple[str, ...] = ("cem", "mppi")
PLAN_CONT_MODES: tuple[str, ...] = ("expected", "ignore")


@dataclass(frozen=True)
class PlannerSettings:
    """How the planner searches (plain numbers)."""

    method: str = "cem"
    """'cem' (refit on the elites) or 'mppi' (refit on the elites, softmax-weighted by return)."""
    horizon: int = 15
    """Dream steps U of each candidate action sequence."""
    candidates: int = 256
    """Action sequences P sampled per env and iteration."""
    elites: int = 32
    """Best sequences the refit uses."""
    iterations: int = 4
    """Sample-score-refit rounds per real decision."""
    temperature: float = 0.5
    """MPPI's weights are softmax(return / temperature), in return units ('mppi' only)."""
    initial_std: float = 1.0
    """Std the search starts from at every decision, in normalised units (a Box's half-range, or logits)."""
    min_std: float = 0.05
    """Floor of the refitted std, so that the search keeps exploring."""
    momentum: float = 0.0
    """Share of the previous iteration's mean kept in each refit (0: the refit alone)."""
    warm_start: bool = True
    """Start each decision's search from the previous decision's mean, shifted one step."""
    discount: float = 0.99
    """Weight discount**t of the reward t steps ahead."""
    cont_mode: str = "expected"
    """'expected': each reward is weighted by the probability that the episode is still going, the product of the
    earlier steps' continue probabilities (the dream's 'expected' mode); 'ignore': the continue head is not used."""
    seed: int = 0
    """Env row b draws its samples from a generator seeded seed + b."""

    def __post_init__(self) -> None:
        if self.method not in PLAN_METHODS:
            raise ValueError(f"method must be one of {PLAN_METHODS}, got {self.method!r}")
        for name in ("horizon", "candidates", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.elites <= self.candidates:
            raise ValueError(f"elites must be in [1, candidates={self.candidates}], got {self.elites}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.initial_std > 0:
            raise ValueError(f"initial_std must be > 0, got {self.initial_std}")
        if not 0 <= self.min_std <= self.initial_std:
            raise ValueError(f"min_std must be in [0, initial_std={self.initial_std}], got {self.min_std}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.cont_mode not in PLAN_CONT_MODES:
            raise ValueError(f"cont_mode must be one of {PLAN_CONT_MODES}, got {self.cont_mode!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


class Planner:
    """CEM or MPPI over action sequences in the world model's dream, for N real envs at once, warm-started.

    Args:
        model: the world model to plan in (eval mode); only its interface's `step`, `reward` and `cont` are used.
        action_space: the env's gymnasium action space: Discrete(n), or a 1-D Box with finite bounds.
        settings: how to search.
        num_envs: N, the real envs planned for at once (one warm start and one generator each).
    """

    def __init__(self, model: WorldModel, action_space: spaces.Space, settings: PlannerSettings, num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.discrete, self.action_dim, self.start = action_kind(action_space, model, "the planner")
        self.model, self.settings, self.num_envs = model, settings, num_envs
        if not self.discrete:
            self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self.high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.generators = [torch.Generator().manual_seed(settings.seed + row) for row in range(num_envs)]
        # The warm start: (N, U, A) the means the next decision's searches start from, on the CPU in float32.
        self.mean = torch.zeros(num_envs, settings.horizon, self.action_dim)

    def reset(self, is_first: np.ndarray | None = None) -> None:
        """Clear the warm start of the envs (N,) bool whose next observation starts an episode (None: all)."""
        rows = slice(None) if is_first is None else torch.as_tensor(np.asarray(is_first, dtype=bool))
        self.mean[rows] = 0.0

    @torch.no_grad()
    def plan(self, state: DreamState) -> torch.Tensor:
        """Search from each env's filtered state and return the first action of each search's final mean.

        Args:
            state: (N, hidden_dim) h and (N, D) z of the N envs, on the model's device.
        Returns:
            (N, A) the world model's action vectors (one-hot when discrete, within the bounds when continuous).
        """
        settings, rows = self.settings, state.latent.shape[0]
        if rows != self.num_envs:
            raise ValueError(f"the planner plans for {self.num_envs} envs, got a state of {rows}")
        device = state.latent.device
        mean = self.mean.to(device) if settings.warm_start else torch.zeros_like(self.mean, device=device)  # (N, U, A)
        std = torch.full_like(mean, settings.initial_std)
        for _ in range(settings.iterations):
            noise = torch.stack([self._draw(generator) for generator in self.generators]).to(device)  # (N, P, U, A)
            samples = mean[:, None] + std[:, None] * noise  # (N, P, U, A)
            if not self.discrete:
                samples = samples.clamp(-1.0, 1.0)
            fitted_mean, fitted_std = self._refit(samples, self.score(state, samples))
            mean = settings.momentum * mean + (1 - settings.momentum) * fitted_mean
            std = fitted_std.clamp_min(settings.min_std)
        if settings.warm_start:
            self.mean = torch.cat([mean[:, 1:], torch.zeros_like(mean[:, :1])], dim=1).cpu()  # shifted one step
        return self.action_vectors(mean[:, 0]).to(state.latent.dtype)

    def score(self, state: DreamState, samples: torch.Tensor) -> torch.Tensor:
        """Discounted expected returns of candidate sequences from each env's state, in one batched dream.

        Args:
            state: (N, hidden_dim) h and (N, D) z.
            samples: (N, P, U, A) candidate sequences in the normalised search space.
        Returns:
            (N, P) sum over t of discount**t * weight_t * r_t, weight_t the product of the continue probabilities of
            the steps before t ('expected'; 1 with 'ignore').
        """
        N, P, U, A = samples.shape
        dtype = state.latent.dtype
        actions = self.action_vectors(samples).to(dtype).reshape(N * P, U, A)  # (N, P, U, A) -> (N*P, U, A)
        current = DreamState(state.hidden.repeat_interleave(P, dim=0), state.latent.repeat_interleave(P, dim=0))
        returns = torch.zeros(N * P, device=samples.device)  # (N*P,) rows env-major
        weight = torch.ones_like(returns)
        for t in range(U):
            # The prior's mean: no prior noise (see the module's docstring); no ensemble, which nothing here reads.
            result = dream_step(self.model, current, actions[:, t], measure_disagreement=False)
            returns += self.settings.discount**t * weight * result.reward.float()
            if self.settings.cont_mode == "expected":
                weight = weight * result.cont.float()
            current = result.state
        return returns.reshape(N, P)  # (N*P,) -> (N, P)

    def action_vectors(self, normalised: torch.Tensor) -> torch.Tensor:
        """Search-space actions (..., A) -> the world model's action vectors (..., A): the one-hot argmax of the
        logits, or [-1, 1] mapped to the bounds."""
        if self.discrete:
            return torch.nn.functional.one_hot(normalised.argmax(dim=-1), self.action_dim).to(normalised.dtype)
        low, high = self.low.to(normalised), self.high.to(normalised)
        return low + (normalised.clamp(-1.0, 1.0) + 1) * 0.5 * (high - low)

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """World-model action vectors (..., A) -> what the env takes: (...,) ints, or (..., A) float32."""
        if self.discrete:
            return actions.argmax(dim=-1).cpu().numpy().astype(np.int64) + self.start
        return actions.float().cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The warm-start means (N, U, A) and each env row's generator state (N, state bytes) uint8: plain tensors."""
        return {"mean": self.mean.clone(), "generators": torch.stack([g.get_state() for g in self.generators])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Resume from `state_dict()`; raises ValueError when it was saved by a planner of other shapes."""
        if set(state) != {"mean", "generators"}:
            raise ValueError(f"a planner state holds 'mean' and 'generators', got {sorted(state)}")
        if tuple(state["mean"].shape) != tuple(self.mean.shape) or len(state["generators"]) != self.num_envs:
            raise ValueError(
                f"the planner state is for means {tuple(state['mean'].shape)} and {len(state['generators'])} "
                f"generators, this planner has {tuple(self.mean.shape)} and {self.num_envs}"
            )
        self.mean = state["mean"].detach().to("cpu", torch.float32).clone()
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved.to("cpu", torch.uint8).clone())

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        """One env row's standard normal noise (P, U, A) for one iteration."""
        settings = self.settings
        return torch.randn(settings.candidates, settings.horizon, self.action_dim, generator=generator)

    def _refit(self, samples: torch.Tensor, returns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new mean and std (N, U, A) from samples (N, P, U, A) and their returns (N, P)."""
        N, _, U, A = samples.shape
        values, best = returns.topk(self.settings.elites, dim=1)  # (N, elites)
        elites = samples.gather(1, best[:, :, None, None].expand(N, -1, U, A))  # (N, elites, U, A)
        if self.settings.method == "cem":
            return elites.mean(dim=1), elites.std(dim=1, unbiased=False)
        weights = torch.softmax(values / self.settings.temperature, dim=1)[:, :, None, None]  # (N, elites, 1, 1)
        mean = (weights * elites).sum(dim=1)  # (N, U, A)
        variance = (weights * (elites - mean[:, None]).pow(2)).sum(dim=1)
        return mean, variance.sqrt()


class PlanningAgent(ModelAgent):
    """The planner acting through its world model in N real sub-envs (`ModelAgent`: `LatentAgent`'s call shape and
    filter), planning from each step's state.

    Args:
        planner: the planner, built for N = `planner.num_envs` envs and the world model to act through.
        exploration: noise on the planned actions, as a cycle's collection adds it (`agents.agent.explore`).
        seed: seed of the exploration noise.
    """

    def __init__(self, planner: Planner, exploration: float = 0.0, seed: int = 0):
        bounds = None if planner.discrete else (planner.low, planner.high)
        super().__init__(planner.model, planner.num_envs, bounds, exploration, seed)
        self.planner = planner

    def reset(self, is_first: np.ndarray | None = None) -> None:
        """Mark the sub-envs (N,) bool whose next observation is the first of an episode (None: all of them); their
        plans' warm starts are cleared."""
        super().reset(is_first)
        self.planner.reset(self.first)

    def choose_actions(self, hidden: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.planner.plan(DreamState(hidden, latent))  # (N, A)

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        return self.planner.env_actions(action)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The planner's state (`Planner.state_dict`) and the filter's: h, z, the last action vectors and the
        first-step marks, as plain tensors, to resume mid-episode exactly."""
        return {
            **self.planner.state_dict(),
            "hidden": self.hidden.clone(),
            "latent": self.latent.clone(),
            "action": self.action.clone(),
            "first": torch.as_tensor(self.first.copy()),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Resume from `state_dict()`; raises ValueError on a state of other shapes."""
        first = torch.as_tensor(self.first)
        own = {"hidden": self.hidden, "latent": self.latent, "action": self.action, "first": first}
        for key, current in own.items():
            if key not in state or tuple(state[key].shape) != tuple(current.shape):
                shape = tuple(state[key].shape) if key in state else None
                raise ValueError(f"the agent state's {key} must have shape {tuple(current.shape)}, got {shape}")
        self.planner.load_state_dict({key: state[key] for key in ("mean", "generators") if key in state})
        for key in ("hidden", "latent", "action"):
            setattr(self, key, state[key].to(own[key]).clone())
        self.first = state["first"].cpu().numpy().astype(bool).copy()
