"""An actor-critic trained in imagination: Dreamer's recipe over the world model's dream.

Where CMA-ES evolves a controller by its dream return and the planner searches action sequences at every real step,
the actor-critic learns a policy and a value on [z, h] from imagined trajectories (Dreamer,
https://arxiv.org/abs/1912.01603; DreamerV3, https://arxiv.org/abs/2301.04104). One training step:

    N start states drawn from a pool of real ones (the pool `wm evolve` scores controllers from)
    -> U imagined steps: the actor samples a_t from pi(. | [z_t, h_t]), the dream's own step
       (`worldmodel.dream.rollout.dream_step`, with the dream's latent noise, prior samples and disagreement penalty)
       gives r_{t+1}, the continue probability c_{t+1} and the next state
    -> lambda-returns on the slow target critic's values v:
           R_U = v(s_U),   R_t = r_{t+1} + discount * c_{t+1} * ((1 - lambda) v(s_{t+1}) + lambda R_{t+1})
    -> critic: regressed to R_t in symlog space (DreamerV3's squashing, so that returns of 1 and of 100 both fit)
    -> actor:  discrete, REINFORCE with the target critic as baseline, advantage (R_t - v(s_t)) / scale;
               continuous, backpropagation of R_t / scale through the dream's dynamics into the action (Dreamer's
               analytic gradient: the model is differentiable, and a policy gradient through a 1-D Box is far noisier)
               plus an entropy bonus, weighted by `entropy`
    -> the target critic follows the critic by an EMA of rate `target_rate`.

Each step t of a trajectory counts with the probability that it is reached alive, prod_{s<=t} c_s (the dream's
'expected' continuation): imagination never ends at random, it weighs what follows a predicted termination away.
`scale` is DreamerV3's return normalisation: max(1, S) with S an EMA of the 95th minus the 5th percentile of the
returns, so the entropy weight means the same on every task and small returns are not blown up.

Choices:
- Actions: a discrete space's actor is categorical over n logits (the model sees the one-hot sample); a Box's is a
  Gaussian squashed by tanh onto the bounds, as the controllers map their outputs. Its entropy term is the Gaussian's
  before the squash (a bonus on the spread; tanh's correction would need a sample per state). Acting in the real env
  takes the mode: argmax, or the squashed mean.
- Randomness: every draw (start states, action samples, prior samples, latent noise) comes from the learner's own
  torch.Generator on the CPU, in a fixed order, and its state is in `state_dict`, with both networks, the target
  critic, both optimisers and the return scale: a resumed training continues bit for bit.
- Non-finite loss or gradient: the step takes no optimiser step and no EMA update (`StepResult.skipped`); parameters
  that an update made non-finite raise FloatingPointError before anything can save them.
- The world model is frozen while a step trains (`frozen_parameters`): gradients only reach it on their way to the
  actor's action, and its own flags come back after the step (`wm cycle` trains the same model between imaginations).

Written by hand: Dreamer's actor-critic is a few tensor operations, and the libraries that ship it bind it to their
own world models.

Letters (declared in `worldmodel`): N start states of a step (imagined trajectories), U imagined steps, Q start
states in the pool, D latent, X = D + hidden_dim what the actor and critic see, A action dims (n logits when
discrete).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agents.agent import ModelAgent, action_kind
from worldmodel.dream.rollout import DreamSettings, DreamState, draw_noise, dream_step, penalty
from worldmodel.dynamics.world_model import WorldModel, symlog

LOG_STD_BOUNDS = (-5.0, 2.0)
"""The continuous actor's log std before the squash is clamped here (a collapsed or exploded spread could not come
back)."""


@dataclass(frozen=True)
class ActorCriticSettings:
    """How the actor-critic learns (plain numbers)."""

    horizon: int = 15
    """Imagined steps U from each start state."""
    starts: int = 256
    """Start states N (imagined trajectories) per training step."""
    discount: float = 0.99
    """Discount of the reward one step ahead (times the continue probability)."""
    return_lambda: float = 0.95
    """lambda of the lambda-returns: 0 bootstraps from the next value, 1 sums the imagined rewards to the horizon."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic."""
    width: int = 128
    """Hidden width of the actor's and the critic's MLPs."""
    layers: int = 2
    """Hidden layers of each MLP (Linear, LayerNorm, SiLU)."""
    entropy: float = 3e-3
    """Weight of the actor's entropy bonus, in units of normalised return."""
    target_rate: float = 0.02
    """EMA rate of the target critic towards the critic, per step."""
    grad_clip: float = 100.0
    """Gradient norm clip of each network (0: none)."""
    min_std: float = 0.1
    """Floor of the continuous actor's std before the squash."""
    return_decay: float = 0.99
    """Decay of the EMA of the returns' 5th-95th percentile range (the return scale)."""
    seed: int = 0
    """Seed of the networks' initialisation and of the learner's generator."""

    def __post_init__(self) -> None:
        for name in ("horizon", "starts", "width", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        for name in ("return_lambda", "target_rate", "return_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("actor_lr", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("entropy", "grad_clip", "min_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def network(in_dim: int, width: int, layers: int, out_dim: int) -> nn.Sequential:
    """An MLP of `layers` (Linear, LayerNorm, SiLU) blocks and a zero-initialised output layer: a new actor is
    uniform (or centred) and a new critic says 0, as in DreamerV3."""
    blocks: list[nn.Module] = []
    for index in range(layers):
        blocks += [nn.Linear(in_dim if index == 0 else width, width), nn.LayerNorm(width), nn.SiLU()]
    output = nn.Linear(width, out_dim)
    nn.init.zeros_(output.weight)
    nn.init.zeros_(output.bias)
    return nn.Sequential(*blocks, output)


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `symlog`: sign(x) (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def lambda_returns(
    rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, discount: float, return_lambda: float
) -> torch.Tensor:
    """TD(lambda) returns of imagined trajectories, bootstrapped from the value at the horizon.

    Args:
        rewards: (N, U) r_{t+1}, received on arriving at step t + 1.
        continues: (N, U) c_{t+1}, the probability that the episode goes on after arriving there.
        values: (N, U + 1) v(s_t) for t = 0..U.
    Returns:
        (N, U) R_t = r_{t+1} + discount c_{t+1} ((1 - lambda) v(s_{t+1}) + lambda R_{t+1}), with R_U = v(s_U).
    """
    returns, following = [], values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        bootstrap = (1 - return_lambda) * values[:, t + 1] + return_lambda * following
        following = rewards[:, t] + discount * continues[:, t] * bootstrap
        returns.append(following)
    return torch.stack(returns[::-1], dim=1)


class Imagined(NamedTuple):
    """Imagined trajectories from N start states (rows), U steps each."""

    features: torch.Tensor
    """(N, U + 1, X) [z_t, h_t] for t = 0..U (the start state first)."""
    actions: torch.Tensor
    """(N, U, A) the model action vectors taken at t = 0..U-1 (one-hot when discrete)."""
    rewards: torch.Tensor
    """(N, U) r_{t+1} minus the dream's disagreement penalty."""
    continues: torch.Tensor
    """(N, U) c_{t+1}."""


class StepResult(NamedTuple):
    """What one training step did."""

    skipped: bool
    """The loss or a gradient was not finite: no optimiser step and no EMA update were taken."""
    metrics: dict[str, float]
    """loss/actor, loss/critic and the imagination's figures (dream/...), for the log."""


@contextlib.contextmanager
def frozen_parameters(model: WorldModel) -> Iterator[None]:
    """The model's parameters take no gradient inside the block and get their own flags back after it: gradients
    reach the model only on their way to the actor's action, and a world model that `wm cycle` trains again between
    two imaginations must still learn."""
    parameters = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags, strict=True):
            parameter.requires_grad_(flag)


class ActorCritic:
    """Dreamer's actor-critic on the world model's [z, h], trained on imagined trajectories of its dream.

    Args:
        model: the world model to imagine in (frozen while a step trains); `step`, `reward`, `cont` and, with a
            disagreement penalty, `disagreement` are used.
        action_space: the env's gymnasium action space: Discrete(n), or a 1-D Box with finite bounds.
        settings: how to learn.
        dream: the dream's settings: its latent noise and disagreement penalty apply to imagination too (its horizon
            and how its rollouts end do not: imagination runs `settings.horizon` steps, weighted by continuation).
        device: where the networks live (the model's and the start states' device).
    """

    def __init__(
        self,
        model: WorldModel,
        action_space: spaces.Space,
        settings: ActorCriticSettings,
        dream: DreamSettings | None = None,
        device: torch.device | str = "cpu",
    ):
        self.discrete, self.action_dim, self.start = action_kind(action_space, model, "the actor-critic")
        self.model, self.settings, self.device = model, settings, torch.device(device)
        self.dream = dataclasses.replace(dream or DreamSettings(), horizon=settings.horizon, cont_mode="expected")
        self.in_dim = model.latent_dim + model.hidden_dim
        if not self.discrete:
            self.low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)
            self.high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)
        # The networks' initialisation draws from torch's global generator: seeded here, then put back.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            outputs = self.action_dim if self.discrete else 2 * self.action_dim  # logits, or mean and log std
            self.actor = network(self.in_dim, settings.width, settings.layers, outputs).to(self.device)
            self.critic = network(self.in_dim, settings.width, settings.layers, 1).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=settings.actor_lr, eps=1e-5)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=settings.critic_lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.return_scale = torch.zeros(())  # the EMA of the 5th-95th percentile range; 0 until the first step
        self.steps = 0

    def describe(self) -> dict:
        """Plain facts that fix the networks' shapes, to store beside them and compare on load."""
        settings = self.settings
        return {
            "in_dim": self.in_dim,
            "action_dim": self.action_dim,
            "discrete": self.discrete,
            "width": settings.width,
            "layers": settings.layers,
        }

    # ------------------------------------------------------------------ acting

    def action_vectors(self, outputs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The actor's outputs (..., A or 2A) -> model action vectors (..., A): a sample with `noise` (uniforms
        (..., A) for a discrete actor's Gumbel-max draw, standard normals (..., A) for a continuous one), else the
        mode. The continuous sample is differentiable in the outputs (reparameterised)."""
        if self.discrete:
            scores = outputs if noise is None else outputs - torch.log(-torch.log(noise))  # Gumbel-max sampling
            return nn.functional.one_hot(scores.argmax(dim=-1), self.action_dim).to(outputs.dtype)
        mean, log_std = outputs.chunk(2, dim=-1)
        if noise is not None:
            mean = mean + self.std(log_std) * noise
        return self.low + (torch.tanh(mean) + 1) * 0.5 * (self.high - self.low)

    def std(self, log_std: torch.Tensor) -> torch.Tensor:
        """The continuous actor's std before the squash, at least `min_std`."""
        return log_std.clamp(*LOG_STD_BOUNDS).exp() + self.settings.min_std

    @torch.no_grad()
    def act(self, features: torch.Tensor) -> torch.Tensor:
        """The actor's mode on [z, h] (N, X) -> model action vectors (N, A): what it does in the real env."""
        return self.action_vectors(self.actor(features.to(self.device, torch.float32))).to(features.dtype)

    def value(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """The critic's (or the target critic's) value of [z, h] (..., X) -> (...)."""
        critic = self.target_critic if target else self.critic
        return symexp(critic(features).squeeze(-1))

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """World-model action vectors (..., A) -> what the env takes: (...,) ints, or (..., A) float32."""
        if self.discrete:
            return actions.argmax(dim=-1).cpu().numpy().astype(np.int64) + self.start
        return actions.float().cpu().numpy()

    # ------------------------------------------------------------------ learning

    def imagine(self, start: DreamState) -> Imagined:
        """Roll the actor's samples forward `horizon` dream steps from `start` (N rows), drawing from the learner's
        generator. A continuous actor's trajectory keeps its graph (the actor learns through the dynamics); a
        discrete one's is built without gradients (REINFORCE needs only the log-probabilities, recomputed after)."""
        rows, horizon = start.latent.shape[0], self.settings.horizon
        noise = draw_noise(rows, self.dream, self.model.latent_dim, self.generator, prior=self.model.samples_prior)
        if self.discrete:  # uniforms in (0, 1): Gumbel-max needs log(-log(u)) finite
            draws = torch.rand(rows, horizon, self.action_dim, generator=self.generator).clamp(1e-6, 1 - 1e-6)
        else:
            draws = torch.randn(rows, horizon, self.action_dim, generator=self.generator)
        noise = noise._replace(**{key: None if v is None else v.to(self.device) for key, v in noise._asdict().items()})
        draws = draws.to(self.device)
        with torch.set_grad_enabled(not self.discrete):
            state, features, actions, rewards, continues = start, [start.observation()], [], [], []
            for t in range(horizon):
                action = self.action_vectors(self.actor(features[-1].float()), draws[:, t]).to(start.latent.dtype)
                latent_noise = None if noise.latent is None else self.dream.latent_noise * noise.latent[:, t]
                prior_noise = None if noise.prior is None else noise.prior[:, t]
                result = dream_step(
                    self.model, state, action, latent_noise, self.dream.uses_disagreement, prior_noise=prior_noise
                )
                state = result.state
                features.append(state.observation())
                actions.append(action)
                rewards.append(result.reward - penalty(result, self.dream))
                continues.append(result.cont)
        return Imagined(
            features=torch.stack(features, dim=1).float(),  # U + 1 of (N, X) -> (N, U + 1, X)
            actions=torch.stack(actions, dim=1).float(),  # U of (N, A) -> (N, U, A)
            rewards=torch.stack(rewards, dim=1).float(),  # U of (N,) -> (N, U)
            continues=torch.stack(continues, dim=1).float(),
        )

    def train_step(self, pool: DreamState) -> StepResult:
        """One step: draw `starts` states from `pool` (Q rows), imagine, update the critic, the actor, the return
        scale and the target critic; the world model is frozen meanwhile (`frozen_parameters`)."""
        with frozen_parameters(self.model):
            return self._train_step(pool)

    def _train_step(self, pool: DreamState) -> StepResult:
        settings = self.settings
        index = torch.randint(0, pool.latent.shape[0], (settings.starts,), generator=self.generator)  # (N,)
        imagined = self.imagine(pool.select(index.to(pool.latent.device)))
        values = self.value(imagined.features, target=True)  # (N, U + 1); grad reaches the features only
        returns = lambda_returns(
            imagined.rewards, imagined.continues, values, settings.discount, settings.return_lambda
        )  # (N, U)
        # Step t counts with the chance that it is reached alive: the continue probabilities before it.
        reached = torch.cat([torch.ones_like(imagined.continues[:, :1]), imagined.continues[:, :-1]], dim=1)
        weight = reached.cumprod(dim=1).detach()  # (N, U)
        spread = self._spread(returns.detach())
        scale = max(1.0, spread)
        features = imagined.features[:, :-1].detach()  # (N, U, X) the states the actor acted in
        outputs = self.actor(features)  # (N, U, A or 2A)
        if self.discrete:
            log_probs = torch.log_softmax(outputs, dim=-1)  # (N, U, A)
            chosen = (log_probs * imagined.actions).sum(dim=-1)  # (N, U) log pi(a_t | s_t)
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
            advantage = ((returns - values[:, :-1]) / scale).detach()
            objective = chosen * advantage + settings.entropy * entropy
        else:
            # The Gaussian's entropy before the squash, per action dim summed (up to a constant).
            entropy = torch.log(self.std(outputs.chunk(2, dim=-1)[1])).sum(dim=-1)  # (N, U)
            objective = returns / scale + settings.entropy * entropy
        actor_loss = -(weight * objective).mean()
        prediction = self.critic(features).squeeze(-1)  # (N, U) in symlog space
        critic_loss = (weight * 0.5 * (prediction - symlog(returns.detach())).pow(2)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        metrics = {
            "loss/actor": actor_loss.item(),
            "loss/critic": critic_loss.item(),
            "dream/return_mean": returns[:, 0].mean().item(),
            "dream/value_mean": values[:, 0].mean().item(),
            "dream/reward_mean": imagined.rewards.mean().item(),
            "dream/continue_mean": imagined.continues.mean().item(),
            "dream/entropy": entropy.mean().item(),
            "dream/return_scale": scale,
        }
        if not (torch.isfinite(actor_loss) and torch.isfinite(critic_loss)):
            return StepResult(True, metrics)
        (actor_loss + critic_loss).backward()  # the critic's loss sees detached features: the two graphs are apart
        clip = settings.grad_clip if settings.grad_clip > 0 else float("inf")
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), clip)
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), clip)
        metrics.update({"loss/actor_grad_norm": actor_norm.item(), "loss/critic_grad_norm": critic_norm.item()})
        if not (torch.isfinite(actor_norm) and torch.isfinite(critic_norm)):
            return StepResult(True, metrics)
        self.actor_optimizer.step()
        self.critic_optimizer.step()
        for net in (self.actor, self.critic):
            if not torch.isfinite(nn.utils.get_total_norm([p.detach() for p in net.parameters()])):
                raise FloatingPointError(
                    "an actor-critic update made the parameters non-finite (a learning rate too large?); stopping "
                    "before anything saves them"
                )
        with torch.no_grad():
            for target, online in zip(self.target_critic.parameters(), self.critic.parameters(), strict=True):
                target.lerp_(online, settings.target_rate)
        self.return_scale = torch.tensor(spread, dtype=torch.float32)
        self.steps += 1
        return StepResult(False, metrics)

    def _spread(self, returns: torch.Tensor) -> float:
        """The EMA of the returns' 5th-95th percentile range after this step's `returns` (N, U): the first step takes
        their range as it is."""
        low, high = torch.quantile(returns.flatten(), torch.tensor([0.05, 0.95], device=returns.device))
        spread = (high - low).item()
        if self.steps == 0:
            return spread
        decay = self.settings.return_decay
        return decay * self.return_scale.item() + (1 - decay) * spread

    # ------------------------------------------------------------------ saving

    def state_dict(self) -> dict:
        """Everything a resumed training needs, as plain tensors and numbers: the networks, the target critic, both
        optimisers, the return scale, the step count and the generator's state."""
        return {
            "describe": self.describe(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "return_scale": self.return_scale.clone(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; raises ValueError when it was saved by an actor-critic of other shapes."""
        if state.get("describe") != self.describe():
            raise ValueError(f"the actor-critic state is for {state.get('describe')}, this one is {self.describe()}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.return_scale = state["return_scale"].detach().to("cpu", torch.float32).clone()
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"].to("cpu", torch.uint8).clone())


class ActorCriticAgent(ModelAgent):
    """The actor acting through its world model in N real sub-envs (`ModelAgent`: `LatentAgent`'s call shape and
    filter), taking the actor's mode at each step's state.

    Args:
        learner: the trained actor-critic (its world model is the one acted through).
        num_envs: N.
        exploration: noise on the actor's actions, as a cycle's collection adds it (`agents.agent.explore`).
        seed: seed of the exploration noise.
    """

    def __init__(self, learner: ActorCritic, num_envs: int, exploration: float = 0.0, seed: int = 0):
        bounds = None if learner.discrete else (learner.low, learner.high)
        super().__init__(learner.model, num_envs, bounds, exploration, seed)
        self.learner = learner

    def choose_actions(self, hidden: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.learner.act(DreamState(hidden, latent).observation())  # (N, A)

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        return self.learner.env_actions(action)
