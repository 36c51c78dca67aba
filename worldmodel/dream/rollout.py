"""The dream: the world model as a batched latent environment, for every candidate and episode at once.

A dream state is the pair (h, z) of `WorldModel`'s time convention: at step t, h_t holds the history up to z_{t-1}
and the action that led to step t, and [z_t, h_t] is what a controller sees. One dream step under action a:

    h_{t+1}, ẑ_{t+1} = model.step(h_t, z_t, a)        (+ optional Gaussian noise on ẑ)
                                                       (a stochastic model: ẑ drawn from its prior p(z | h_{t+1}))
    r_{t+1} = model.reward(h_{t+1}, ẑ_{t+1}),  c_{t+1} = sigmoid(model.cont(h_{t+1}, ẑ_{t+1}))
    d_{t+1} = model.disagreement(h_{t+1})              (variance across the ensemble heads)

Rollouts start from real states: windows of the episode store, encoded and observed teacher-forced for a burn-in
so that h carries real history (`dream_starts`). A rollout ends when the continue head says the episode
terminated (its probability below a threshold, or a Bernoulli draw), when the ensemble disagrees more than a
limit, or at the horizon. Or, in 'expected' mode, it never ends at random: each reward is weighted by the chance
the episode is still going, prod_{s<=t} c_s, so the return is the expectation of 'sample' mode's without its
sampling noise (a row stops once that chance is below EXPECTED_MIN_WEIGHT).

Kept honest (World Models, https://arxiv.org/abs/1803.10122, section 4.5: a controller evolved in a model that is
too sure of itself learns to exploit its errors): noise on the predicted latents, and the disagreement of the
ensemble heads subtracted from the reward (scaled by `disagreement_penalty`) and used as a reason to stop. The
ensemble is about half of a dream step's work, so a rollout whose settings use neither measures the disagreement for
its figures only, every DISAGREEMENT_EVERY-th step.

All randomness of a rollout is drawn up front per rollout row (`draw_noise`), so a batch of rollouts gives each
row exactly what it would get alone: the batched rollout equals a loop over candidates.

Letters (declared in `worldmodel`): N rollouts (P candidates x E episodes, flattened), R rollouts still going,
U dream steps (the horizon), Q start states in a pool, D latent, X = D + hidden_dim what a controller sees,
A action dims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

CONT_MODES: tuple[str, ...] = ("threshold", "sample", "expected")
EXPECTED_MIN_WEIGHT = 1e-3
"""'expected' mode: a rollout whose chance of still going is below this stops (what is left of its return is at most
this times the reward of the remaining steps)."""
DISAGREEMENT_EVERY = 10
"""Without a disagreement penalty or limit, a rollout measures the ensemble's disagreement (for `Rollout.disagreement`
only) at steps t = 0, 10, 20, ... rather than at every step."""

Policy = Callable[[torch.Tensor], torch.Tensor]
"""Observations [z, h] (N, X) -> model action vectors (N, A) (one-hot when discrete)."""


@dataclass(frozen=True)
class DreamSettings:
    """How a dream rollout runs and ends (plain numbers; `experiments.config.DreamConfig` fills them)."""

    horizon: int = 200
    """Dream steps U at most per rollout."""
    cont_mode: str = "threshold"
    """'threshold': the rollout ends when the continue probability falls below `cont_threshold`; 'sample': it
    ends with probability 1 - continue probability at each step; 'expected': rewards are weighted by the
    probability of still going (rollouts only; a gym view needs episodes that end)."""
    cont_threshold: float = 0.5
    """Continue probability below which a rollout ends ('threshold' only)."""
    latent_noise: float = 0.0
    """Std of Gaussian noise added to each predicted latent, in latent units."""
    disagreement_penalty: float = 0.0
    """Subtracted from each step's reward per unit of ensemble disagreement."""
    disagreement_limit: float = 0.0
    """End a rollout once the ensemble disagreement exceeds this; 0 turns it off."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.cont_mode not in CONT_MODES:
            raise ValueError(f"cont_mode must be one of {CONT_MODES}, got {self.cont_mode!r}")
        if not 0.0 < self.cont_threshold < 1.0:
            raise ValueError(f"cont_threshold must be in (0, 1), got {self.cont_threshold}")
        for name in ("latent_noise", "disagreement_penalty", "disagreement_limit"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def uses_disagreement(self) -> bool:
        """Whether a step's reward or end depends on the ensemble's disagreement (a penalty or a limit is set)."""
        return self.disagreement_penalty > 0 or self.disagreement_limit > 0


class DreamState(NamedTuple):
    """A batch of dream states (rows are independent rollouts)."""

    hidden: torch.Tensor
    """(N, hidden_dim) h_t."""
    latent: torch.Tensor
    """(N, D) z_t (real at a start, predicted after)."""

    def observation(self) -> torch.Tensor:
        """What a controller sees: [z, h] (N, X), X = D + hidden_dim."""
        return torch.cat([self.latent, self.hidden], dim=-1)

    def select(self, index: torch.Tensor) -> DreamState:
        """Rows `index` (N,) of every field."""
        return DreamState(self.hidden[index], self.latent[index])


class DreamNoise(NamedTuple):
    """Every random number a batch of rollouts uses, drawn up front per row (see `draw_noise`)."""

    latent: torch.Tensor | None
    """(N, U, D) standard normal noise for the predicted latents, or None without latent noise."""
    uniform: torch.Tensor | None
    """(N, U) uniforms in [0, 1) for sampled continuation, or None when continuation is thresholded."""
    prior: torch.Tensor | None = None
    """(N, U, D) standard normal noise of a model's prior samples (`WorldModel.samples_prior`), or None."""

    def rows(self, index: slice | torch.Tensor) -> DreamNoise:
        """The noise of rows `index`."""
        return DreamNoise(*(None if value is None else value[index] for value in self))


