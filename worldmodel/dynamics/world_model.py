"""The JEPA world model: encoder -> latent z, action-conditioned recurrent dynamics, reward / continue heads,
an ensemble of next-latent heads for disagreement, and the multi-step training loss.

Time convention (the episode store's): step t has obs[t]; action[t] led to obs[t] (zeros at is_first);
reward[t] was received on arriving at obs[t]; cont[t] = 0 only when obs[t] is terminal (a truncated end has
is_last but cont = 1). The dynamics follow it:

    h_t = f(h_{t-1}, z_{t-1}, a_t)      (a GRU cell; h and z are reset to zeros at is_first)
    ẑ_t = g(h_t)                        (the predicted latent of obs[t])
    r̂_t = reward(h_t, z_t), ĉ_t = cont(h_t, z_t)

so h_t holds the history up to z_{t-1} and the action that led to obs[t], and [z_t, h_t] is what a
controller sees. Letters: B batch, T time, S open-loop start points, H horizon, K ensemble members,
D latent, F encoder features, A action dims.

Two collapse guards (`collapse_guard`): "ema" keeps an exponential-moving-average copy of the encoder and
projection whose latents are the stop-gradient targets (BYOL, https://arxiv.org/abs/2006.07733; I-JEPA,
https://arxiv.org/abs/2301.08243); "sigreg" keeps no target network, uses the online latents detached as
targets and adds SIGReg, which pulls the batch of latents towards N(0, I) (LeJEPA,
https://arxiv.org/abs/2511.08544; LeWorldModel trains a JEPA world model end-to-end from pixels this way).

Two kinds of latent (`latent`). "deterministic" is the above: z is the encoder's reading of one frame, and the
dynamics predict it. "stochastic" is a recurrent state-space model (PlaNet, https://arxiv.org/abs/1811.04551;
Dreamer): z is drawn from a posterior q(z_t | h_t, e_t) that filters the frame's embedding e_t with the history, and
the dynamics give a prior p(z_t | h_t) that the dream samples. It learns by predicting the frozen encoder's features
of each frame from [z_t, h_t] (a JEPA target: the frozen encoder is its own EMA target; nothing is reconstructed in
pixels), with a KL term that pulls the prior towards the posterior, and the reward and continue heads on the posterior
states. A frame does not show velocities: the deterministic model must infer them from how its own latents change,
and its dream drifts under a good controller (docs/world-model.md); the stochastic one filters them, and its dream
samples the spread it cannot predict.
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics.sigreg import sigreg
from worldmodel.perception.augment import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur, normalize, resize
from worldmodel.perception.vit import GRIDS, POOLINGS, VisionTransformer, pool_tokens

COLLAPSE_GUARDS: tuple[str, ...] = ("ema", "sigreg")
LATENT_KINDS: tuple[str, ...] = ("deterministic", "stochastic")
MIN_STD = 0.1
"""Smallest std of the stochastic model's prior and posterior (softplus + this): keeps the KL finite."""


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


class WorldModelBatch(NamedTuple):
    """A batch of windows as the world model takes it, batch-major, as torch tensors on the model's device.

    Give `obs`, or (with a frozen encoder) `features` precomputed by `WorldModel.encode_features`; when both
    are given `features` is used.
    """

    obs: torch.Tensor | None
    """(B, T, H, W, C) uint8 pixels, channels-last, or (B, T, S) float32 state observations."""
    action: torch.Tensor
    """(B, T, A) float32, the action that led to obs[t] (zeros at is_first; discrete actions one-hot)."""
    reward: torch.Tensor
    """(B, T) float32, received on arriving at obs[t]."""
    cont: torch.Tensor
    """(B, T) float32, 1 - is_terminal (1 at a truncated end)."""
    is_first: torch.Tensor
    """(B, T) bool, True at the first step of an episode."""
    features: torch.Tensor | None = None
    """(B, T, F) float, frozen-encoder features (the episode store's cached latents), or None."""


def batch_from_windows(windows: Any, device: torch.device | str = "cpu", use_features: bool = False) -> WorldModelBatch:
    """Convert a batch of windows with numpy fields (e.g. `envs.store.Windows`) to a WorldModelBatch.

    Args:
        windows: anything with `obs`, `action`, `reward`, `cont`, `is_first` arrays (B, T, ...) and, for
            `use_features`, a `latent` array (B, T, F) of cached frozen-encoder features.
        device: where the tensors go; uint8 pixels travel as uint8 (4x fewer bytes than float).
        use_features: pass the cached features instead of the observations.
    """

    def tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(array).to(device=device, dtype=dtype)

    if use_features:
        if getattr(windows, "latent", None) is None:
            raise ValueError("use_features=True but the windows carry no cached latents (sample with a latent_key)")
        obs, features = None, tensor(windows.latent, torch.float32)
    else:
        obs, features = tensor(windows.obs), None
    return WorldModelBatch(
        obs=obs,
        action=tensor(windows.action, torch.float32),
        reward=tensor(windows.reward, torch.float32),
        cont=tensor(windows.cont, torch.float32),
        is_first=tensor(windows.is_first, torch.bool),
        features=features,
    )


