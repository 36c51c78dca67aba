"""Configuration: a tree of frozen dataclasses filled from stacked YAML presets and dotted overrides.

    cfg = load_config(["configs/debug.yaml"], ["pretrain.optim.steps=50"])

Defaults live in the dataclasses below. Each preset is applied in order, then each `--set key=value`.
An unknown key, a value of the wrong type or an impossible value raises `ConfigError` before any work,
with the full key path and what is allowed. The config is never mutated after loading; facts found at
run time (observation and action spaces) travel separately as an `EnvSpec`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.resources
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an impossible value."""


def _require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for `key` (relative to the section) unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _range(value: tuple[float, float], key: str, low: float, high: float) -> None:
    """A (min, max) pair inside [low, high] with min <= max."""
    _require(len(value) == 2, key, f"expected [min, max], got {list(value)}")
    _require(low <= value[0] <= value[1] <= high, key, f"expected {low} <= min <= max <= {high}, got {list(value)}")


# Every setting of a switch (a choice between ways of doing a thing) is the default (the recommended setting), one a
# shipped preset makes, or one of these alternatives, kept for the reason given (docs/README.md); any other was
# deleted (tests/experiments/test_config_commands.py checks). A numeric switch is named with a value that turns it on.
# Each key maps its kept values to their reasons.
KEPT_ALTERNATIVES: dict[str, dict[Any, str]] = {
    "evolve.agent": {
        "planner": "the planner, to tell a weak controller search from a wrong model",
        "actor_critic": "an actor-critic trained in the dream (Dreamer's), the field's other way to act",
    },
    "planner.method": {"mppi": "MPPI beside CEM, the two planners of the field (TD-MPC2, LeWorldModel)"},
    "env.obs": {"state": "the env's true low-dimensional state instead of pixels, to tell a perception failure apart"},
    "world_model.collapse_guard": {"sigreg": "SIGReg, not EMA targets (LeJEPA, LeWorldModel); deterministic latent"},
    "world_model.freeze_encoder": {False: "the encoder trained end to end, not frozen; deterministic latent"},
    "world_model.pooling": {"grid2": "the grid pooling of grid4 (one code path) on a coarser grid"},
    "dream.cont_mode": {"expected": "the dream's termination by the continue head: sampled, expected or thresholded"},
    "dream.latent_noise": {0.1: "dream latent noise, which keeps a controller off the model's exact predictions"},
    "dream.disagreement_penalty": {1.0: "the ensemble-disagreement penalty on the dream's reward"},
    "dream.disagreement_limit": {1.0: "the ensemble-disagreement limit that ends a dream rollout"},
    "cycle.start_curriculum": {True: "Parking's start widened from the space in view to the whole lot as it parks"},
}