class StepResult(NamedTuple):
    """One dream step for a batch of rows."""

    state: DreamState
    """The next state (h_{t+1}, ẑ_{t+1})."""
    reward: torch.Tensor
    """(N,) predicted reward of arriving there."""
    cont: torch.Tensor
    """(N,) predicted probability that the episode goes on (has not terminated)."""
    disagreement: torch.Tensor | None
    """(N,) ensemble variance at the next state, averaged over D; None when the step was told not to measure it."""


class Rollout(NamedTuple):
    """The outcome of a batch of dream rollouts."""

    returns: torch.Tensor
    """(N,) sum of the predicted rewards minus the disagreement penalty, up to and including the last step."""
    lengths: torch.Tensor
    """(N,) int64 steps taken before the rollout ended (at most U; 'expected' mode: steps until its weight fell
    below EXPECTED_MIN_WEIGHT)."""
    disagreement: torch.Tensor
    """(N,) mean ensemble disagreement over the steps taken (settings without a penalty or limit: over the steps
    taken among t = 0, DISAGREEMENT_EVERY, 2 * DISAGREEMENT_EVERY, ...)."""
    penalty: torch.Tensor
    """(N,) the disagreement penalty subtracted from the return (included in `returns`)."""


@torch.no_grad()
def dream_starts(model: WorldModel, batch: WorldModelBatch) -> DreamState:
    """Real start states: encode windows, observe them teacher-forced, keep the state at each window's last step.

    The window's earlier steps are the burn-in that gives h its real history (h restarts at an is_first inside
    the window, as in training). Windows whose last step is terminal are dropped: nothing follows them.

    Args:
        batch: B windows of T >= 1 steps (obs or cached features).
    Returns:
        DreamState of Q <= B rows.
    """
    hidden, latents, _ = model.real_states(batch)  # (B, T, hidden_dim), (B, T, D)
    alive = batch.cont[:, -1] > 0.5  # (B,)
    if not alive.any():
        raise ValueError("every start window ends in a terminal step; sample windows that end inside an episode")
    return DreamState(hidden[alive, -1], latents[alive, -1])


def draw_noise(
    rows: int,
    settings: DreamSettings,
    latent_dim: int,
    generator: torch.Generator | None = None,
    prior: bool = False,
) -> DreamNoise:
    """All randomness for `rows` rollouts of `settings.horizon` steps, on the CPU (move it with the rollout);
    `prior`: also the noise of a model's prior samples (`WorldModel.samples_prior`)."""
    latent = None
    if settings.latent_noise > 0:
        latent = torch.randn(rows, settings.horizon, latent_dim, generator=generator)  # (N, U, D)
    uniform = torch.rand(rows, settings.horizon, generator=generator) if settings.cont_mode == "sample" else None
    prior_noise = torch.randn(rows, settings.horizon, latent_dim, generator=generator) if prior else None
    return DreamNoise(latent, uniform, prior_noise)


def dream_step(
    model: WorldModel,
    state: DreamState,
    action: torch.Tensor,
    latent_noise: torch.Tensor | None = None,
    measure_disagreement: bool = True,
    prior_noise: torch.Tensor | None = None,
) -> StepResult:
    """One batched dream step from `state` under `action` (N, A); `latent_noise` (N, D) is added to ẑ as is.
    Without `measure_disagreement` the ensemble is not run and the result's disagreement is None. A stochastic
    model's ẑ is its prior's sample with `prior_noise` (N, D) standard normal (its mean when None)."""
    hidden, latent = model.step(state.hidden, state.latent, action, prior_noise)
    if latent_noise is not None:
        latent = latent + latent_noise
    return StepResult(
        state=DreamState(hidden, latent),
        reward=model.reward(hidden, latent),
        cont=torch.sigmoid(model.cont(hidden, latent)),
        disagreement=model.disagreement(hidden) if measure_disagreement else None,
    )


