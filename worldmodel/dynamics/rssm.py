"""The stochastic world model: a recurrent state-space model (PlaNet, https://arxiv.org/abs/1811.04551; Dreamer).

z is drawn from a posterior q(z_t | h_t, e_t) that filters the frame's embedding e_t with the history, and the
dynamics give a prior p(z_t | h_t) that the dream samples. It learns by predicting the frozen encoder's features of
each frame from [z_t, h_t] (a JEPA target: the frozen encoder is its own EMA target; nothing is reconstructed in
pixels), with a KL term that pulls the prior towards the posterior, and the reward and continue heads on the
posterior states. A frame does not show velocities; this model filters them, and its dream samples the spread it
cannot predict.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics.world_model import (
    BatchShard,
    WorldModel,
    WorldModelBatch,
    masked_mean,
    mlp,
    require,
    restart_at_first,
)

MIN_STD = 0.1
"""Smallest std of the prior and posterior (softplus + this): keeps the KL finite."""


class Gaussian(NamedTuple):
    """A diagonal Gaussian over z: mean and std, each (..., D)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_output(cls, output: torch.Tensor) -> Gaussian:
        """A head's output (..., 2D) -> the Gaussian, std = softplus + MIN_STD."""
        mean, raw = output.chunk(2, dim=-1)
        return cls(mean, F.softplus(raw) + MIN_STD)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """mean + std * noise, noise standard normal (..., D)."""
        return self.mean + self.std * noise

    def detach(self) -> Gaussian:
        """The same Gaussian, cut from the graph."""
        return Gaussian(self.mean.detach(), self.std.detach())


