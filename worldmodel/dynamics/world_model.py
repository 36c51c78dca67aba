"""The world-model interface every caller uses, and what its two kinds share.

A world model encodes frames (a perception encoder) into a latent z, carries history in a recurrent h, and predicts
the next latent, the reward and the continue flag, with an ensemble for disagreement. `WorldModel` is the interface
(an abstract base) and holds the parts both kinds share: the encoder backbone, its pooling and feature
standardisation, the recurrence, the reward / continue heads and the ensemble. The kinds are two classes:

- `worldmodel.dynamics.jepa.JEPAWorldModel` ("deterministic"): z is the encoder's reading of one frame, and the
  dynamics predict the next z open loop, under an EMA target or SIGReg.
- `worldmodel.dynamics.rssm.RSSMWorldModel` ("stochastic"): a recurrent state-space model whose posterior filters each
  frame's frozen features with the history and whose prior the dream samples.

`worldmodel.dynamics.build.build_world_model` picks the class by its `latent` name.

Time convention (the episode store's): step t has obs[t]; action[t] led to obs[t] (zeros at is_first);
reward[t] was received on arriving at obs[t]; cont[t] = 0 only when obs[t] is terminal (a truncated end has
is_last but cont = 1). The dynamics follow it:

    h_t = f(h_{t-1}, z_{t-1}, a_t)      (a GRU cell; h and z are reset to zeros at is_first)
    ẑ_t = g(h_t)                        (the predicted latent of obs[t]; the stochastic model's prior)
    r̂_t = reward(h_t, z_t), ĉ_t = cont(h_t, z_t)

so h_t holds the history up to z_{t-1} and the action that led to obs[t], and [z_t, h_t] is what a
controller sees. Letters (declared in `worldmodel`): B batch, T time, O open-loop start points, U unrolled steps,
K ensemble members, D latent, F encoder features, A action dims, S true state, N rows.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.perception.augment import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur, normalize, resize
from worldmodel.perception.vit import GRIDS, POOLINGS, VisionTransformer, pool_tokens


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
    """(B, U, D) predicted latents ẑ."""
    hidden: torch.Tensor
    """(B, U, hidden_dim) recurrent states h."""
    reward: torch.Tensor
    """(B, U) predicted rewards."""
    cont: torch.Tensor
    """(B, U) predicted probabilities of not having terminated."""
    disagreement: torch.Tensor
    """(B, U) variance across ensemble members, averaged over D."""


class OpenLoop(NamedTuple):
    """Open-loop unrolls from many start points of a window at once (see `WorldModel.open_loop`), kept as the
    N pairs (b, s, k) that were unrolled: only those whose target is a real step of the start's episode."""

    latent: torch.Tensor
    """(N, D) predicted latents; pair (b, s, k) predicts step starts[s] + k of window b."""
    hidden: torch.Tensor
    """(N, hidden_dim) recurrent states at the same steps."""
    pair: torch.Tensor
    """(N,) int64 flat index of each pair into (B, O, U)."""
    target_index: torch.Tensor
    """(O, U) int64 time index each prediction is compared with, clamped to T - 1."""
    unrolled: torch.Tensor
    """(B, O, U) bool: the pairs unrolled (`pair` holds their flat indices, ordered by k, then by row)."""

    def at_targets(self, values: torch.Tensor) -> torch.Tensor:
        """Each pair's value at its target step: values (B, T, ...) -> (N, ...)."""
        _, num_starts, horizon = self.unrolled.shape  # (B, O, U)
        window = torch.div(self.pair, num_starts * horizon, rounding_mode="floor")  # (N,) b of each pair
        return values[window, self.target_index.flatten()[self.pair % (num_starts * horizon)]]

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Per-pair values (N, ...) laid out as (B, O, U, ...), zeros at the pairs not unrolled."""
        full = values.new_zeros(self.unrolled.numel(), *values.shape[1:])  # (B*O*U, ...)
        return full.index_copy(0, self.pair, values).reshape(*self.unrolled.shape, *values.shape[1:])


def open_loop_valid(is_first: torch.Tensor, starts: torch.Tensor, horizon: int) -> torch.Tensor:
    """Which (start, k) pairs of a window compare a prediction with a real step of the same episode.

    Pair (s, k), k = 1..horizon, is valid when s + k <= T - 1 and no is_first lies in (s, s + k].

    Args:
        is_first: (B, T) bool.
        starts: (O,) int64 start steps in [0, T).
        horizon: U >= 1.
    Returns:
        (B, O, U) bool.
    """
    T = is_first.shape[1]
    target = starts[:, None] + torch.arange(1, horizon + 1, device=starts.device)  # (O, U)
    episode = is_first.long().cumsum(dim=1)  # (B, T) episode number within the window
    same_episode = episode[:, target.clamp(max=T - 1)] == episode[:, starts, None]  # (B, O, U)
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
    """This share's place among them: it holds rows [rank * N, (rank + 1) * N) of the whole batch."""

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over every share of a tensor that needs no gradient (a count)."""
        ...

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every share's rows, (N, ...) -> (world_size * N, ...) in order; differentiable."""
        ...


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, shard: BatchShard | None = None) -> torch.Tensor:
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


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)
    )


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): squashes large state values while keeping small ones (DreamerV3,
    https://arxiv.org/abs/2301.04104), so one network fits envs with very different observation scales."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (exp(|x|) - 1), the inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


REWARD_LOSSES: tuple[str, ...] = ("mse", "twohot")
"""How the reward head learns (the `reward_loss` keyword): "mse", one output regressed on the reward; "twohot",
DreamerV3's logits over `TWOHOT_BINS` bins in symlog space, cross-entropy against the reward's two-hot encoding."""
TWOHOT_BINS = 255
TWOHOT_LIMIT = 20.0
"""The bins are evenly spaced on [-TWOHOT_LIMIT, TWOHOT_LIMIT] in symlog space (DreamerV3's), rewards up to ~5e8."""


def twohot(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of values on ascending bins: weight on the two bins around each value, in proportion to its
    closeness, so that the weights times the bins give the value back (clamped to the bins' range).

    Args:
        values: (...) any shape; bins: (N,) ascending, N >= 2.
    Returns:
        (..., N) non-negative weights summing to 1.
    """
    values = values.clamp(bins[0], bins[-1])
    below = (torch.searchsorted(bins, values.contiguous(), right=True) - 1).clamp(0, len(bins) - 2)  # (...)
    lower, upper = bins[below], bins[below + 1]
    weight_upper = (values - lower) / (upper - lower)  # (...) in [0, 1]
    encoding = values.new_zeros(*values.shape, len(bins))  # (..., N)
    encoding.scatter_(-1, below[..., None], (1 - weight_upper)[..., None])
    return encoding.scatter_add_(-1, below[..., None] + 1, weight_upper[..., None])


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


class OptionError(ValueError):
    """A world model's constructor keyword with a value it cannot take; `key` names it, `reason` says why."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def require(condition: bool, key: str, reason: str) -> None:
    """Raise an OptionError for the keyword `key` unless `condition` holds."""
    if not condition:
        raise OptionError(key, reason)


class WorldModel(nn.Module, ABC):
    """The interface of both kinds of world model, and the parts they share.

    What callers use (the dream, the agents, the trainer, the metrics, export):
        `latent`, `frame_latents`, `samples_prior`: which kind, and the two things callers need to know of it.
        `encode_features(obs)`: the backbone's features of frames, which a frozen encoder's cache holds.
        `set_feature_statistics(features)`: standardise features with these statistics from now on.
        `encode(obs | features)`: the online embedding of frames, what `filter_step` reads.
        `initial_state(batch)`: h at an episode's start.
        `filter_step(h, z, action, embedding)`: one real step: h_t, and z_t from the new frame.
        `real_states(batch)`: h, z and the latents to predict along real windows, teacher-forced.
        `targets(obs | features)`: the stop-gradient latent of one frame (where `frame_latents`).
        `step(h, z, action, prior_noise)`: one dream step: h_t and the predicted ẑ_t.
        `reward(h, z)`, `cont(h, z)`: the heads; `ensemble(h)`, `disagreement(h)`: the ensemble.
        `open_loop(...)`, `imagine(h, z, actions)`: unrolls built on `step`.
        `loss(batch, horizon, burn_in, generator, shard)` and `loss_keys`: training.
        `update_target(momentum)`, `load_pretrained_encoder(weights)`: the EMA target and a pretrained encoder.

    Args (the keywords both kinds take):
        obs_shape: one observation: (H, W, C) uint8 pixels (channels-last) or (S,) float state.
        action_dim: A, length of the action vector (discrete actions one-hot).
        latent_dim: D, size of the latent z.
        hidden_dim: size of the recurrent history state h.
        mlp_dim: hidden width of every MLP (state encoder, dynamics input, heads, ensemble members).
        ensemble_size: K >= 2 next-latent heads whose disagreement measures model uncertainty.
        vit_size: ViT preset from worldmodel.perception.vit.VIT_SIZES (pixels only).
        image_size: the ViT's input side; frames of another size are resized (pixels only).
        patch_size: the ViT's patch side, dividing image_size (pixels only).
        freeze_encoder: keep the encoder backbone (ViT or state MLP) fixed. Then features can be precomputed once
            and passed in place of obs.
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
        reward_loss: how the reward head learns, one of `REWARD_LOSSES`: "mse" (one output) or "twohot" (DreamerV3's
            symlog two-hot bins); `reward` gives the predicted reward either way.
    """

    latent: ClassVar[str]
    """The kind's name: "deterministic" or "stochastic" (the config's `world_model.latent`)."""
    frame_latents: ClassVar[bool]
    """One frame alone gives its latent (`targets`); else a latent needs the frame's history (`real_states`)."""
    samples_prior: ClassVar[bool]
    """`step` samples ẑ from a prior with `prior_noise` (N, D) standard normal, which the dream then draws."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        latent_dim: int,
        hidden_dim: int,
        mlp_dim: int,
        ensemble_size: int,
        vit_size: str,
        image_size: int,
        patch_size: int,
        freeze_encoder: bool,
        input_blur: float,
        pooling: str,
        reward_loss: str,
    ):
        super().__init__()
        obs_shape = tuple(int(v) for v in obs_shape)
        if len(obs_shape) not in (1, 3):
            raise ValueError(f"obs_shape must be (H, W, C) for pixels or (S,) for state, got {obs_shape}")
        require(action_dim >= 1, "action_dim", f"must be >= 1, got {action_dim}")
        self.obs_shape = obs_shape
        self.action_dim = action_dim
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.freeze_encoder = freeze_encoder
        self.input_blur = float(input_blur)
        self.pooling = pooling
        self.reward_loss = reward_loss
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
            self.backbone = nn.Sequential(mlp(obs_shape[0], mlp_dim, mlp_dim), nn.LayerNorm(mlp_dim), nn.SiLU())
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

    def _add_dynamics(self, head_dim: int) -> None:
        """The recurrence h_t = f(h_{t-1}, z_{t-1}, a_t) and the latent head g(h_t) of `head_dim` outputs. A kind
        calls it after its projection, and `_add_heads` after its own parts: the order fixes the initialisation
        under a seed and the state_dict's order."""
        self.dynamics_input = nn.Sequential(
            nn.Linear(self.latent_dim + self.action_dim, self.mlp_dim), nn.LayerNorm(self.mlp_dim), nn.SiLU()
        )
        self.gru = nn.GRUCell(self.mlp_dim, self.hidden_dim)
        self.latent_head = mlp(self.hidden_dim, self.mlp_dim, head_dim)

    def _add_heads(self, ensemble_size: int) -> None:
        """The reward and continue heads on [h, z] and the ensemble on h, last."""
        outputs = 1
        if self.reward_loss == "twohot":
            bins = torch.linspace(-TWOHOT_LIMIT, TWOHOT_LIMIT, TWOHOT_BINS)
            self.register_buffer("reward_bins", bins, persistent=False)  # fixed: rebuilt, not saved
            outputs = TWOHOT_BINS
        self.reward_head = mlp(self.hidden_dim + self.latent_dim, self.mlp_dim, outputs)
        if self.reward_loss == "twohot":
            # DreamerV3 zero-initialises the reward head's output: it starts predicting 0 (uniform logits, the mean
            # bin) rather than a random reward that the dream would sum over hundreds of steps.
            nn.init.zeros_(self.reward_head[-1].weight)
            nn.init.zeros_(self.reward_head[-1].bias)
        self.cont_head = mlp(self.hidden_dim + self.latent_dim, self.mlp_dim, 1)
        self.ensemble_heads = Ensemble(ensemble_size, self.hidden_dim, self.mlp_dim, self.latent_dim)

    # ------------------------------------------------------------------ options

    @classmethod
    def keywords(cls) -> dict[str, Any]:
        """The constructor's keywords (those after obs_shape and action_dim) and their defaults."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise OptionError naming the first keyword whose value the class cannot take (those left out take their
        defaults), without building anything: the constructor calls it, and so can a config at parse time."""
        defaults = cls.keywords()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"{cls.__name__} takes no keyword {unknown}; it takes {sorted(defaults)}")
        cls._check({**defaults, **options})

    @classmethod
    def _check(cls, options: dict[str, Any]) -> None:
        """The checks of the shared keywords; a kind adds its own."""
        for key in ("latent_dim", "hidden_dim", "mlp_dim"):
            require(options[key] >= 1, key, f"must be >= 1, got {options[key]}")
        require(options["ensemble_size"] >= 2, "ensemble_size", f"must be >= 2, got {options['ensemble_size']}")
        require(options["image_size"] >= 8, "image_size", f"must be >= 8, got {options['image_size']}")
        require(
            options["patch_size"] >= 1 and options["image_size"] % options["patch_size"] == 0,
            "patch_size",
            f"must divide image_size ({options['image_size']}), got {options['patch_size']}",
        )
        require(options["input_blur"] >= 0, "input_blur", f"must be >= 0, got {options['input_blur']}")
        require(
            options["pooling"] in POOLINGS, "pooling", f"must be one of {tuple(POOLINGS)}, got {options['pooling']!r}"
        )
        require(
            options["reward_loss"] in REWARD_LOSSES,
            "reward_loss",
            f"must be one of {REWARD_LOSSES}, got {options['reward_loss']!r}",
        )

    # ------------------------------------------------------------------ encoder

    @property
    @abstractmethod
    def loss_keys(self) -> tuple[str, ...]:
        """The keys `loss` returns, hence the keys a weights dict must have."""

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
        """The online embedding of frames, what `filter_step` reads: obs (*lead, *obs_shape) or frozen-encoder
        features (*lead, F) -> (*lead, D) z (deterministic) or (*lead, mlp_dim) (stochastic)."""
        if features is None:
            if obs is None:
                raise ValueError("encode needs obs or features")
            features = self.encode_features(obs)
        else:
            self._check_features(features)
        return self.projection(self._standardized(features))

    @abstractmethod
    def targets(self, obs: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """Stop-gradient latents of single frames (*lead, D); a ValueError where not `frame_latents`."""

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (EMA target, online) module pairs that `update_target` moves: none here."""
        return []

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, for every pair of `target_pairs`; nothing
        without a target network."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        pairs = self.target_pairs()
        target = [p for t, o in pairs for p in t.parameters()]
        online = [p.detach() for t, o in pairs for p in o.parameters()]
        if target:
            torch._foreach_mul_(target, momentum)
            torch._foreach_add_(target, online, alpha=1.0 - momentum)

    def load_pretrained_encoder(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load backbone weights (e.g. an I-JEPA target encoder's `state_dict()`) into the online backbone and
        into its EMA target copy where there is one."""
        self.backbone.load_state_dict(state_dict)
        for target, online in self.target_pairs():
            if online is self.backbone:
                target.load_state_dict(state_dict)

    # ------------------------------------------------------------------ dynamics and heads

    def initial_state(self, batch: int) -> torch.Tensor:
        """The history state at an episode's start: zeros (batch, hidden_dim)."""
        weight = self.gru.weight_hh
        return torch.zeros(batch, self.hidden_dim, device=weight.device, dtype=weight.dtype)

    def recur(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The recurrence alone: h_t = f(h_{t-1}, z_{t-1}, a_t), (B, hidden_dim)."""
        return self.gru(self.dynamics_input(torch.cat([z, action], dim=-1)), h)

    @abstractmethod
    def step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, prior_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One dream step: h (B, hidden_dim), z (B, D), action (B, A), prior_noise (B, D) -> h_t, ẑ_t."""

    @abstractmethod
    def filter_step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One real step: h_t from (h_{t-1}, z_{t-1}, a_t), then z_t from `encode(obs_t)`; (B, hidden_dim), (B, D)."""

    @abstractmethod
    def real_states(self, batch: WorldModelBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced along real windows: hidden (B, T, hidden_dim), z (B, T, D), latents to predict (B, T, D)."""

    def reward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predicted reward of arriving at the step with state h (..., hidden_dim) and latent z (..., D) -> (...);
        under "twohot" the symexp of the bins' mean under the head's softmax (DreamerV3's)."""
        output = self.reward_head(torch.cat([h, z], dim=-1))  # (..., 1) or (..., TWOHOT_BINS)
        if self.reward_loss == "mse":
            return output.squeeze(-1)
        return symexp(torch.softmax(output, dim=-1) @ self.reward_bins.to(output.dtype))

    def reward_error(self, h: torch.Tensor, z: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """The reward head's loss at each state against the real reward, what both kinds train it on: h
        (..., hidden_dim), z (..., D), reward (...) -> (...). "mse": the squared error. "twohot": the cross-entropy
        of the head's logits against the two-hot encoding of symlog(reward), in float32 (bf16 would move the bins);
        its gradient does not grow with the reward's size, so a rare large reward (Parking's +5) does not swamp the
        common small ones, nor they it (DreamerV3, https://arxiv.org/abs/2301.04104)."""
        if self.reward_loss == "mse":
            return (self.reward(h, z) - reward).pow(2)
        logits = self.reward_head(torch.cat([h, z], dim=-1)).float()  # (..., TWOHOT_BINS)
        target = twohot(symlog(reward.float()), self.reward_bins)  # (..., TWOHOT_BINS)
        return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)

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
            is_first: (B, T) bool; starts: (O,) int64 in [0, T); horizon: U >= 1.
            from_start: (B, O) bool, the start points to unroll from (e.g. the warm ones); default all.
        """
        B, T, _ = latents.shape
        num_starts = len(starts)  # O
        target_index = (starts[:, None] + torch.arange(1, horizon + 1, device=starts.device)).clamp(max=T - 1)
        unrolled = open_loop_valid(is_first, starts, horizon)  # (B, O, U), and once False stays False along U
        if from_start is not None:
            unrolled = unrolled & from_start[:, :, None]
        keep = unrolled.reshape(B * num_starts, horizon)
        actions = action[:, target_index].reshape(B * num_starts, horizon, -1)  # (B, O, U, A) -> (B*O, U, A)
        rows = torch.arange(B * num_starts, device=latents.device)  # the rows still unrolling, into B*O
        h = hidden[:, starts].reshape(B * num_starts, -1)  # (B, O, hidden_dim) -> (B*O, hidden_dim)
        z = latents[:, starts].reshape(B * num_starts, -1)  # (B, O, D) -> (B*O, D)
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
            actions: (B, U, A); actions[:, i] leads to imagined step i.
        Returns:
            Imagination with (B, U, ...) tensors.
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

    @abstractmethod
    def loss(
        self,
        batch: WorldModelBatch,
        horizon: int,
        burn_in: int = 0,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses of one batch of windows, keyed by `loss_keys`, scalars.

        Args:
            batch: windows of T >= 2 steps.
            horizon: open-loop steps U >= 1 per start point (where the kind unrolls open loop).
            burn_in: teacher-forced steps at the window's start whose h is too young to train on (the same).
            generator: CPU generator for the kind's random draws.
            shard: `batch` is this process's share of a batch split across processes: each loss averaged over the
                processes (as their gradients are) is the loss one process computes on the whole batch.
        """

    @staticmethod
    def _check_loss_arguments(batch: WorldModelBatch, horizon: int, burn_in: int) -> None:
        if horizon < 1 or burn_in < 0:
            raise ValueError(f"need horizon >= 1 and burn_in >= 0, got {horizon} and {burn_in}")
        if batch.is_first.shape[1] < 2:
            raise ValueError(f"windows need at least 2 steps to predict anything, got T={batch.is_first.shape[1]}")