class Imagination(NamedTuple):
    """An open-loop rollout from `WorldModel.imagine`; step i is the state after actions[:, i]."""

    latent: torch.Tensor
    """(B, H, D) predicted latents ẑ."""
    hidden: torch.Tensor
    """(B, H, hidden_dim) recurrent states h."""
    reward: torch.Tensor
    """(B, H) predicted rewards."""
    cont: torch.Tensor
    """(B, H) predicted probabilities of not having terminated."""
    disagreement: torch.Tensor
    """(B, H) variance across ensemble members, averaged over D."""


class OpenLoop(NamedTuple):
    """Open-loop unrolls from many start points of a window at once (see `WorldModel.open_loop`), kept as the
    N pairs (b, s, k) that were unrolled: only those whose target is a real step of the start's episode."""

    latent: torch.Tensor
    """(N, D) predicted latents; pair (b, s, k) predicts step starts[s] + k of window b."""
    hidden: torch.Tensor
    """(N, hidden_dim) recurrent states at the same steps."""
    pair: torch.Tensor
    """(N,) int64 flat index of each pair into (B, S, H)."""
    target_index: torch.Tensor
    """(S, H) int64 time index each prediction is compared with, clamped to T - 1."""
    unrolled: torch.Tensor
    """(B, S, H) bool: the pairs unrolled (`pair` holds their flat indices, ordered by k, then by row)."""

    def at_targets(self, values: torch.Tensor) -> torch.Tensor:
        """Each pair's value at its target step: values (B, T, ...) -> (N, ...)."""
        B, S, H = self.unrolled.shape
        window = torch.div(self.pair, S * H, rounding_mode="floor")  # (N,) b of each pair
        return values[window, self.target_index.flatten()[self.pair % (S * H)]]

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Per-pair values (N, ...) laid out as (B, S, H, ...), zeros at the pairs not unrolled."""
        full = values.new_zeros(self.unrolled.numel(), *values.shape[1:])  # (B*S*H, ...)
        return full.index_copy(0, self.pair, values).reshape(*self.unrolled.shape, *values.shape[1:])


def open_loop_valid(is_first: torch.Tensor, starts: torch.Tensor, horizon: int) -> torch.Tensor:
    """Which (start, k) pairs of a window compare a prediction with a real step of the same episode.

    Pair (s, k), k = 1..horizon, is valid when s + k <= T - 1 and no is_first lies in (s, s + k].

    Args:
        is_first: (B, T) bool.
        starts: (S,) int64 start steps in [0, T).
        horizon: H >= 1.
    Returns:
        (B, S, H) bool.
    """
    T = is_first.shape[1]
    target = starts[:, None] + torch.arange(1, horizon + 1, device=starts.device)  # (S, H)
    episode = is_first.long().cumsum(dim=1)  # (B, T) episode number within the window
    same_episode = episode[:, target.clamp(max=T - 1)] == episode[:, starts, None]  # (B, S, H)
    return same_episode & (target <= T - 1)


def warm_mask(is_first: torch.Tensor, burn_in: int) -> torch.Tensor:
    """Steps whose recurrent state has a usable history: at least `burn_in` steps into the window, or at or
    after an is_first (then h is exact, built from the episode's start).

    Args:
        is_first: (B, T) bool.
    Returns:
        (B, T) bool.
    """
    T = is_first.shape[1]
    after_first = is_first.long().cumsum(dim=1) > 0  # (B, T)
    return after_first | (torch.arange(T, device=is_first.device) >= burn_in)


def restart_at_first(
    first: torch.Tensor, start: torch.Tensor, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's inputs (h, z_{t-1}, a_t), with the rows where `first` (B, 1) restarted: h the episode-start state
    `start`, z and the action zeros (the store keeps zeros as the action that led to a first step)."""
    zeros = torch.zeros_like
    return torch.where(first, start, h), torch.where(first, zeros(z), z), torch.where(first, zeros(action), action)


def combine_losses(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of a loss dict; the keys must match exactly.

    Raises:
        ValueError naming the losses without a weight and the weights without a loss.
    """
    missing, extra = sorted(set(losses) - set(weights)), sorted(set(weights) - set(losses))
    if missing or extra:
        raise ValueError(
            f"loss weights must match the losses key for key: losses without a weight {missing}, "
            f"weights without a loss {extra} (losses are {sorted(losses)})"
        )
    return sum(weights[name] * value for name, value in losses.items())


class BatchShard(Protocol):
    """One process's share of a batch split across processes that average their gradients (DistributedDataParallel;
    `experiments.distributed.Shard` is the real one). Through it `WorldModel.loss` takes its batch-wide means and
    statistics over the whole batch."""

    world_size: int
    """How many processes share the batch (and average their gradients)."""

    rank: int
    """This share's place among them: it holds rows [rank * n, (rank + 1) * n) of the whole batch."""

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over every share of a tensor that needs no gradient (a count)."""
        ...

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every share's rows, (n, ...) -> (world_size * n, ...) in order; differentiable."""
        ...


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None, shard: BatchShard | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` (everywhere when None); 0 (still in the graph) when nothing counts.

    With a `shard`, this share's part of the whole batch's masked mean, times the number of shares: the processes
    average their losses' gradients, and the average of these parts is the whole batch's mean. (The mean of each
    share's own mean would weigh a share with few valid steps as much as one with many.)
    """
    if mask is None:
        total, count = values.sum(), torch.tensor(values.numel(), device=values.device)
    else:
        total, count = torch.where(mask, values, torch.zeros_like(values)).sum(), mask.sum()
    if shard is None:
        return total / count.clamp(min=1)
    return total * shard.world_size / shard.total(count).clamp(min=1)


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)
    )


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): squashes large state values while keeping small ones (DreamerV3,
    https://arxiv.org/abs/2301.04104), so one network fits envs with very different observation scales."""
    return torch.sign(x) * torch.log1p(x.abs())


class Ensemble(nn.Module):
    """K independent two-layer MLPs evaluated as batched matmuls: x (N, in) -> (K, N, out).

    Each member has its own initialisation (as nn.Linear's), so members disagree where training data did not
    pull them together (Plan2Explore, https://arxiv.org/abs/2005.05960).
    """

    def __init__(self, members: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(members, in_dim, hidden_dim))
        self.b1 = nn.Parameter(torch.empty(members, 1, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(members, hidden_dim, out_dim))
        self.b2 = nn.Parameter(torch.empty(members, 1, out_dim))
        for weight, bias, fan_in in ((self.w1, self.b1, in_dim), (self.w2, self.b2, hidden_dim)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("ni,kih->knh", x, self.w1) + self.b1  # (N, in) -> (K, N, hidden)
        hidden = F.silu(F.layer_norm(hidden, hidden.shape[-1:]))
        return torch.einsum("knh,kho->kno", hidden, self.w2) + self.b2  # (K, N, out)


class WorldModel(nn.Module):
    """JEPA world model. Verbs: `encode`, `targets`, `step`, `reward`, `cont`, `ensemble`, `imagine`, `loss`.

    Args:
        obs_shape: one observation: (H, W, C) uint8 pixels (channels-last) or (S,) float state.
        action_dim: A, length of the action vector (discrete actions one-hot).
        latent_dim: D, size of the latent z.
        hidden_dim: size of the recurrent history state h.
        mlp_dim: hidden width of every MLP (state encoder, dynamics input, heads, ensemble members).
        collapse_guard: "ema" (EMA target network, stop-gradient targets) or "sigreg" (no target network;
            detached online targets plus a SIGReg loss).
        ensemble_size: K >= 2 next-latent heads whose disagreement measures model uncertainty.
        vit_size: ViT preset from worldmodel.perception.vit.VIT_SIZES (pixels only).
        image_size: the ViT's input side; frames of another size are resized (pixels only).
        patch_size: the ViT's patch side, dividing image_size (pixels only).
        freeze_encoder: keep the encoder backbone (ViT or state MLP) fixed; only the projection to z learns.
            Then features can be precomputed once and passed in place of obs.
        sigreg_directions: random 1-D projections per SIGReg call ("sigreg" only).
        sigreg_points: grid points of SIGReg's Epps-Pulley integral ("sigreg" only).
        input_blur: Gaussian blur (std in pixels of the ViT's input) applied to frames before the encoder (pixels
            only). A thin object that moves fast, such as Pendulum's rod, covers other pixels in every frame, and the
            features of a frozen random-initialised ViT then change about as much from one frame to the next as
            between any two; blurred, they change smoothly with the object's position.
        pooling: how a frame's patch features become one vector (pixels only): "mean", "mean_std", their mean
            and standard deviation over the patches, or "grid2" / "grid4", the mean of each cell of a 2 x 2 / 4 x 4
            grid over the image (worldmodel.perception.vit.pool_tokens). A frozen random-initialised ViT's mean
            dilutes a small object in the background: a linear probe reads CartPole's pole angle from it with R²
            0.88-0.90 (three random ViTs), from mean and standard deviation with 0.996 (docs/perception.md). A grid
            keeps where things are in the image.
        latent: "deterministic" or "stochastic" (see the module's docstring). The stochastic model needs a frozen
            encoder (its features are the prediction targets); `projection` is then the frame's embedding
            (features -> mlp_dim) and `latent_head` the prior.
        free_nats: the stochastic model's KL counts only above this many nats per step (Dreamer's free bits).
        kl_balance: share of the KL's gradient that moves the prior towards the posterior; the rest moves the
            posterior towards the prior (DreamerV2's KL balancing).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        latent_dim: int = 128,
        hidden_dim: int = 256,
        mlp_dim: int = 256,
        collapse_guard: str = "ema",
        ensemble_size: int = 5,
        vit_size: str = "mini",
        image_size: int = 64,
        patch_size: int = 8,
        freeze_encoder: bool = False,
        sigreg_directions: int = 256,
        sigreg_points: int = 17,
        input_blur: float = 0.0,
        pooling: str = "mean",
        latent: str = "deterministic",
        free_nats: float = 1.0,
        kl_balance: float = 0.8,
    ):
        super().__init__()
        obs_shape = tuple(int(v) for v in obs_shape)
        if len(obs_shape) not in (1, 3):
            raise ValueError(f"obs_shape must be (H, W, C) for pixels or (S,) for state, got {obs_shape}")
        if collapse_guard not in COLLAPSE_GUARDS:
            raise ValueError(f"collapse_guard must be one of {COLLAPSE_GUARDS}, got {collapse_guard!r}")
        if not input_blur >= 0:
            raise ValueError(f"input_blur must be >= 0, got {input_blur}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {pooling!r}")
        if latent not in LATENT_KINDS:
            raise ValueError(f"latent must be one of {LATENT_KINDS}, got {latent!r}")
        if latent == "stochastic" and (not freeze_encoder or collapse_guard != "ema"):
            raise ValueError(
                "latent='stochastic' predicts the frozen encoder's features: it needs freeze_encoder=True and "
                f"collapse_guard='ema', got {freeze_encoder} and {collapse_guard!r}"
            )
        if not (free_nats >= 0 and 0 <= kl_balance <= 1):
            raise ValueError(f"need free_nats >= 0 and kl_balance in [0, 1], got {free_nats} and {kl_balance}")
        if min(action_dim, latent_dim, hidden_dim, mlp_dim, sigreg_directions) < 1 or ensemble_size < 2:
            raise ValueError(
                "action_dim, latent_dim, hidden_dim, mlp_dim, sigreg_directions must be >= 1 and ensemble_size >= 2, "
                f"got {action_dim}, {latent_dim}, {hidden_dim}, {mlp_dim}, {sigreg_directions} and {ensemble_size}"
            )
        self.obs_shape = obs_shape
        self.action_dim = action_dim
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.collapse_guard = collapse_guard
        self.freeze_encoder = freeze_encoder
        self.sigreg_directions = sigreg_directions
        self.sigreg_points = sigreg_points
        self.input_blur = float(input_blur)
        self.pooling = pooling
        self.stochastic = latent == "stochastic"
        self.free_nats, self.kl_balance = float(free_nats), float(kl_balance)
        self.is_pixels = len(obs_shape) == 3

        self.backbone: nn.Module
        if self.is_pixels:
            channels = obs_shape[2]
            if channels % 3:
                raise ValueError(f"pixel observations need RGB channels (a multiple of 3), got {channels}")
            # Frame stacks of RGB frames reuse the ImageNet statistics per frame.
            self._pixel_mean, self._pixel_std = IMAGENET_MEAN * (channels // 3), IMAGENET_STD * (channels // 3)
            self.image_size = image_size
            self.backbone = VisionTransformer(image_size, patch_size, channels, vit_size)
            self.feature_dim = self.backbone.width * POOLINGS[pooling]
            side = image_size // patch_size
            if pooling in GRIDS and side % GRIDS[pooling]:
                raise ValueError(f"pooling {pooling!r} needs a patch grid side it divides, got {side} (image / patch)")
        else:
            self.backbone = nn.Sequential(_mlp(obs_shape[0], mlp_dim, mlp_dim), nn.LayerNorm(mlp_dim), nn.SiLU())
            self.feature_dim = mlp_dim
        if freeze_encoder:
            self.backbone.requires_grad_(False)
        # Per-dimension statistics of the backbone's features, set from training data before training
        # (`set_feature_statistics`; identity until then). A frozen ViT's mean-pooled features differ little
        # between frames of one env (CartPole: a spread of about 0.004 on values of order 1), so without them
        # z is a near-constant offset: its prediction loss vanishes and the collapse metrics see only the offset.
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.register_buffer("feature_statistics_set", torch.tensor(False))
        # Deterministic: the projection to z. Stochastic: the frame's embedding, which the posterior reads.
        self.projection = (
            _mlp(self.feature_dim, mlp_dim, mlp_dim) if self.stochastic else nn.Linear(self.feature_dim, latent_dim)
        )

        # The EMA target: a frozen backbone is its own target (its EMA would equal it), so it is shared and
        # precomputed features serve online and target latents alike. The stochastic model's targets are the
        # frozen features themselves.
        self.target_backbone: nn.Module | None = None
        self.target_projection: nn.Module | None = None
        if collapse_guard == "ema" and not self.stochastic:
            if not freeze_encoder:
                self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)

        self.dynamics_input = nn.Sequential(
            nn.Linear(latent_dim + action_dim, mlp_dim), nn.LayerNorm(mlp_dim), nn.SiLU()
        )
        self.gru = nn.GRUCell(mlp_dim, hidden_dim)
        self.latent_head = _mlp(hidden_dim, mlp_dim, 2 * latent_dim if self.stochastic else latent_dim)
        self.posterior_head: nn.Module | None = None
        self.feature_head: nn.Module | None = None
        if self.stochastic:
            self.posterior_head = _mlp(hidden_dim + mlp_dim, mlp_dim, 2 * latent_dim)
            width = 2 * mlp_dim
            self.feature_head = nn.Sequential(
                nn.Linear(hidden_dim + latent_dim, width), nn.LayerNorm(width), nn.SiLU(),
                nn.Linear(width, width), nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, self.feature_dim),
            )  # fmt: skip
        self.reward_head = _mlp(hidden_dim + latent_dim, mlp_dim, 1)
        self.cont_head = _mlp(hidden_dim + latent_dim, mlp_dim, 1)
        self.ensemble_heads = Ensemble(ensemble_size, hidden_dim, mlp_dim, latent_dim)

    # ------------------------------------------------------------------ encoder

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The keys `loss` returns, hence the keys a weights dict must have."""
        keys = ("latent", "reward", "cont", "ensemble")
        if self.stochastic:
            return keys + ("kl",)
        return keys + ("sigreg",) if self.collapse_guard == "sigreg" else keys

    def _check_obs(self, obs: torch.Tensor) -> tuple[int, ...]:
        """Validate obs (*lead, *obs_shape) and return the leading shape."""
        n = len(self.obs_shape)
        if obs.ndim <= n or tuple(obs.shape[-n:]) != self.obs_shape:
            raise ValueError(
                f"obs must have shape (..., {', '.join(map(str, self.obs_shape))}), got {tuple(obs.shape)}"
            )
        if self.is_pixels and obs.dtype != torch.uint8:
            raise ValueError(f"pixel observations must be uint8, got {obs.dtype}")
        return tuple(obs.shape[:-n])

    def _backbone_features(self, backbone: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        lead = self._check_obs(obs)
        if self.is_pixels:
            H, W, C = self.obs_shape
            frames = obs.reshape(-1, H, W, C).permute(0, 3, 1, 2)  # (*lead, H, W, C) -> (N, C, H, W)
            # uint8 -> [0, 1] (resized when the frame size differs from the ViT's) -> ImageNet statistics, exactly
            # as the I-JEPA pretraining evaluates frames (blurred first when input_blur > 0).
            images = gaussian_blur(resize(frames, self.image_size), self.input_blur)
            images = normalize(images, self._pixel_mean, self._pixel_std)
            features = pool_tokens(backbone(images.to(self.gru.weight_hh.dtype)), self.pooling)  # (N, F)
        else:
            states = obs.reshape(-1, self.obs_shape[0]).to(self.gru.weight_hh.dtype)  # (*lead, S) -> (N, S)
            features = backbone(symlog(states))  # (N, F)
        return features.reshape(*lead, self.feature_dim)  # (N, F) -> (*lead, F)

    def encode_features(self, obs: torch.Tensor) -> torch.Tensor:
        """Backbone features before the projection: obs (*lead, *obs_shape) -> (*lead, F).

        With a frozen encoder these can be computed once and cached (WorldModelBatch.features).
        """
        if self.freeze_encoder:
            with torch.no_grad():
                return self._backbone_features(self.backbone, obs)
        return self._backbone_features(self.backbone, obs)

    def _check_features(self, features: torch.Tensor) -> None:
        if not self.freeze_encoder:
            raise ValueError(
                "precomputed features need freeze_encoder=True: a fine-tuned encoder must see the observations"
            )
        if features.shape[-1] != self.feature_dim:
            raise ValueError(f"features must have {self.feature_dim} channels, got shape {tuple(features.shape)}")

    @torch.no_grad()
    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """From now on standardise features per dimension with the mean and std of `features` (*lead, F)."""
        flat = features.reshape(-1, self.feature_dim).float()  # (*lead, F) -> (N, F)
        self.feature_mean.copy_(flat.mean(dim=0))
        self.feature_std.copy_(flat.std(dim=0).clamp_min(1e-6))
        self.feature_statistics_set.fill_(True)

    def _standardized(self, features: torch.Tensor) -> torch.Tensor:
        """(*lead, F) -> (*lead, F) with the statistics of `set_feature_statistics`, in the model's dtype."""
        dtype = self.gru.weight_hh.dtype
        return (features.to(dtype) - self.feature_mean.to(dtype)) / self.feature_std.to(dtype)

    def encode(self, obs: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """Online latents: obs (*lead, *obs_shape) or frozen-encoder features (*lead, F) -> z (*lead, D)."""
        if features is None:
            if obs is None:
                raise ValueError("encode needs obs or features")
            features = self.encode_features(obs)
        else:
            self._check_features(features)
        return self.projection(self._standardized(features))

    @torch.no_grad()
    def targets(self, obs: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """Stop-gradient target latents (*lead, D): the EMA network's under "ema", the online ones under "sigreg"."""
        if self.stochastic:
            raise ValueError("a stochastic model's latents depend on the history, not one frame: use real_states")
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

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, for the backbone (unless frozen) and the
        projection. Does nothing under "sigreg", which has no target network."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        pairs = [(self.target_projection, self.projection), (self.target_backbone, self.backbone)]
        target = [p for t, o in pairs if t is not None for p in t.parameters()]
        online = [p.detach() for t, o in pairs if t is not None for p in o.parameters()]
        if target:
            torch._foreach_mul_(target, momentum)
            torch._foreach_add_(target, online, alpha=1.0 - momentum)

    def load_pretrained_encoder(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load backbone weights (e.g. an I-JEPA target encoder's `state_dict()`) into the online backbone and,
        under "ema" with a trainable backbone, into its target copy too."""
        self.backbone.load_state_dict(state_dict)
        if self.target_backbone is not None:
            self.target_backbone.load_state_dict(state_dict)

    # ------------------------------------------------------------------ dynamics and heads

    def initial_state(self, batch: int) -> torch.Tensor:
        """The history state at an episode's start: zeros (batch, hidden_dim)."""
        weight = self.gru.weight_hh
        return torch.zeros(batch, self.hidden_dim, device=weight.device, dtype=weight.dtype)

    def step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, prior_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the dynamics: h_t = f(h_{t-1}, z_{t-1}, a_t), ẑ_t = g(h_t).

        Args:
            h: (B, hidden_dim) h_{t-1}; z: (B, D) z_{t-1} (real or predicted); action: (B, A) a_t.
            prior_noise: (B, D) standard normal: a stochastic model's ẑ_t is its prior's sample with it (its mean
                when None); a deterministic model ignores it.
        Returns:
            h_next (B, hidden_dim) and z_pred (B, D).
        """
        if self.stochastic:
            h_next, prior = self.transition(h, z, action)
            return h_next, prior.mean if prior_noise is None else prior.sample(prior_noise)
        h_next = self.recur(h, z, action)
        return h_next, self.latent_head(h_next)

    def recur(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The recurrence alone: h_t = f(h_{t-1}, z_{t-1}, a_t), (B, hidden_dim)."""
        return self.gru(self.dynamics_input(torch.cat([z, action], dim=-1)), h)

    def transition(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, Gaussian]:
        """The stochastic model's step: h_t = f(h_{t-1}, z_{t-1}, a_t) and the prior p(z_t | h_t) (B, D)."""
        h_next = self.recur(h, z, action)
        return h_next, self.prior(h_next)

    def prior(self, h: torch.Tensor) -> Gaussian:
        """The stochastic model's p(z_t | h_t): h (..., hidden_dim) -> Gaussian (..., D)."""
        return Gaussian.from_output(self.latent_head(h))

    def posterior(self, h: torch.Tensor, embedding: torch.Tensor) -> Gaussian:
        """The stochastic model's q(z_t | h_t, e_t): h (..., hidden_dim), e = encode(obs) (..., mlp_dim) -> (..., D)."""
        return Gaussian.from_output(self.posterior_head(torch.cat([h, embedding], dim=-1)))

    def filter_step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of acting in the real env: h_t from (h_{t-1}, z_{t-1}, a_t), then z_t from the new frame.

        Args:
            h, z, action: as in `step`; embedding: `encode(obs_t)` (B, D), or (B, mlp_dim) when stochastic.
        Returns:
            h_t (B, hidden_dim) and z_t (B, D): the frame's latent, or the posterior's mean when stochastic.
        """
        h_next = self.recur(h, z, action)  # the prediction of z_t is not needed: the frame gives it
        return h_next, self.posterior(h_next, embedding).mean if self.stochastic else embedding

    def reward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predicted reward of arriving at the step with state h (..., hidden_dim) and latent z (..., D) -> (...)."""
        return self.reward_head(torch.cat([h, z], dim=-1)).squeeze(-1)

    def cont(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logit of "not terminal" at h (..., hidden_dim), z (..., D) -> (...)."""
        return self.cont_head(torch.cat([h, z], dim=-1)).squeeze(-1)

    def ensemble(self, h: torch.Tensor) -> torch.Tensor:
        """Each member's prediction of the latent at the step of h: (B, hidden_dim) -> (K, B, D)."""
        return self.ensemble_heads(h)

    def disagreement(self, h: torch.Tensor) -> torch.Tensor:
        """Variance across ensemble members (population variance), averaged over D: (B, hidden_dim) -> (B,)."""
        members = self.ensemble(h)  # (K, B, D)
        # The same as members.var(dim=0, unbiased=False).mean(-1), which is 5x slower on CPU (a strided reduction
        # over K); this sits in every dream step.
        return (members - members.mean(dim=0)).pow(2).mean(dim=(0, 2))

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
        h, z_prev = (start, torch.zeros_like(latents[:, 0])) if initial is None else initial  # (B, hd), (B, D)
        hidden, predicted = [], []
        for t in range(T):
            h, z_prev, a = restart_at_first(is_first[:, t, None], start, h, z_prev, action[:, t])
            h, z_pred = self.step(h, z_prev, a)
            hidden.append(h)
            predicted.append(z_pred)
            z_prev = latents[:, t]
        return torch.stack(hidden, dim=1), torch.stack(predicted, dim=1)  # (B, T, hidden_dim), (B, T, D)

    def filter(
        self,
        embeddings: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Gaussian, Gaussian]:
        """The stochastic model along real windows: h_t from (h_{t-1}, z_{t-1}, a_t), then z_t from the posterior.

        Args:
            embeddings: (B, T, mlp_dim) `encode` of every step; action: (B, T, A); is_first: (B, T) bool (h and z
                restart from zeros there, as in `observe`).
            noise: (B, T, D) standard normal: z_t is the posterior's sample with it; None: its mean.
        Returns:
            hidden (B, T, hidden_dim), z (B, T, D), and the prior and posterior of every step, (B, T, D) each.
        """
        B, T, _ = embeddings.shape
        start = self.initial_state(B)
        h, z = start, embeddings.new_zeros(B, self.latent_dim)
        hidden, latents, priors, posteriors = [], [], [], []
        for t in range(T):
            h, z, a = restart_at_first(is_first[:, t, None], start, h, z, action[:, t])
            h, prior = self.transition(h, z, a)
            posterior = self.posterior(h, embeddings[:, t])
            z = posterior.mean if noise is None else posterior.sample(noise[:, t])
            hidden.append(h)
            latents.append(z)
            priors.append(prior)
            posteriors.append(posterior)

        def stacked(gaussians: list[Gaussian]) -> Gaussian:
            return Gaussian(torch.stack([g.mean for g in gaussians], 1), torch.stack([g.std for g in gaussians], 1))

        return torch.stack(hidden, dim=1), torch.stack(latents, dim=1), stacked(priors), stacked(posteriors)

    def real_states(self, batch: WorldModelBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The states a controller sees along real windows, teacher-forced, and the latents to predict there.

        Deterministic: z the online latents, the targets the stop-gradient ones, h from `observe`. Stochastic: z the
        posterior's means (`filter`), and the targets z itself, detached.
        Returns:
            hidden (B, T, hidden_dim), z (B, T, D), targets (B, T, D).
        """
        if self.stochastic:
            embeddings = self.encode(batch.obs, features=batch.features)
            hidden, z, _, _ = self.filter(embeddings, batch.action, batch.is_first)
            return hidden, z, z.detach()
        z, targets = self.latents(batch)
        hidden, _ = self.observe(z, batch.action, batch.is_first)
        return hidden, z, targets

    def open_loop(
        self,
        hidden: torch.Tensor,
        latents: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        starts: torch.Tensor,
        horizon: int,
        from_start: torch.Tensor | None = None,
    ) -> OpenLoop:
        """Unroll open-loop from every start point at once, feeding the model's own ẑ back in.

        From start s the state is (hidden[:, s], latents[:, s]); step k applies action[:, s + k] and predicts
        step s + k. Only the pairs whose target is a real step of the start's episode (`open_loop_valid`) are
        unrolled: a row leaves the batch at the window's end or the next is_first. With short episodes that is
        about half of all (s, k) pairs (CartPole's random play), so the unroll and everything scored on it cost
        half as much.

        Args:
            hidden: (B, T, hidden_dim) from `observe`; latents: (B, T, D) real latents; action: (B, T, A);
            is_first: (B, T) bool; starts: (S,) int64 in [0, T); horizon: H >= 1.
            from_start: (B, S) bool, the start points to unroll from (e.g. the warm ones); default all.
        """
        B, T, _ = latents.shape
        S = len(starts)
        target_index = (starts[:, None] + torch.arange(1, horizon + 1, device=starts.device)).clamp(max=T - 1)
        unrolled = open_loop_valid(is_first, starts, horizon)  # (B, S, H), and once False stays False along H
        if from_start is not None:
            unrolled = unrolled & from_start[:, :, None]
        keep = unrolled.reshape(B * S, horizon)
        actions = action[:, target_index].reshape(B * S, horizon, -1)  # (B, S, H, A) -> (B*S, H, A)
        rows = torch.arange(B * S, device=latents.device)  # the rows still unrolling, into B*S
        h = hidden[:, starts].reshape(B * S, -1)  # (B, S, hidden_dim) -> (B*S, hidden_dim)
        z = latents[:, starts].reshape(B * S, -1)  # (B, S, D) -> (B*S, D)
        hs, zs, pairs = [], [], []
        for k in range(horizon):
            stay = keep[rows, k]
            rows, h, z = rows[stay], h[stay], z[stay]  # (R, ...) -> (R', ...)
            h, z = self.step(h, z, actions[rows, k])
            hs.append(h)
            zs.append(z)
            pairs.append(rows * horizon + k)
        return OpenLoop(
            latent=torch.cat(zs),
            hidden=torch.cat(hs),
            pair=torch.cat(pairs),
            target_index=target_index,
            unrolled=unrolled,
        )

    def imagine(self, h: torch.Tensor, z: torch.Tensor, actions: torch.Tensor) -> Imagination:
        """Roll the model open-loop under a given action sequence.

        Args:
            h: (B, hidden_dim) and z: (B, D), the state to start from (e.g. the last step of `observe`).
            actions: (B, H, A); actions[:, i] leads to imagined step i.
        Returns:
            Imagination with (B, H, ...) tensors.
        """
        latents, hidden, rewards, conts, disagreements = [], [], [], [], []
        for i in range(actions.shape[1]):
            h, z = self.step(h, z, actions[:, i])
            latents.append(z)
            hidden.append(h)
            rewards.append(self.reward(h, z))
            conts.append(torch.sigmoid(self.cont(h, z)))
            disagreements.append(self.disagreement(h))
        return Imagination(
            latent=torch.stack(latents, dim=1),
            hidden=torch.stack(hidden, dim=1),
            reward=torch.stack(rewards, dim=1),
            cont=torch.stack(conts, dim=1),
            disagreement=torch.stack(disagreements, dim=1),
        )

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
        4. Reward (MSE) and continue (BCE on batch.cont, so a truncated end trains towards 1) at the warm
           teacher-forced states (h_t, real z_t) and at every open-loop state (h, ẑ).
        5. Ensemble: each member regresses the target latent from the detached open-loop h (so the ensemble does not
           shape the dynamics).
        6. Under "sigreg": SIGReg of all online latents of the batch.

        Args:
            batch: windows of T >= 2 steps.
            horizon: open-loop steps H >= 1 per start point.
            burn_in: teacher-forced steps at the window's start whose h is too young to train on.
            generator: CPU generator for SIGReg's random directions; required under "sigreg".
            shard: `batch` is this process's share of a batch split across processes: the masked means are taken
                over the whole batch and SIGReg over all its latents, so that each loss averaged over the processes
                (as their gradients are) is the loss one process computes on the whole batch.
        Returns:
            {"latent", "reward", "cont", "ensemble"} plus "sigreg" under "sigreg" (see `loss_keys`), scalars.

        The stochastic model learns differently (`_stochastic_loss`); horizon and burn_in do not apply.
        """
        if horizon < 1 or burn_in < 0:
            raise ValueError(f"need horizon >= 1 and burn_in >= 0, got {horizon} and {burn_in}")
        if self.collapse_guard == "sigreg" and generator is None:
            raise ValueError("collapse_guard='sigreg' needs a generator for SIGReg's random directions")
        B, T = batch.is_first.shape
        if T < 2:
            raise ValueError(f"windows need at least 2 steps to predict anything, got T={T}")
        if self.stochastic:
            return self._stochastic_loss(batch, generator, shard)
        z, z_target = self.latents(batch)  # (B, T, D) each
        hidden, _ = self.observe(z, batch.action, batch.is_first)  # (B, T, hidden_dim)
        warm = warm_mask(batch.is_first, burn_in)  # (B, T)
        starts = torch.arange(T - 1, device=z.device)  # (S,) every step with a successor
        roll = self.open_loop(hidden, z, batch.action, batch.is_first, starts, horizon, from_start=warm[:, starts])
        target = roll.at_targets(z_target)  # (N, D), N the pairs unrolled
        losses = {"latent": _masked_mean((roll.latent - target).pow(2).mean(dim=-1), None, shard)}

        # Reward and continue: teacher-forced states and open-loop states pooled into one mean.
        reward_error = [
            (self.reward(hidden, z) - batch.reward).pow(2),  # (B, T)
            (self.reward(roll.hidden, roll.latent) - roll.at_targets(batch.reward)).pow(2),  # (N,)
        ]
        cont_error = [
            F.binary_cross_entropy_with_logits(self.cont(hidden, z), batch.cont, reduction="none"),
            F.binary_cross_entropy_with_logits(
                self.cont(roll.hidden, roll.latent), roll.at_targets(batch.cont), reduction="none"
            ),
        ]
        mask = torch.cat([warm.flatten(), torch.ones_like(roll.pair, dtype=torch.bool)])  # (B*T + N,)
        losses["reward"] = _masked_mean(torch.cat([e.flatten() for e in reward_error]), mask, shard)
        losses["cont"] = _masked_mean(torch.cat([e.flatten() for e in cont_error]), mask, shard)

        members = self.ensemble(roll.hidden.detach())  # (N, hd) -> (K, N, D)
        ensemble_error = (members - target).pow(2).mean(dim=(0, 2))  # (K, N, D) -> (N,)
        losses["ensemble"] = _masked_mean(ensemble_error, None, shard)

        if self.collapse_guard == "sigreg":
            flat = z.reshape(B * T, -1)  # (B, T, D) -> (B*T, D): every frame of the batch is one sample
            if shard is not None:  # SIGReg is a statistic of the whole batch: every share's frames
                flat = shard.gather(flat)  # (B*T, D) -> (world_size*B*T, D)
            losses["sigreg"] = sigreg(flat, generator, self.sigreg_directions, self.sigreg_points)
        return losses

    def _stochastic_loss(
        self, batch: WorldModelBatch, generator: torch.Generator | None, shard: BatchShard | None
    ) -> dict[str, torch.Tensor]:
        """The stochastic model's losses, at every step of the windows, along posterior samples (`filter`):

        - "latent": predict the frame's standardised frozen features from [h_t, z_t] (half the squared error,
          summed over features: a unit-variance Gaussian's negative log-likelihood);
        - "kl": KL(posterior || prior) per step, each direction at least `free_nats`, balanced by `kl_balance`;
        - "reward" (MSE) and "cont" (BCE) on [h_t, z_t];
        - "ensemble": each member regresses the posterior's mean from the detached h_t (disagreement only).

        The posterior's noise is drawn from `generator` (the global generator when None) for the whole batch, and
        a `shard` takes its own rows of it: every process holds the same generator, so under torchrun each row gets
        the noise it gets in one process.
        """
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
        losses = {"latent": _masked_mean(0.5 * (self.feature_head(state) - target).pow(2).sum(-1), None, shard)}
        kl_prior = gaussian_kl(posterior.detach(), prior).clamp(min=self.free_nats)  # (B, T): moves the prior
        kl_posterior = gaussian_kl(posterior, prior.detach()).clamp(min=self.free_nats)  # moves the posterior
        losses["kl"] = _masked_mean(self.kl_balance * kl_prior + (1 - self.kl_balance) * kl_posterior, None, shard)
        losses["reward"] = _masked_mean((self.reward(hidden, z) - batch.reward).pow(2), None, shard)
        cont = F.binary_cross_entropy_with_logits(self.cont(hidden, z), batch.cont, reduction="none")
        losses["cont"] = _masked_mean(cont, None, shard)
        members = self.ensemble(hidden.detach().reshape(B * T, -1))  # (K, B*T, D)
        ensemble_error = (members - posterior.mean.detach().reshape(B * T, -1)).pow(2).mean(dim=(0, 2))  # (B*T,)
        losses["ensemble"] = _masked_mean(ensemble_error, None, shard)
        return losses