def gaussian_kl(p: Gaussian, q: Gaussian) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension: (..., D) -> (...)."""
    return (torch.log(q.std / p.std) + (p.std.pow(2) + (p.mean - q.mean).pow(2)) / (2 * q.std.pow(2)) - 0.5).sum(-1)


class RSSMWorldModel(WorldModel):
    """The stochastic world model; its own verbs beside the interface's: `transition` (h_t and the prior), `prior`,
    `posterior` and `filter` (the posterior along windows of embeddings). `encode` gives the frame's embedding
    (features -> mlp_dim), which the posterior reads; `latent_head` is the prior.

    Args (beside `WorldModel`'s):
        freeze_encoder: must be True: the frozen encoder's features are the prediction targets.
        free_nats: the KL counts only above this many nats per step (Dreamer's free bits).
        kl_balance: share of the KL's gradient that moves the prior towards the posterior; the rest moves the
            posterior towards the prior (DreamerV2's KL balancing).
    """

    latent = "stochastic"
    frame_latents = False
    samples_prior = True

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        latent_dim: int = 128,
        hidden_dim: int = 256,
        mlp_dim: int = 256,
        ensemble_size: int = 5,
        vit_size: str = "mini",
        image_size: int = 64,
        patch_size: int = 8,
        freeze_encoder: bool = True,
        input_blur: float = 0.0,
        pooling: str = "mean",
        reward_loss: str = "mse",
        free_nats: float = 1.0,
        kl_balance: float = 0.8,
    ):
        self.check_options(**{key: value for key, value in locals().items() if key in self.keywords()})
        super().__init__(
            obs_shape,
            action_dim,
            latent_dim=latent_dim,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            ensemble_size=ensemble_size,
            vit_size=vit_size,
            image_size=image_size,
            patch_size=patch_size,
            freeze_encoder=freeze_encoder,
            input_blur=input_blur,
            pooling=pooling,
            reward_loss=reward_loss,
        )
        self.free_nats, self.kl_balance = float(free_nats), float(kl_balance)
        self.projection = mlp(self.feature_dim, mlp_dim, mlp_dim)  # the frame's embedding e_t
        self._add_dynamics(2 * latent_dim)  # the prior's mean and raw std
        self.posterior_head = mlp(hidden_dim + mlp_dim, mlp_dim, 2 * latent_dim)
        width = 2 * mlp_dim
        self.feature_head = nn.Sequential(
            nn.Linear(hidden_dim + latent_dim, width), nn.LayerNorm(width), nn.SiLU(),
            nn.Linear(width, width), nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, self.feature_dim),
        )  # fmt: skip
        self._add_heads(ensemble_size)

    @classmethod
    def _check(cls, options: dict[str, Any]) -> None:
        super()._check(options)
        require(
            bool(options["freeze_encoder"]),
            "freeze_encoder",
            "the stochastic latent predicts the frozen encoder's features: it must be True, got "
            f"{options['freeze_encoder']}",
        )
        require(options["free_nats"] >= 0, "free_nats", f"must be >= 0, got {options['free_nats']}")
        require(0 <= options["kl_balance"] <= 1, "kl_balance", f"must be in [0, 1], got {options['kl_balance']}")

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """{"latent", "reward", "cont", "ensemble", "kl"}."""
        return ("latent", "reward", "cont", "ensemble", "kl")

    def targets(self, obs: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """None: a stochastic latent depends on the history, not one frame (`frame_latents` is False)."""
        raise ValueError("a stochastic model's latents depend on the history, not one frame: use real_states")

    # ------------------------------------------------------------------ dynamics

    def transition(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, Gaussian]:
        """h_t = f(h_{t-1}, z_{t-1}, a_t) and the prior p(z_t | h_t) (B, D)."""
        h_next = self.recur(h, z, action)
        return h_next, self.prior(h_next)

    def prior(self, h: torch.Tensor) -> Gaussian:
        """p(z_t | h_t): h (..., hidden_dim) -> Gaussian (..., D)."""
        return Gaussian.from_output(self.latent_head(h))

    def posterior(self, h: torch.Tensor, embedding: torch.Tensor) -> Gaussian:
        """q(z_t | h_t, e_t): h (..., hidden_dim), e = encode(obs) (..., mlp_dim) -> Gaussian (..., D)."""
        return Gaussian.from_output(self.posterior_head(torch.cat([h, embedding], dim=-1)))

    def step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, prior_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the dynamics: h_t = f(h_{t-1}, z_{t-1}, a_t), ẑ_t from the prior p(z_t | h_t).

        Args:
            h: (B, hidden_dim) h_{t-1}; z: (B, D) z_{t-1} (real or predicted); action: (B, A) a_t.
            prior_noise: (B, D) standard normal: ẑ_t is the prior's sample with it (its mean when None).
        Returns:
            h_next (B, hidden_dim) and z_pred (B, D).
        """
        h_next, prior = self.transition(h, z, action)
        return h_next, prior.mean if prior_noise is None else prior.sample(prior_noise)

    def filter_step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of acting in the real env: h_t from (h_{t-1}, z_{t-1}, a_t), then z_t the posterior's mean.

        Args:
            h, z, action: as in `step`; embedding: `encode(obs_t)` (B, mlp_dim).
        Returns:
            h_t (B, hidden_dim) and z_t (B, D).
        """
        h_next = self.recur(h, z, action)  # the prior is not needed: the frame gives z_t
        return h_next, self.posterior(h_next, embedding).mean

    def filter(
        self,
        embeddings: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Gaussian, Gaussian]:
        """Along real windows: h_t from (h_{t-1}, z_{t-1}, a_t), then z_t from the posterior.

        Args:
            embeddings: (B, T, mlp_dim) `encode` of every step; action: (B, T, A); is_first: (B, T) bool (h and z
                restart from zeros there).
            noise: (B, T, D) standard normal: z_t is the posterior's sample with it; None: its mean.
        Returns:
            hidden (B, T, hidden_dim), z (B, T, D), and the prior and posterior of every step, (B, T, D) each.
        """
        B, T, _ = embeddings.shape
        start = self.initial_state(B)
        h, z = start, embeddings.new_zeros(B, self.latent_dim)
        hidden, latents, posteriors = [], [], []
        for t in range(T):
            h, z, a = restart_at_first(is_first[:, t, None], start, h, z, action[:, t])
            h = self.recur(h, z, a)
            posterior = self.posterior(h, embeddings[:, t])
            z = posterior.mean if noise is None else posterior.sample(noise[:, t])
            hidden.append(h)
            latents.append(z)
            posteriors.append(posterior)
        hidden = torch.stack(hidden, dim=1)  # (B, T, hidden_dim)
        # Nothing in the loop reads the prior, so it is taken for every step at once: one pass of its head, not T.
        posterior = Gaussian(torch.stack([g.mean for g in posteriors], 1), torch.stack([g.std for g in posteriors], 1))
        return hidden, torch.stack(latents, dim=1), self.prior(hidden), posterior

    def real_states(self, batch: WorldModelBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The states a controller sees along real windows: z the posterior's means (`filter`), and the latents to
        predict z itself, detached. Returns hidden (B, T, hidden_dim), z (B, T, D), targets (B, T, D)."""
        embeddings = self.encode(batch.obs, features=batch.features)
        hidden, z, _, _ = self.filter(embeddings, batch.action, batch.is_first)
        return hidden, z, z.detach()

    # ------------------------------------------------------------------ training

    def loss(
        self,
        batch: WorldModelBatch,
        horizon: int,
        burn_in: int = 0,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> dict[str, torch.Tensor]:
        """The losses at every step of the windows, along posterior samples (`filter`); horizon and burn_in do not
        apply (they are checked as `WorldModel.loss` says):

        - "latent": predict the frame's standardised frozen features from [h_t, z_t] (half the squared error,
          summed over features: a unit-variance Gaussian's negative log-likelihood);
        - "kl": KL(posterior || prior) per step, each direction at least `free_nats`, balanced by `kl_balance`;
        - "reward" (`reward_error`: MSE or two-hot) and "cont" (BCE) on [h_t, z_t];
        - "ensemble": each member regresses the posterior's mean from the detached h_t (disagreement only).

        The posterior's noise is drawn from `generator` (the global generator when None) for the whole batch, and
        a `shard` takes its own rows of it: every process holds the same generator, so under torchrun each row gets
        the noise it gets in one process.
        """
        self._check_loss_arguments(batch, horizon, burn_in)
        features = batch.features if batch.features is not None else self.encode_features(batch.obs)
        if batch.features is not None:
            self._check_features(features)
        target = self._standardized(features).detach()  # (B, T, F)
        B, T = batch.is_first.shape
        shares = shard.world_size if shard is not None else 1
        noise = torch.randn(shares * B, T, self.latent_dim, generator=generator)  # (W*B, T, D): the whole batch's
        own = shard.rank * B if shard is not None else 0
        noise = noise[own : own + B].to(target)  # (B, T, D)
        hidden, z, prior, posterior = self.filter(self.projection(target), batch.action, batch.is_first, noise)
        state = torch.cat([hidden, z], dim=-1)  # (B, T, hidden_dim + D)
        losses = {"latent": masked_mean(0.5 * (self.feature_head(state) - target).pow(2).sum(-1), None, shard)}
        kl_prior = gaussian_kl(posterior.detach(), prior).clamp(min=self.free_nats)  # (B, T): moves the prior
        kl_posterior = gaussian_kl(posterior, prior.detach()).clamp(min=self.free_nats)  # moves the posterior
        losses["kl"] = masked_mean(self.kl_balance * kl_prior + (1 - self.kl_balance) * kl_posterior, None, shard)
        losses["reward"] = masked_mean(self.reward_error(hidden, z, batch.reward), None, shard)
        cont = F.binary_cross_entropy_with_logits(self.cont(hidden, z), batch.cont, reduction="none")
        losses["cont"] = masked_mean(cont, None, shard)
        members = self.ensemble(hidden.detach().reshape(B * T, -1))  # (K, B*T, D)
        ensemble_error = (members - posterior.mean.detach().reshape(B * T, -1)).pow(2).mean(dim=(0, 2))  # (B*T,)
        losses["ensemble"] = masked_mean(ensemble_error, None, shard)
        return losses