def penalty(result: StepResult, settings: DreamSettings) -> torch.Tensor:
    """(N,) what the ensemble's disagreement costs this step: disagreement_penalty * disagreement (zeros without a
    penalty, when the step need not have measured the disagreement)."""
    if settings.disagreement_penalty == 0:
        return torch.zeros_like(result.reward)
    return settings.disagreement_penalty * result.disagreement


def still_going(result: StepResult, settings: DreamSettings, uniform: torch.Tensor | None) -> torch.Tensor:
    """(N,) bool: the rollout continues after this step (not terminated, the ensemble within its limit; in
    'expected' mode only the limit ends it here)."""
    if settings.cont_mode == "threshold":
        going = result.cont >= settings.cont_threshold
    elif settings.cont_mode == "sample":
        going = uniform < result.cont  # P(going) = the continue probability
    else:
        going = torch.ones_like(result.cont, dtype=torch.bool)
    if settings.disagreement_limit > 0:
        going = going & (result.disagreement <= settings.disagreement_limit)
    return going


@torch.no_grad()
def rollout(
    model: WorldModel, policy: Policy, start: DreamState, settings: DreamSettings, noise: DreamNoise
) -> Rollout:
    """Roll N dream episodes at once from `start` with `policy`, each until it ends or the horizon.

    Only the rows still going are stepped: an ended row leaves the batch, so the cost is the sum of the rollouts'
    lengths, not N times the longest. The policy still sees all N rows (an ended row's observation is zeros and
    its action unused): a population policy maps rows to candidates by their place.

    Args:
        start: N start states (e.g. `dream_starts` rows, repeated per candidate).
        noise: `draw_noise(N, settings, D, prior=model.samples_prior)`, moved to the model's device.
    """
    rows = start.latent.shape[0]
    needed = {
        "latent": settings.latent_noise > 0,
        "uniform": settings.cont_mode == "sample",
        "prior": model.samples_prior,
    }
    for name, drawn in noise._asdict().items():
        if needed[name] and drawn is None:
            raise ValueError(f"settings need noise.{name} but it is None; draw it with draw_noise(..., settings, ...)")
        if drawn is not None and (drawn.shape[0] != rows or drawn.shape[1] < settings.horizon):
            raise ValueError(
                f"noise.{name} must have {rows} rows of >= {settings.horizon} steps (draw_noise for every rollout "
                f"row), got shape {tuple(drawn.shape)}"
            )
    device, dtype = start.latent.device, start.latent.dtype
    returns = torch.zeros(rows, device=device, dtype=dtype)
    penalties = torch.zeros(rows, device=device, dtype=dtype)
    disagreement = torch.zeros(rows, device=device, dtype=dtype)
    measured = torch.zeros(rows, dtype=torch.long, device=device)  # steps whose disagreement was measured
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    going = torch.arange(rows, device=device)  # (R,) the rows still going, into N
    weight = torch.ones(rows, device=device, dtype=dtype)  # (R,) 'expected': P(still going before this step)
    expected = settings.cont_mode == "expected"
    state = start
    for t in range(settings.horizon):
        observation = state.observation()  # (R, X)
        if len(going) < rows:  # the policy sees every row in its place: (R, X) -> (N, X) -> actions (N, A) -> (R, A)
            action = policy(observation.new_zeros(rows, observation.shape[1]).index_copy_(0, going, observation))[going]
        else:
            action = policy(observation)  # (N, A)
        # The drawn noise is standard normal: scale it to the settings' std here.
        latent_noise = None if noise.latent is None else settings.latent_noise * noise.latent[going, t]  # (R, D)
        prior_noise = None if noise.prior is None else noise.prior[going, t]  # (R, D): a stochastic model's
        measure = settings.uses_disagreement or t % DISAGREEMENT_EVERY == 0
        result = dream_step(model, state, action, latent_noise, measure, prior_noise=prior_noise)
        step_penalty = penalty(result, settings)
        returns[going] += weight * (result.reward - step_penalty)
        penalties[going] += weight * step_penalty
        if measure:
            disagreement[going] += result.disagreement
            measured[going] += 1
        lengths[going] += 1
        keep = still_going(result, settings, None if noise.uniform is None else noise.uniform[going, t])  # (R,)
        if expected:
            weight = weight * result.cont
            keep = keep & (weight >= EXPECTED_MIN_WEIGHT)
        state = result.state
        if not keep.all():
            going, weight, state = going[keep], weight[keep], state.select(keep)
        if len(going) == 0:
            break
    return Rollout(returns, lengths, disagreement / measured.clamp_min(1), penalties)