# --------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    """Seed for every random number generator of the run."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N', 'mps'."""
    precision: Literal["auto", "bf16", "fp16", "float32"] = "auto"
    """Training precision; 'auto' takes bf16 on GPUs that have it, fp16 with loss scaling on older GPUs, and float32
    on every CPU (bf16 on a CPU with bf16 units cost the default task its result; set 'bf16' to choose it)."""
    threads: int = 0
    """CPU threads for torch; 0 takes the cores other processes leave free, looking again every few seconds
    (experiments/threads.py; under torchrun, the process's share of the cores). Fix it for runs that must repeat bit
    for bit: the count changes the order of sums."""
    log_every: int = 10
    """Steps between metric log lines."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is always written at the end and on interruption)."""
    progress: bool = True
    """Draw a progress bar on stderr."""

    def __post_init__(self):
        _require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        device_ok = self.device in ("auto", "cpu", "cuda", "mps") or (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        )
        _require(device_ok, "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class EncoderConfig:
    size: Literal["micro", "mini", "tiny", "small", "base"] = "mini"
    """ViT size preset (width, depth, heads) from worldmodel.perception.vit.VIT_SIZES."""
    image_size: int = 64
    """Side of the square input image in pixels."""
    patch_size: int = 8
    """Side of a square patch in pixels; must divide image_size."""

    def __post_init__(self):
        _require(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        _require(self.patch_size >= 1, "patch_size", f"must be >= 1, got {self.patch_size}")
        _require(
            self.image_size % self.patch_size == 0,
            "patch_size",
            f"must divide image_size ({self.image_size}), got {self.patch_size}",
        )
        grid = self.image_size // self.patch_size
        _require(grid >= 4, "patch_size", f"leaves a {grid}x{grid} patch grid; at least 4x4 is needed for masking")


@dataclass(frozen=True)
class PredictorConfig:
    width: int = 96
    """Embedding width of the narrow predictor ViT."""
    depth: int = 3
    """Number of transformer blocks in the predictor."""
    heads: int = 4
    """Attention heads in the predictor; must divide width."""

    def __post_init__(self):
        _require(self.width >= 8, "width", f"must be >= 8, got {self.width}")
        _require(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        _require(self.heads >= 1 and self.width % self.heads == 0, "heads", f"must divide width ({self.width})")


@dataclass(frozen=True)
class MaskConfig:
    num_targets: int = 4
    """Target blocks per image (I-JEPA: 4)."""
    target_scale: tuple[float, float] = (0.15, 0.2)
    """Range of a target block's area as a fraction of the image."""
    target_aspect: tuple[float, float] = (0.75, 1.5)
    """Range of a target block's aspect ratio (height / width)."""
    context_scale: tuple[float, float] = (0.85, 1.0)
    """Range of the context block's area before the targets are removed from it."""
    min_keep: int = 4
    """Fewest patches a context or target block may keep."""

    def __post_init__(self):
        _require(self.num_targets >= 1, "num_targets", f"must be >= 1, got {self.num_targets}")
        _range(self.target_scale, "target_scale", 0.0, 1.0)
        _require(self.target_scale[0] > 0, "target_scale", "min must be > 0")
        _range(self.target_aspect, "target_aspect", 0.05, 20.0)
        _range(self.context_scale, "context_scale", 0.0, 1.0)
        _require(self.context_scale[0] > 0, "context_scale", "min must be > 0")
        _require(self.min_keep >= 1, "min_keep", f"must be >= 1, got {self.min_keep}")


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 900
    """Optimizer steps in total."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 5e-4
    """Peak learning rate, reached at the end of warmup. At 1.5e-3 a 900-step run's features collapsed onto a few
    directions (effective rank 44 -> 4) and its k-NN probe fell below random init (docs/perception.md)."""
    start_lr: float = 2e-4
    """Learning rate at step 0 (warmup rises linearly from here)."""
    final_lr: float = 1e-5
    """Learning rate at the last step (cosine decay from the peak)."""
    warmup_steps: int = 60
    """Steps of linear warmup."""
    weight_decay: float = 0.04
    """AdamW weight decay at step 0."""
    final_weight_decay: float = 0.4
    """Weight decay at the last step (cosine schedule, as in I-JEPA)."""
    ema: float = 0.99
    """EMA momentum of the target encoder at step 0 (I-JEPA uses 0.996 over ~10^5 steps; a run of hundreds of
    steps needs a target that keeps up)."""
    final_ema: float = 1.0
    """EMA momentum at the last step (linear rise)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    max_nonfinite: int = 5
    """Stop the run after this many non-finite losses in a row (each one skips its step)."""

    def __post_init__(self):
        _require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "grad_clip"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.warmup_steps < self.steps, "warmup_steps", f"must be in [0, steps={self.steps})")
        _require(0 <= self.ema <= self.final_ema <= 1, "ema", "expected 0 <= ema <= final_ema <= 1")
        _require(self.max_nonfinite >= 1, "max_nonfinite", f"must be >= 1, got {self.max_nonfinite}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    """'synthetic' (fractal images, no download), 'glyphs' (rendered characters, labelled: no download either),
    'folder:<path>' (an image folder, class subfolders become labels; `wm images` writes one) or 'env:<gymnasium
    id>' (frames of that env under a random policy, with its true state)."""
    num_images: int = 3000
    """Images to generate (synthetic, glyphs) or frames to collect (env); an image folder is used whole."""
    num_classes: int = 10
    """Fractal systems or glyph characters (synthetic and glyphs only)."""
    stored_size: int = 72
    """Side of the stored images before augmentation (synthetic, glyphs and folder); env frames use the encoder's."""
    augment: Literal["crop_flip", "none"] = "crop_flip"
    """Random resized crop and horizontal flip, or none (env frames keep their geometry for state probes)."""
    crop_scale: tuple[float, float] = (0.3, 1.0)
    """Area range of the random resized crop."""
    workers: int = 2
    """DataLoader worker processes decoding an image folder (0 decodes in the main process)."""
    max_bad_images: int = 100
    """Unreadable images skipped before the run stops."""

    def __post_init__(self):
        kind = self.source.split(":", 1)[0]
        _require(
            self.source in ("synthetic", "glyphs") or (kind in ("folder", "env") and len(self.source) > len(kind) + 1),
            "source",
            f"must be 'synthetic', 'glyphs', 'folder:<path>' or 'env:<gymnasium id>', got {self.source!r}",
        )
        _require(self.num_images >= 8, "num_images", f"must be >= 8, got {self.num_images}")
        _require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")
        _require(self.stored_size >= 8, "stored_size", f"must be >= 8, got {self.stored_size}")
        _range(self.crop_scale, "crop_scale", 0.0, 1.0)
        _require(self.crop_scale[0] > 0, "crop_scale", "min must be > 0")
        _require(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        _require(self.max_bad_images >= 0, "max_bad_images", f"must be >= 0, got {self.max_bad_images}")

    @property
    def kind(self) -> str:
        """'synthetic', 'glyphs', 'folder' or 'env'."""
        return self.source.split(":", 1)[0]

    @property
    def target(self) -> str:
        """The folder path or env id after the colon ('' for synthetic)."""
        return self.source.split(":", 1)[1] if ":" in self.source else ""


@dataclass(frozen=True)
class EvalConfig:
    every: int = 150
    """Steps between probe evaluations during training (probe_curve.png draws them); 0 evaluates only at the end."""
    test_fraction: float = 0.25
    """Share of the probe images held out for testing."""
    max_images: int = 2000
    """Images used by the probes (a fixed seeded subset)."""
    knn_k: int = 20
    """Neighbours in the k-NN probe."""
    mask_images: int = 6
    """Images drawn with their context and target blocks in masks.png."""

    def __post_init__(self):
        _require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        _require(0 < self.test_fraction < 1, "test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _require(self.max_images >= 8, "max_images", f"must be >= 8, got {self.max_images}")
        _require(self.knn_k >= 1, "knn_k", f"must be >= 1, got {self.knn_k}")
        _require(self.mask_images >= 0, "mask_images", f"must be >= 0, got {self.mask_images}")


@dataclass(frozen=True)
class PretrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The ViT context encoder (and its EMA target)."""
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """The narrow predictor ViT."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """Multi-block masking."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedules."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the images come from."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Frozen-feature probes."""


@dataclass(frozen=True)
class EnvConfig:
    id: str = "CartPole-v1"
    """The gymnasium id (any registered one, or Parking-v0)."""
    obs: Literal["pixels", "state"] = "pixels"
    """Observe uint8 images ('pixels') or the env's low-dimensional vector ('state')."""
    size: int = 64
    """Side of the square frames in pixels (pixels only)."""
    action_repeat: int = 1
    """Env steps per agent step; rewards are summed. The step counts set in the config (collect_steps, horizons) are
    agent steps; the env steps reported and budgeted (env_steps, eval_env_steps, real_env_steps,
    cycle.max_env_steps) are agent steps times action_repeat, a repeat cut short by an episode's end counted whole."""

    def __post_init__(self):
        _require(bool(self.id.strip()), "id", "must name a gymnasium env, e.g. CartPole-v1")
        _require(8 <= self.size <= 1024, "size", f"must be in [8, 1024], got {self.size}")
        _require(self.action_repeat >= 1, "action_repeat", f"must be >= 1, got {self.action_repeat}")


@dataclass(frozen=True)
class LossWeightsConfig:
    latent: float = 1.0
    """Weight of the multi-step open-loop latent prediction loss."""
    reward: float = 1.0
    """Weight of the reward regression loss."""
    cont: float = 5.0
    """Weight of the continue (not terminal) classification loss: episodes end on few steps, and a dream ended by the
    continue head is only as good as that head (CartPole: docs/dream-and-evolution.md)."""
    ensemble: float = 1.0
    """Weight of the ensemble heads' loss (it trains only the heads: they read a detached h)."""
    sigreg: float = 10.0
    """Weight of SIGReg (collapse_guard 'sigreg' only); the loss is a per-sample mean, LeJEPA's is N times it."""
    kl: float = 1.0
    """Weight of the KL between posterior and prior (latent 'stochastic' only)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _require(getattr(self, f.name) >= 0, f.name, f"must be >= 0, got {getattr(self, f.name)}")


# The fields of WorldModelConfig that are `worldmodel.dynamics.build_world_model`'s keywords: `latent` picks the
# class (JEPAWorldModel or RSSMWorldModel), which takes the others it uses and checks their values.
WORLD_MODEL_KEYWORDS = (
    "latent_dim",
    "hidden_dim",
    "mlp_dim",
    "collapse_guard",
    "ensemble_size",
    "vit_size",
    "image_size",
    "patch_size",
    "freeze_encoder",
    "sigreg_directions",
    "sigreg_points",
    "input_blur",
    "pooling",
    "latent",
    "free_nats",
    "kl_balance",
    "reward_loss",
)
PREDICTION_DEPTHS = (1, 5, 15)  # open-loop depths k of the pred_error_k* metrics


@dataclass(frozen=True)
class WorldModelConfig:
    # -- the model: build_world_model's keywords (see WORLD_MODEL_KEYWORDS), checked by the class they go to
    latent_dim: int = 32
    """Size D of the latent z."""
    hidden_dim: int = 128
    """Size of the recurrent history state h."""
    mlp_dim: int = 128
    """Hidden width of every MLP (state encoder, dynamics input, heads, ensemble members)."""
    collapse_guard: Literal["ema", "sigreg"] = "ema"
    """Keep latents from collapsing with an EMA target network ('ema') or with the SIGReg loss ('sigreg')."""
    ensemble_size: int = 5
    """Next-latent heads K whose disagreement measures model uncertainty (>= 2)."""
    vit_size: Literal["micro", "mini", "tiny", "small", "base"] = "mini"
    """ViT size preset of the pixel encoder (worldmodel.perception.vit.VIT_SIZES)."""
    image_size: int = 64
    """The ViT's input side in pixels; frames of another size are resized."""
    patch_size: int = 8
    """The ViT's patch side in pixels; must divide image_size."""
    freeze_encoder: bool = True
    """Keep the encoder backbone fixed (its features are computed once per frame and cached); else fine-tune it, at
    a far higher cost per step (the ViT runs forward and backward on every frame of every window)."""
    sigreg_directions: int = 256
    """Random 1-D projections per SIGReg call ('sigreg' only)."""
    sigreg_points: int = 17
    """Grid points of SIGReg's Epps-Pulley integral ('sigreg' only)."""
    input_blur: float = 0.0
    """Gaussian blur, std in pixels of the ViT's input, of every frame before the encoder (0: none; pixels only)."""
    pooling: Literal["mean", "mean_std", "grid2", "grid4"] = "mean"
    """A frame's ViT patch features pooled into their mean, their mean and standard deviation, or the mean of each
    cell of a 2 x 2 or 4 x 4 grid over the image, which keeps where things are (pixels only)."""
    latent: Literal["deterministic", "stochastic"] = "stochastic"
    """'deterministic': z is the encoder's reading of one frame, and the dynamics predict it. 'stochastic': a
    recurrent state-space model, z drawn from a posterior that filters each frame with the history and, in the dream,
    from the dynamics' prior; it predicts the frozen encoder's features (needs freeze_encoder) and ignores horizon
    and burn_in in training (docs/dream-and-evolution.md, `wm evolve`)."""
    free_nats: float = 1.0
    """'stochastic': the KL term counts only above this many nats per step."""
    kl_balance: float = 0.8
    """'stochastic': share of the KL's gradient that moves the prior towards the posterior (the rest the reverse)."""
    reward_loss: Literal["mse", "twohot"] = "mse"
    """The reward head's loss: 'mse' (squared error of one output) or 'twohot' (DreamerV3's symlog two-hot bins)."""
    # -- collection
    collect_steps: int = 12000
    """Random-policy transitions to collect before training (summed over envs; ignored with --episodes)."""
    collect_hold: int = 1
    """Env steps each random action is held for (1: a fresh action every step). Held actions push an env further
    from where it starts (a pendulum swings higher) than actions that average out step by step."""
    num_envs: int = 4
    """Envs stepped side by side while collecting."""
    # -- training
    steps: int = 2000
    """Optimizer steps in total."""
    batch_size: int = 32
    """Windows per step."""
    sequence_length: int = 32
    """Steps T per training window (windows may span episodes; is_first marks the seams)."""
    horizon: int = 15
    """Open-loop steps unrolled from every start point of a window, at most sequence_length - 1. The dream runs far
    longer than this, and how long it stays faithful follows it (CartPole: docs/cycle.md, `wm cycle`)."""
    burn_in: int = 5
    """Teacher-forced steps at a window's start whose history state is too young to train on."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    final_lr: float = 3e-5
    """Learning rate at the last step (cosine decay from the peak)."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay of matrices (biases and norms get none)."""
    grad_clip: float = 10.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    ema: float = 0.99
    """EMA momentum of the target encoder and projection at step 0 ('ema' only)."""
    final_ema: float = 0.999
    """EMA momentum at the last step (linear rise)."""
    loss_weights: LossWeightsConfig = field(default_factory=LossWeightsConfig)
    """Weight of each loss, matched key for key against the model's losses."""
    max_nonfinite: int = 5
    """Stop the run after this many non-finite losses in a row (each one skips its step)."""
    # -- evaluation
    eval_every: int = 300
    """Steps between held-out evaluations during training; 0 evaluates only at the end."""
    eval_fraction: float = 0.2
    """Share of the episodes (the last ones stored) held out for evaluation, never trained on."""
    eval_batch_size: int = 32
    """Held-out windows per evaluation (non-overlapping, fixed)."""
    eval_sequence_length: int = 48
    """Steps per held-out window; at least burn_in + 16 so that 15-step predictions can be scored."""
    collapse_rank: float = 2.0
    """Effective rank of the latents below which the run is reported as collapsed."""
    # -- decoder and video
    decoder_width: int = 8
    """Channels of the decoder's last (full-resolution) layer; each halving of resolution doubles them."""
    decoder_lr: float = 1e-3
    """Learning rate of the decoder (its own Adam, on detached latents)."""
    decoder_batch: int = 32
    """Frames the decoder trains on per step."""
    decoder_every: int = 4
    """The decoder trains beside the world model at every this-many-th training step (it is for pictures only, and
    a step of it, with the stochastic latent's filter pass for its latents, costs about 0.6 of a world-model step on
    the default task); then `decoder_steps` more."""
    decoder_steps: int = 100
    """Decoder-only steps after the world model has finished, on its final latents."""
    video_steps: int = 200
    """Frames in videos/dream_vs_real.mp4; 0 writes no video."""
    video_context: int = 5
    """Real steps the model observes before it dreams open-loop in the video."""

    def __post_init__(self):
        positive = (
            "collect_steps collect_hold num_envs steps batch_size horizon eval_batch_size decoder_width decoder_batch "
            "decoder_every max_nonfinite"
        )
        for key in positive.split():
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(self.burn_in >= 0, "burn_in", f"must be >= 0, got {self.burn_in}")
        _require(
            self.latent == "deterministic" or (self.freeze_encoder and self.collapse_guard == "ema"),
            "latent",
            "'stochastic' predicts the frozen encoder's features: it needs freeze_encoder: true and collapse_guard: "
            f"ema, got {self.freeze_encoder} and {self.collapse_guard!r}",
        )
        # The model's own keywords are checked by its class (it is usable without a config), here at parse time.
        from worldmodel.dynamics.build import world_model_class
        from worldmodel.dynamics.world_model import OptionError

        model_class = world_model_class(self.latent)
        try:
            model_class.check_options(**{key: getattr(self, key) for key in model_class.keywords()})
        except OptionError as error:
            _require(False, error.key, error.reason)
        _require(
            self.sequence_length >= self.burn_in + 2,
            "sequence_length",
            f"must be >= burn_in + 2 = {self.burn_in + 2} so that a warm step has a successor, got "
            f"{self.sequence_length}",
        )
        _require(
            self.horizon <= self.sequence_length - 1,
            "horizon",
            f"must be <= sequence_length - 1 = {self.sequence_length - 1}: an open-loop unroll from a window's first "
            f"step reaches its last step after that many steps, so a longer one has no target; got {self.horizon}",
        )
        for key in ("lr", "final_lr", "weight_decay", "grad_clip", "decoder_lr", "collapse_rank"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(self.decoder_lr > 0, "decoder_lr", f"must be > 0, got {self.decoder_lr}")
        _require(0 <= self.warmup_steps < self.steps, "warmup_steps", f"must be in [0, steps={self.steps})")
        _require(0 <= self.ema <= self.final_ema <= 1, "ema", "expected 0 <= ema <= final_ema <= 1")
        _require(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        _require(0 < self.eval_fraction < 1, "eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        deepest = self.burn_in + max(PREDICTION_DEPTHS) + 1
        _require(
            self.eval_sequence_length >= deepest,
            "eval_sequence_length",
            f"must be >= burn_in + {max(PREDICTION_DEPTHS) + 1} = {deepest} to score "
            f"{max(PREDICTION_DEPTHS)}-step predictions, got {self.eval_sequence_length}",
        )
        _require(self.decoder_steps >= 0, "decoder_steps", f"must be >= 0, got {self.decoder_steps}")
        _require(self.video_steps >= 0, "video_steps", f"must be >= 0, got {self.video_steps}")
        _require(
            self.video_steps == 0 or 1 <= self.video_context < self.video_steps,
            "video_context",
            f"must be in [1, video_steps={self.video_steps}), got {self.video_context}",
        )

    def model_keywords(self) -> dict[str, Any]:
        """The keyword arguments of `build_world_model(obs_shape, action_dim, **keywords)`: `latent` and the keywords
        its class takes."""
        from worldmodel.dynamics.build import world_model_class

        return {"latent": self.latent, **{key: getattr(self, key) for key in world_model_class(self.latent).keywords()}}

    def loss_weight_dict(self, keys: tuple[str, ...]) -> dict[str, float]:
        """Weights for the losses named `keys` (a model's `loss_keys`), for `combine_losses`."""
        return {key: getattr(self.loss_weights, key) for key in keys}


@dataclass(frozen=True)
class DreamConfig:
    horizon: int = 500
    """Dream steps at most per rollout."""
    burn_in: int = 5
    """Real steps observed teacher-forced before a rollout starts, so that h carries real history."""
    start_windows: int = 4096
    """Real windows encoded once as the pool of start states; each generation draws its starts from it."""
    reset_starts: float = 0.5
    """Share of the start states that are real first steps of episodes (h = its value at a reset), the rest drawn
    from anywhere in the episodes: a real episode always begins at a reset, so the controller must meet that state
    in the dream too (uniform windows hold few of them: one per episode)."""
    cont_mode: Literal["threshold", "sample", "expected"] = "sample"
    """End a rollout when the continue probability falls below cont_threshold ('threshold'), or at random with
    probability 1 - continue probability at each step ('sample'); or weight each reward by the probability that
    the episode is still going ('expected': the mean of 'sample' without its noise)."""
    cont_threshold: float = 0.5
    """Continue probability below which a rollout ends ('threshold' only)."""
    latent_noise: float = 0.0
    """Std of Gaussian noise added to every predicted latent, in latent units (keeps a controller from relying on
    the model's exact predictions)."""
    disagreement_penalty: float = 0.0
    """Subtracted from each dream step's reward per unit of ensemble disagreement."""
    disagreement_limit: float = 0.0
    """End a rollout once the ensemble disagreement exceeds this; 0 turns it off."""

    def __post_init__(self):
        for key in ("horizon", "start_windows"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(self.burn_in >= 0, "burn_in", f"must be >= 0, got {self.burn_in}")
        _require(0 < self.cont_threshold < 1, "cont_threshold", f"must be in (0, 1), got {self.cont_threshold}")
        _require(0 <= self.reset_starts <= 1, "reset_starts", f"must be in [0, 1], got {self.reset_starts}")
        for key in ("latent_noise", "disagreement_penalty", "disagreement_limit"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class PlannerConfig:
    method: Literal["cem", "mppi"] = "cem"
    """'cem' refits on the best sequences (the elites); 'mppi' weights them by softmax(return / temperature)."""
    horizon: int = 15
    """Dream steps of each candidate action sequence."""
    candidates: int = 256
    """Action sequences sampled per real env and iteration."""
    elites: int = 32
    """Best sequences each refit uses."""
    iterations: int = 4
    """Sample-score-refit rounds per real decision."""
    temperature: float = 0.5
    """MPPI's softmax temperature, in return units ('mppi' only)."""
    initial_std: float = 1.0
    """Std each decision's search starts from (actions normalised to [-1, 1], or logits when discrete)."""
    min_std: float = 0.05
    """Floor of the refitted std."""
    discount: float = 0.99
    """Weight discount**t of the reward t steps ahead."""

    def __post_init__(self):
        # The planner checks its own settings (it is usable without a config), here at parse time.
        from agents.planner import PlannerSettings

        try:
            PlannerSettings(**dataclasses.asdict(self))
        except ValueError as error:  # "<field> must ...": the field's name first
            key, _, reason = str(error).partition(" ")
            _require(False, key, reason)


@dataclass(frozen=True)
class EvolveConfig:
    agent: Literal["es", "planner", "actor_critic"] = "es"
    """What acts on the world model: 'es', a controller evolved with CMA-ES in the dream (evolve.*); 'planner', no
    search beforehand: at every real step a planner searches action sequences in the dream (planner.*);
    'actor_critic', an actor and a critic trained on imagined trajectories of the dream (actor_critic.*). `wm cycle`
    runs each (docs/cycle.md, "Other agents")."""
    controller: Literal["linear", "mlp"] = "linear"
    """Controller over [z, h]: 'linear' (as in World Models) or 'mlp' (one tanh hidden layer)."""
    controller_hidden: int = 32
    """Hidden width of the 'mlp' controller."""
    population: int = 64
    """Candidates per CMA-ES generation (pycma's popsize)."""
    episodes: int = 16
    """Rollouts per candidate per generation; a candidate's fitness is their mean return."""
    generations: int = 20
    """CMA-ES generations."""
    sigma: float = 0.1
    """CMA-ES initial step size."""
    diagonal: bool = False
    """Separable CMA-ES (diagonal covariance): linear cost in the parameter count, for large controllers."""
    max_nonfinite_fraction: float = 0.5
    """Stop the run when more than this share of a generation's fitness values is non-finite."""
    final_episodes: int = 256
    """Dream rollouts (fresh starts) that score the final candidates: the ES mean and the best-ever candidate."""
    eval_episodes: int = 10
    """Real-env episodes that score the chosen controller."""
    eval_envs: int = 4
    """Sub-envs of the real-env vector env (evaluation and --in real)."""
    checkpoint_every: int = 5
    """Generations between checkpoints (one is always written at the end and on interruption)."""

    def __post_init__(self):
        for key in ("controller_hidden", "episodes", "generations", "final_episodes", "eval_episodes", "eval_envs",
                    "checkpoint_every"):  # fmt: skip
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(self.population >= 2, "population", f"must be >= 2, got {self.population}")
        _require(
            math.isfinite(self.sigma) and self.sigma > 0, "sigma", f"must be a finite number > 0, got {self.sigma}"
        )
        _require(
            0 <= self.max_nonfinite_fraction < 1,
            "max_nonfinite_fraction",
            f"must be in [0, 1), got {self.max_nonfinite_fraction}",
        )


@dataclass(frozen=True)
class ActorCriticConfig:
    steps: int = 3000
    """Training steps, each on `starts` imagined trajectories (checkpointed every run.checkpoint_every steps); 1000
    ended lower on the default task's model (docs/dream-and-evolution.md)."""
    horizon: int = 15
    """Imagined steps from each start state (the lambda-returns bootstrap from the critic after them)."""
    starts: int = 256
    """Start states drawn from the pool (dream.start_windows) per training step."""
    discount: float = 0.99
    """Discount of the reward one step ahead, times the predicted continue probability."""
    return_lambda: float = 0.95
    """lambda of the lambda-returns: 0 bootstraps from the next value, 1 sums the imagined rewards to the horizon."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic."""
    width: int = 128
    """Hidden width of the actor's and the critic's MLPs over [z, h]."""
    layers: int = 2
    """Hidden layers of each MLP."""
    entropy: float = 3e-3
    """Weight of the actor's entropy bonus, in units of normalised return."""
    target_rate: float = 0.02
    """EMA rate of the slow target critic (which the lambda-returns bootstrap from) towards the critic, per step."""
    grad_clip: float = 100.0
    """Gradient norm clip of each network (0: none)."""
    min_std: float = 0.1
    """Floor of a continuous actor's std before the tanh squash."""
    return_decay: float = 0.99
    """Decay of the EMA of the returns' 5th-95th percentile range, the scale returns are divided by (at least 1)."""

    def __post_init__(self):
        _require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        # The learner checks its own settings (it is usable without a config), here at parse time.
        from agents.actor_critic import ActorCriticSettings

        try:
            ActorCriticSettings(**{k: v for k, v in dataclasses.asdict(self).items() if k != "steps"})
        except ValueError as error:  # "<field> must ...": the field's name first
            key, _, reason = str(error).partition(" ")
            _require(False, key, reason)


@dataclass(frozen=True)
class CycleConfig:
    iterations: int = 2
    """Iterations at most; iteration 0 trains the world model on random-policy data (world_model.*) and evolves
    (evolve.*), each later one collects with the best controller, fine-tunes and evolves warm-started."""
    collect_steps: int = 3000
    """Transitions collected per iteration after the first, with the best controller so far (summed over envs)."""
    exploration: float = 0.1
    """Collection noise: discrete, the probability of a random action; continuous, the noise std as a fraction of
    the action range."""
    train_steps: int = 200
    """World-model fine-tuning steps per iteration after the first, on every training episode so far."""
    lr: float = 1e-4
    """Constant learning rate of fine-tuning (iteration 0's warmup-cosine schedule has ended at final_lr)."""
    generations: int = 10
    """CMA-ES generations per iteration after the first (iteration 0 runs evolve.generations)."""
    sigma: float = 0.05
    """CMA-ES initial step size around the best controller after the first iteration (iteration 0 uses
    evolve.sigma)."""
    target_return: float | None = None
    """Stop once the real-env eval return mean reaches this; null: the env's registered reward_threshold (CartPole-v1:
    475, CarRacing-v3: 900), no target where it names none. Set it above the best possible return to run every
    iteration."""
    max_env_steps: int = 30000
    """Real env steps the agent may learn from (every collected transition, iteration 0's random ones included);
    the cycle stops before an iteration whose collection would exceed them. Evaluation episodes are not counted
    (they never enter the store); summary.json reports them as eval_env_steps_total."""
    perception: str = "random"
    """The frozen ViT the world model reads: 'random' (its random initialisation, the control), 'pretrain' (I-JEPA,
    as pretrain.* says, on the frames of iteration 0's training episodes, once, after its collection: a `wm pretrain`
    run in <run>/perception whose EMA target encoder every iteration's world model keeps) or the path of a `wm
    pretrain` checkpoint or run directory (its EMA target encoder)."""
    start_curriculum: bool = False
    """Parking envs only: start the car where Parking-v0 starts it (the space in its front camera's view) and widen the
    start towards the whole lot (ParkingLot-v0) stage by stage, once the mean success rate of the last
    `curriculum_window` evaluations on a stage reaches `curriculum_threshold` (envs/curriculum.py). Each iteration
    records its stage; the target return stops the cycle only on the last stage."""
    curriculum_threshold: float = 0.8
    """Success rate in (0, 1] over the last `curriculum_window` evaluations that widens the start."""
    curriculum_window: int = 2
    """Evaluations on a stage whose success rates are averaged."""

    def __post_init__(self):
        for key in ("iterations", "collect_steps", "train_steps", "generations", "max_env_steps"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(0 <= self.exploration <= 1, "exploration", f"must be in [0, 1], got {self.exploration}")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0, got {self.lr}")
        _require(
            math.isfinite(self.sigma) and self.sigma > 0, "sigma", f"must be a finite number > 0, got {self.sigma}"
        )
        _require(
            self.target_return is None or math.isfinite(self.target_return),
            "target_return",
            f"must be a finite number or null, got {self.target_return}",
        )
        _require(
            bool(self.perception.strip()), "perception", "must be 'random', 'pretrain' or a `wm pretrain` checkpoint"
        )
        _require(
            0 < self.curriculum_threshold <= 1,
            "curriculum_threshold",
            f"must be a success rate in (0, 1], got {self.curriculum_threshold}",
        )
        _require(self.curriculum_window >= 1, "curriculum_window", f"must be >= 1, got {self.curriculum_window}")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Seed, device, precision, logging."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """`wm pretrain`: the I-JEPA vision encoder."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The gymnasium env the world model learns (`wm train`)."""
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    """`wm train`: the JEPA world model, its data collection, training and evaluation."""
    dream: DreamConfig = field(default_factory=DreamConfig)
    """`wm evolve`: how rollouts in the learned model start, run and end."""
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    """`wm evolve`: the agent (a controller and CMA-ES, the planner or the actor-critic) and the real-env evaluation."""
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    """`wm evolve --set evolve.agent=planner`: the planner's search in the dream at every real step."""
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    """`wm evolve --set evolve.agent=actor_critic`: an actor-critic trained in imagination (Dreamer's recipe)."""
    cycle: CycleConfig = field(default_factory=CycleConfig)
    """`wm cycle`: collect -> train -> evolve -> evaluate, iterated; what changes after the first iteration."""


def validate(cfg: Config) -> None:
    """Checks that span fields of several sections (each section checks its own fields when built)."""
    encoder, mask = cfg.pretrain.encoder, cfg.pretrain.mask
    grid = encoder.image_size // encoder.patch_size
    num_patches = grid * grid
    # The smallest target block must hold at least one patch, or the sampler could never place it.
    if int(round(mask.target_scale[0] * num_patches)) < 1:
        raise ConfigError(
            f"pretrain.mask.target_scale: on a {grid}x{grid} patch grid the smallest target block is empty; "
            "raise target_scale or use smaller patches"
        )
    if mask.min_keep > num_patches // 2:
        raise ConfigError(
            f"pretrain.mask.min_keep: must be at most half the {num_patches} patches, got {mask.min_keep}"
        )


# --------------------------------------------------------------------------------------------------
# Building the tree from plain data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check (and where lossless, convert) a plain value to the field type `tp`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        # No setting means anything at infinity or NaN (null says "none"), and an infinite learning rate would turn
        # every weight into NaN at the first step: refuse them here, for every field at once.
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp} at {key}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; valid keys here: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{prefix}.{error}" if prefix else str(error)) from None


def _merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (tuples become lists), as written to config.yaml."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data: dict) -> Config:
    """Build a validated Config from nested dicts (e.g. a run's config.yaml or a checkpoint)."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def shipped_presets() -> dict[str, Path]:
    """The presets installed with the toolkit (the `configs` package), by name: {'debug': .../debug.yaml, ...}."""
    folder = Path(importlib.resources.files("configs"))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def preset_purpose(path: Path) -> str:
    """A preset's first comment sentence: what it is for."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines).split(". ")[0].rstrip(".")
    return text if len(text) <= 100 else text[:100].rsplit(" ", 1)[0] + " ..."


def field_docs(cls: type) -> dict[str, str]:
    """The one-line documentation of each field of a config dataclass: the string literal below the field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for statement, following in zip(body, body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def describe(cfg: Any, prefix: str = "") -> list[str]:
    """Every field of `cfg` as `key: value  # documentation` lines, sections in order (what `wm config` prints)."""
    docs = field_docs(type(cfg))
    lines = []
    for item in dataclasses.fields(cfg):
        value, doc = getattr(cfg, item.name), docs.get(item.name, "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{item.name}:  # {doc}")
            lines += describe(value, prefix + "  ")
        else:
            shown = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True)
            shown = shown.strip().removesuffix("...").strip()
            lines.append(f"{prefix}{item.name}: {shown}  # {doc}")
    return lines


def resolve_preset(name_or_path: str | Path) -> Path:
    """A YAML path as given, or the name of a shipped preset (`debug`, `cartpole`, ...) from any directory."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    presets = shipped_presets()
    if str(name_or_path) not in presets:
        close = difflib.get_close_matches(str(name_or_path), presets, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"--config {str(name_or_path)!r} is neither a file nor a shipped preset{hint}; the presets are "
            f"{', '.join(presets)} (`wm presets` says what each is for)"
        )
    return presets[str(name_or_path)]


def _read_yaml(path: str | Path) -> dict:
    path = resolve_preset(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, the value read as YAML ('3' -> 3, '[1, 2]' -> list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: the key {key!r} has an empty part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(parts):
        value = {part: value}
    return value


def load_config(paths: list[str | Path] = (), overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults, then `base` (e.g. a saved run's config), then each YAML file, then each `key=value` override."""
    data = dict(base or {})
    for path in paths:
        data = _merge(data, _read_yaml(path))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return from_dict(data)


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, with both values."""

    def flatten(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out.update(flatten(value, path + ".") if isinstance(value, dict) else {path: value})
        return out

    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
