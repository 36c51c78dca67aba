"""The deterministic world model: the JEPA predictor. z is the encoder's reading of one frame (a projection of its
features), and the dynamics predict the next z open loop.

Two collapse guards (`collapse_guard`): "ema" keeps an exponential-moving-average copy of the encoder and
projection whose latents are the stop-gradient targets (BYOL, https://arxiv.org/abs/2006.07733; I-JEPA,
https://arxiv.org/abs/2301.08243); "sigreg" keeps no target network, uses the online latents detached as
targets and adds SIGReg, which pulls the batch of latents towards N(0, I) (LeJEPA,
https://arxiv.org/abs/2511.08544; LeWorldModel trains a JEPA world model end-to-end from pixels this way).

A frame does not show velocities: this model must infer them from how its own latents change, and its dream drifts
under a good controller (docs/world-model.md); the stochastic model (`worldmodel.dynamics.rssm`) filters them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics.sigreg import sigreg
from worldmodel.dynamics.world_model import (
    BatchShard,
    WorldModel,
    WorldModelBatch,
    masked_mean,
    require,
    restart_at_first,
    warm_mask,
)

COLLAPSE_GUARDS: tuple[str, ...] = ("ema", "sigreg")


class JEPAWorldModel(WorldModel):
    """The deterministic JEPA world model; its own verbs beside the interface's: `latents` (online and target z of
    a batch) and `observe` (the teacher-forced pass over windows of real latents).

    Args (beside `WorldModel`'s):
        collapse_guard: "ema" (EMA target network, stop-gradient targets) or "sigreg" (no target network;
            detached online targets plus a SIGReg loss).
        sigreg_directions: random 1-D projections per SIGReg call ("sigreg" only).
        sigreg_points: grid points of SIGReg's Epps-Pulley integral ("sigreg" only).
    With `freeze_encoder` only the projection to z learns of the encoder.
    """

    latent = "deterministic"
    frame_latents = True
    samples_prior = False

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
        freeze_encoder: bool = False,
        input_blur: float = 0.0,
        pooling: str = "mean",
        reward_loss: str = "mse",
        collapse_guard: str = "ema",
        sigreg_directions: int = 256,
        sigreg_points: int = 17,
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
        self.collapse_guard = collapse_guard
        self.sigreg_directions = sigreg_directions
        self.sigreg_points = sigreg_points
        self.projection = nn.Linear(self.feature_dim, latent_dim)
        # The EMA target: a frozen backbone is its own target (its EMA would equal it), so it is shared and
        # precomputed features serve online and target latents alike.
        self.target_backbone: nn.Module | None = None
        self.target_projection: nn.Module | None = None
        if collapse_guard == "ema":
            if not freeze_encoder:
                self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self._add_dynamics(latent_dim)
        self._add_heads(ensemble_size)

    @classmethod
    def _check(cls, options: dict[str, Any]) -> None:
        super()._check(options)
        guard = options["collapse_guard"]
        require(guard in COLLAPSE_GUARDS, "collapse_guard", f"must be one of {COLLAPSE_GUARDS}, got {guard!r}")
        require(
            options["sigreg_directions"] >= 1, "sigreg_directions", f"must be >= 1, got {options['sigreg_directions']}"
        )
        require(options["sigreg_points"] >= 2, "sigreg_points", f"must be >= 2, got {options['sigreg_points']}")

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """{"latent", "reward", "cont", "ensemble"}, and "sigreg" under "sigreg"."""
        keys = ("latent", "reward", "cont", "ensemble")
        return keys + ("sigreg",) if self.collapse_guard == "sigreg" else keys

    # ------------------------------------------------------------------ latents

    @torch.no_grad()
    def targets(self, obs: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """Stop-gradient target latents (*lead, D): the EMA network's under "ema", the online ones under "sigreg"."""
        if self.collapse_guard == "sigreg":
            return self.encode(obs, features=features)
        if features is None:
            if obs is None:
                raise ValueError("targets needs obs or features")
            backbone = self.target_backbone if self.target_backbone is not None else self.backbone
            features = self._backbone_features(backbone, obs)
        else:
            self._check_features(features)
        return self.target_projection(self._standardized(features))

    def latents(self, batch: WorldModelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Online and target latents of a batch: (B, T, D) each; the target is detached."""
        if batch.features is not None:
            online = self.encode(features=batch.features)
            target = online.detach() if self.collapse_guard == "sigreg" else self.targets(features=batch.features)
        else:
            online = self.encode(batch.obs)
            target = online.detach() if self.collapse_guard == "sigreg" else self.targets(batch.obs)
        return online, target

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target projection, projection) and (target backbone, backbone), those there are: none under "sigreg",
        and no backbone pair with a frozen backbone."""
        pairs = [(self.target_projection, self.projection), (self.target_backbone, self.backbone)]
        return [(target, online) for target, online in pairs if target is not None]

    # ------------------------------------------------------------------ dynamics

    def step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, prior_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the dynamics: h_t = f(h_{t-1}, z_{t-1}, a_t), ẑ_t = g(h_t).

        Args:
            h: (B, hidden_dim) h_{t-1}; z: (B, D) z_{t-1} (real or predicted); action: (B, A) a_t.
            prior_noise: ignored (the interface's; this model draws nothing).
        Returns:
            h_next (B, hidden_dim) and z_pred (B, D).
        """
        h_next = self.recur(h, z, action)
        return h_next, self.latent_head(h_next)

    def filter_step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of acting in the real env: h_t from (h_{t-1}, z_{t-1}, a_t), and z_t = `encode(obs_t)` (B, D).

        Returns:
            h_t (B, hidden_dim) and z_t (B, D), the frame's latent.
        """
        return self.recur(h, z, action), embedding  # the prediction of z_t is not needed: the frame gives it

    def observe(
        self,
        latents: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over a window: feed the real z_{t-1}; reset h and z to zeros at is_first.

        Args:
            latents: (B, T, D) real latents; action: (B, T, A); is_first: (B, T) bool.
            initial: (h, z) of the step before step 0, (B, hidden_dim) and (B, D), e.g. the last step of the
                previous window; default the episode-start state (zeros), which is exact when is_first[:, 0].
        Returns:
            hidden (B, T, hidden_dim), h_t for every t; predicted (B, T, D), ẑ_t = g(h_t).
        """
        B, T, _ = latents.shape
        start = self.initial_state(B)
        h, z_prev = (start, torch.zeros_like(latents[:, 0])) if initial is None else initial  # (B, hidden_dim), (B, D)
        hidden = []
        for t in range(T):
            h, z_prev, a = restart_at_first(is_first[:, t, None], start, h, z_prev, action[:, t])
            hidden.append(self.recur(h, z_prev, a))
            h, z_prev = hidden[-1], latents[:, t]
        hidden = torch.stack(hidden, dim=1)  # (B, T, hidden_dim)
        # Teacher forcing feeds the real z back, not ẑ: every step's prediction in one pass of the head, not T.
        return hidden, self.latent_head(hidden)  # (B, T, hidden_dim), (B, T, D)

    def real_states(self, batch: WorldModelBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The states a controller sees along real windows: z the online latents, h from `observe`, and the
        stop-gradient targets. Returns hidden (B, T, hidden_dim), z (B, T, D), targets (B, T, D)."""
        z, targets = self.latents(batch)
        hidden, _ = self.observe(z, batch.action, batch.is_first)
        return hidden, z, targets

    # ------------------------------------------------------------------ training

    def loss(
        self,
        batch: WorldModelBatch,
        horizon: int,
        burn_in: int = 0,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> dict[str, torch.Tensor]:
        """Multi-step training losses of one batch of windows.

        1. Encode every step: online z and stop-gradient targets.
        2. Teacher-forced pass (`observe`) for h_t at every step. A step is "warm" when its h has a history:
           t >= burn_in, or at/after an is_first in the window.
        3. From every warm step s with a successor, unroll open-loop `horizon` steps (`open_loop`), feeding the
           model's own ẑ back in, and compare ẑ_{s+k} with the target latent of step s + k; pairs that would leave
           the window or cross an is_first are not unrolled. Every k counts equally.
        4. Reward (`reward_error`: MSE or two-hot) and continue (BCE on batch.cont, so a truncated end trains
           towards 1) at the warm teacher-forced states (h_t, real z_t) and at every open-loop state (h, ẑ).
        5. Ensemble: each member regresses the target latent from the detached open-loop h (so the ensemble does not
           shape the dynamics).
        6. Under "sigreg": SIGReg of all online latents of the batch (its random directions from `generator`,
           required then); with a `shard`, over all the shares' latents.

        Args and Returns: as `WorldModel.loss`; the keys are `loss_keys`.
        """
        self._check_loss_arguments(batch, horizon, burn_in)
        if self.collapse_guard == "sigreg" and generator is None:
            raise ValueError("collapse_guard='sigreg' needs a generator for SIGReg's random directions")
        B, T = batch.is_first.shape
        z, z_target = self.latents(batch)  # (B, T, D) each
        hidden, _ = self.observe(z, batch.action, batch.is_first)  # (B, T, hidden_dim)
        warm = warm_mask(batch.is_first, burn_in)  # (B, T)
        starts = torch.arange(T - 1, device=z.device)  # (O,) every step with a successor
        roll = self.open_loop(hidden, z, batch.action, batch.is_first, starts, horizon, from_start=warm[:, starts])
        target = roll.at_targets(z_target)  # (N, D), N the pairs unrolled
        losses = {"latent": masked_mean((roll.latent - target).pow(2).mean(dim=-1), None, shard)}

        # Reward and continue: teacher-forced states and open-loop states pooled into one mean.
        reward_error = [
            self.reward_error(hidden, z, batch.reward),  # (B, T)
            self.reward_error(roll.hidden, roll.latent, roll.at_targets(batch.reward)),  # (N,)
        ]
        cont_error = [
            F.binary_cross_entropy_with_logits(self.cont(hidden, z), batch.cont, reduction="none"),
            F.binary_cross_entropy_with_logits(
                self.cont(roll.hidden, roll.latent), roll.at_targets(batch.cont), reduction="none"
            ),
        ]
        mask = torch.cat([warm.flatten(), torch.ones_like(roll.pair, dtype=torch.bool)])  # (B*T + N,)
        losses["reward"] = masked_mean(torch.cat([e.flatten() for e in reward_error]), mask, shard)
        losses["cont"] = masked_mean(torch.cat([e.flatten() for e in cont_error]), mask, shard)

        members = self.ensemble(roll.hidden.detach())  # (N, hidden_dim) -> (K, N, D)
        ensemble_error = (members - target).pow(2).mean(dim=(0, 2))  # (K, N, D) -> (N,)
        losses["ensemble"] = masked_mean(ensemble_error, None, shard)

        if self.collapse_guard == "sigreg":
            flat = z.reshape(B * T, -1)  # (B, T, D) -> (B*T, D): every frame of the batch is one sample
            if shard is not None:  # SIGReg is a statistic of the whole batch: every share's frames
                flat = shard.gather(flat)  # (B*T, D) -> (world_size*B*T, D)
            losses["sigreg"] = sigreg(flat, generator, self.sigreg_directions, self.sigreg_points)
        return losses
