"""World-model training: the model, its optimizer and schedules, one training step (`train_step`), the trainer
(`WorldModelTrainer`) and a whole `wm train` run (`train`): learn a JEPA world model of a gymnasium env from
random-policy rollouts.

    wm train --config configs/cartpole.yaml
    wm train --config configs/cartpole.yaml --encoder runs/<pretrain run>/checkpoints/latest.pt
    wm train --config configs/cartpole.yaml --episodes runs/<earlier run>/episodes

The life of a run: save a checkpoint of the initial model -> collect random-policy episodes into `<run>/episodes`
(or reuse a store), stored shard by shard, so that a run stopped while collecting resumes the collection -> split
the store by episode, the last `eval_fraction` held out -> save a step-0 checkpoint -> with a frozen encoder, encode
every frame once into the store's latent cache -> train (the decoder beside it every `decoder_every` steps),
evaluating on the held-out episodes every `eval_every` steps -> train the decoder alone for `decoder_steps` more
steps -> final evaluation into summary.json's `model` section -> videos/dream_vs_real.mp4.

It lives in experiments/ rather than worldmodel/dynamics/ because it drives checkpoints, logging and torchrun, which
live in experiments/ and which worldmodel/ may not import. The collection lives in experiments/collection.py, the
window sources in windows.py, the encoder's features and latent cache in features.py.

Every random draw of a training step (window starts, SIGReg directions, the decoder's frames) comes from
generators seeded by (seed, step), so a resumed run repeats exactly what an uninterrupted run would have done.

Under torchrun (see experiments/distributed.py) collection and encoding are split across the processes, and each
training step's windows too: every process draws the whole batch's window starts, loads its share of them and
trains a DDP copy of the model, whose updates equal one process's on the whole batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from envs import EnvSpec, Windows
from experiments import config as config_lib
from experiments import distributed
from experiments.checkpoint import CheckpointError, load_latest, save_checkpoint
from experiments.collection import collect_episodes, collection_figures, open_store, recorded_store
from experiments.config import PREDICTION_DEPTHS, Config, WorldModelConfig
from experiments.features import encoder_fingerprint, fill_latent_cache, load_pretrained_encoder, standardize_features
from experiments.inputs import env_spec
from experiments.progress import Progress
from experiments.rundir import (
    GracefulStop,
    Interrupted,
    NonFiniteGuard,
    Run,
    RunFailure,
    checkpoint_differences,
    path_in_run,
)
from experiments.runtime import (
    NonFiniteParametersError,
    autocast,
    optimizer_step,
    prepare_runtime,
    rebalance_threads,
    rng_state,
    set_rng_state,
    step_generator,
    step_rng,
)
from experiments.video import VIDEO_FPS, dream_clip, side_by_side, write_mp4
from experiments.windows import StoreWindows, WindowSource, split_episodes
from worldmodel import schedules
from worldmodel.dynamics.build import build_world_model
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.metrics import evaluate_world_model
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch, batch_from_windows, combine_losses

# Streams of per-step randomness (see runtime.step_seed): one each, so that adding one never shifts another. The
# world-model training's other streams: STREAM_FEATURE_STATISTICS = 4 (features.py), STREAM_COLLECT = 5 (collection.py).
STREAM_WINDOWS, STREAM_SIGREG, STREAM_DECODER = 1, 2, 3
COLLECT_PHASE = "collect"  # the phase of the checkpoint saved before the episodes are collected (see `train`)
VIDEO_PATH = "videos/dream_vs_real.mp4"


# ------------------------------------------------------------------------------------------------------
# Model, optimizer and one training step


def build_model(cfg: WorldModelConfig, spec: EnvSpec) -> WorldModel:
    """The world model for the env's observations and actions: the class of `cfg.latent`, its keywords straight
    from the config."""
    return build_world_model(spec.obs_shape, spec.action_dim, **cfg.model_keywords())


def build_decoder(cfg: WorldModelConfig, spec: EnvSpec) -> Decoder | None:
    """A decoder of latents into frames of the env's size; None for state observations (nothing to draw)."""
    if spec.obs_mode != "pixels":
        return None
    return Decoder(cfg.latent_dim, spec.obs_shape[0], spec.obs_shape[2], cfg.decoder_width)


def build_optimizer(model: WorldModel, cfg: WorldModelConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on weight matrices only.

    Biases and norms are left undecayed as usual; the ensemble keeps its biases as 3-D tensors (b1, b2), so
    parameters are told apart by name (weights start with "w") as well as by shape.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_matrix = param.ndim >= 2 and name.rsplit(".", 1)[-1].startswith("w")
            (decay if is_matrix else no_decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )


def apply_schedules(
    optimizer: torch.optim.Optimizer, cfg: WorldModelConfig, step: int, constant_lr: float | None = None
) -> dict[str, float]:
    """Set this step's learning rate (warmup, then cosine); return it with the step's EMA momentum.

    With `constant_lr` (fine-tuning after the schedule has ended) the rate is that and the momentum final_ema.
    """
    if constant_lr is None:
        lr = schedules.warmup_cosine(step, cfg.steps, cfg.warmup_steps, 0.0, cfg.lr, cfg.final_lr)
        ema = schedules.linear(step, cfg.steps, cfg.ema, cfg.final_ema)
    else:
        lr, ema = constant_lr, cfg.final_ema
    for group in optimizer.param_groups:
        group["lr"] = lr
    return {"lr": lr, "ema": ema}


class StepResult(NamedTuple):
    losses: dict[str, float]
    """Each loss of the step, unweighted."""
    total: float
    """The weighted sum that was minimised."""
    grad_norm: float
    skipped: bool
    """The loss or gradient was not finite: no optimizer step and no EMA update happened."""


def train_step(
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    batch: WorldModelBatch,
    weights: dict[str, float],
    momentum: float,
    cfg: WorldModelConfig,
    generator: torch.Generator,
    device: torch.device,
    precision: str,
    loss_fn: Callable[..., dict[str, torch.Tensor]] | None = None,
    shard: distributed.Shard | None = None,
) -> StepResult:
    """One optimizer step and one EMA update, both skipped when the loss or gradient is not finite.

    Under torchrun `batch` is this process's share of the batch, `loss_fn` the model's loss through DDP
    (`distributed.data_parallel`) and `shard` how the losses combine across processes (see `WorldModel.loss`); the
    losses reported are averaged over the processes: the whole batch's.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        losses = (loss_fn or model.loss)(batch, cfg.horizon, cfg.burn_in, generator=generator, shard=shard)
        total = combine_losses(losses, weights)
    values = distributed.average_over_processes({**losses, "total": total})
    total_value = values.pop("total")
    update = optimizer_step(total, optimizer, scaler, cfg.grad_clip, finite=math.isfinite(total_value))
    if not update.skipped:
        model.update_target(momentum)
    return StepResult(values, total_value, update.grad_norm, update.skipped)


def decoder_step(
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    model: WorldModel,
    obs: torch.Tensor,
    features: torch.Tensor | None = None,
    weight: float = 1.0,
    latents: torch.Tensor | None = None,
) -> float:
    """One decoder update on the target latents of some frames; the world model is only read, never trained.

    Args:
        obs: (N, H, W, C) uint8 frames, the decoder's targets.
        features: (N, F) their cached frozen-encoder features, used in place of obs to get the latents.
        weight: under torchrun, this process's share of the step's frames times the world size (the decoder is
            not wrapped in DDP: its gradients are averaged here), so that the losses averaged over processes are the
            whole step's mean; a process with no frame (N = 0) still joins the average.
        latents: (N, D) the latents to draw, in place of the model's targets of the frames (where a model's
            latents depend on the history, not `WorldModel.frame_latents`: `real_states` of the frames' windows).
    Returns:
        the decoder's loss (NaN, and no update, when it is not finite).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=obs.device)
    if len(obs):
        if latents is None:
            with torch.no_grad():
                latents = model.targets(features=features) if features is not None else model.targets(obs)  # (N, D)
        loss = decoder.loss(latents, obs) * weight
    value = distributed.average_over_processes({"decoder": loss})["decoder"]
    if not math.isfinite(value):
        return float("nan")
    if len(obs):
        loss.backward()
    distributed.average_gradients(decoder.parameters())
    optimizer.step()
    return value


# ------------------------------------------------------------------------------------------------------
# The trainer


def nonfinite_advice(lr_key: str) -> str:
    """What a run stopped by non-finite losses tells the user, naming the learning rate that was in use."""
    return f"lower {lr_key} or check the data"


@dataclass
class WorldModelTrainer:
    """Trains `model` (and `decoder`) on windows from `data` and logs to `run`. Parts are injected.

    `provenance` says where the data and encoder came from (episodes path, episode count, encoder checkpoint,
    latent-cache key, collection figures); it is saved in every checkpoint so a resume uses the same.

    `wm cycle` trains the same trainer in several stretches between evolutions: it replaces `save` with its own
    checkpoint (`checkpointer`) and shifts the step of every log line onto its own step axis (`log_offset`).
    """

    model: WorldModel
    decoder: Decoder | None
    data: WindowSource
    cfg: Config
    run: Run
    spec: EnvSpec
    device: torch.device
    precision: str
    provenance: dict[str, Any]
    checkpointer: Callable[[], None] | None = None
    """Writes the checkpoint in place of `save`'s train checkpoint."""
    log_offset: int = 0
    """Added to the step of every log line."""

    def __post_init__(self):
        wcfg = self.cfg.world_model
        self.optimizer = build_optimizer(self.model, wcfg)
        self.decoder_optimizer = (
            torch.optim.Adam(self.decoder.parameters(), lr=wcfg.decoder_lr) if self.decoder is not None else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.weights = wcfg.loss_weight_dict(self.model.loss_keys)
        self.use_features = self.provenance.get("latent_key") is not None
        self.step = 0
        self.decoder_step = 0  # decoder-only steps done after the world model finished
        self.nonfinite = NonFiniteGuard(self.cfg.world_model.max_nonfinite, nonfinite_advice("world_model.lr"))
        self._eval_batch: tuple[WorldModelBatch, torch.Tensor | None] | None = None
        # Under torchrun: this process's rows of every batch, how the losses combine, the loss through DDP (made at
        # the first step, where every process is).
        self.rows = distributed.even_share(wcfg.batch_size, "world_model.batch_size")
        self.shard = distributed.Shard() if distributed.active() else None
        self._loss_fn: Callable[..., dict[str, torch.Tensor]] | None = None

    @property
    def loss_fn(self) -> Callable[..., dict[str, torch.Tensor]]:
        """The model's loss, through DistributedDataParallel under torchrun."""
        if self._loss_fn is None:
            self._loss_fn = distributed.data_parallel(self.model, self.device)
        return self._loss_fn

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "command": "train",
            "step": self.step,
            "decoder_step": self.decoder_step,
            "config": config_lib.to_dict(self.cfg),
            "env_spec": self.spec.to_dict(),
            "data": self.provenance,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "decoder": self.decoder.state_dict() if self.decoder is not None else None,
            "decoder_optimizer": self.decoder_optimizer.state_dict() if self.decoder_optimizer is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "counters": self.nonfinite.state_dict(),
        }

    def save(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer()
            return
        save_checkpoint(self.run.checkpoint_dir / "latest.pt", self.state_dict())
        self.run.write_summary(step=self.step)

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log(self.step + self.log_offset, metrics)

    def load_state(self, state: dict, path: Path) -> None:
        """Continue from a checkpoint that `read_resume_state` checked."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.decoder is not None:
            self.decoder.load_state_dict(state["decoder"])
            self.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        counters = state["counters"]
        self.nonfinite.load_state_dict(counters)
        self.step, self.decoder_step = state["step"], state["decoder_step"]
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # -- evaluation ------------------------------------------------------------------------------------
    def eval_batch(self) -> tuple[WorldModelBatch, torch.Tensor | None]:
        """The held-out windows (fixed for the run) and their true states, if the env has them."""
        if self._eval_batch is None:
            wcfg = self.cfg.world_model
            windows = self.data.held_out_windows(wcfg.eval_batch_size, wcfg.eval_sequence_length)
            state = None if windows.state is None else torch.as_tensor(windows.state, device=self.device)
            self._eval_batch = batch_from_windows(windows, self.device, self.use_features), state
        return self._eval_batch

    def evaluate(self) -> dict[str, float]:
        """Every world-model metric on the held-out episodes (model/ in the metrics), with a collapse warning."""
        wcfg = self.cfg.world_model
        batch, state = self.eval_batch()
        metrics = evaluate_world_model(
            self.model, batch, PREDICTION_DEPTHS, wcfg.burn_in, wcfg.collapse_rank, state=state
        )
        self.log({f"model/{key}": value for key, value in metrics.items()})
        if metrics["collapsed"]:
            print(
                f"step {self.step}: warning: the latents have collapsed: effective rank "
                f"{metrics['effective_rank']:.2f} is below world_model.collapse_rank={wcfg.collapse_rank}",
                file=sys.stderr,
            )
        return metrics

    # -- training --------------------------------------------------------------------------------------
    def train(
        self,
        stop: GracefulStop,
        until: int | None = None,
        constant_lr: float | None = None,
        begin: int = 0,
        lr_key: str = "world_model.lr",
    ) -> dict:
        """Train up to step `until` (default world_model.steps), finish the decoder and evaluate.

        Args:
            constant_lr: fine-tuning past the schedule: this learning rate and the final EMA momentum throughout.
            begin: the step this stretch of training began at (where its progress bar starts).
            lr_key: the config key of the learning rate in use, which the advice names when training diverges.
        Returns:
            the step reached, results and the held-out model metrics (summary.json's `model`).
        """
        wcfg, seed = self.cfg.world_model, self.cfg.run.seed
        total = wcfg.steps if until is None else until
        self.nonfinite.advice = nonfinite_advice(lr_key)
        self.run.start_at(self.step + self.log_offset)
        bar = Progress(total - begin, "train", initial=self.step - begin, unit="step", enabled=self.cfg.run.progress)
        window_start, window_sequences = time.monotonic(), 0
        decoder_loss = float("nan")  # the latest decoder step's, for the log
        while self.step < total:
            rebalance_threads()  # a neighbour that came or went since the last look
            step = self.step
            windows = self.data.train_windows(
                wcfg.batch_size, wcfg.sequence_length, step_rng(seed, step, STREAM_WINDOWS), self.rows
            )
            batch = batch_from_windows(windows, self.device, use_features=self.use_features)
            scheduled = apply_schedules(self.optimizer, wcfg, step, constant_lr)
            try:
                result = train_step(
                    self.model,
                    self.optimizer,
                    self.scaler,
                    batch,
                    self.weights,
                    scheduled["ema"],
                    wcfg,
                    step_generator(seed, step, STREAM_SIGREG),
                    self.device,
                    self.precision,
                    self.loss_fn,
                    self.shard,
                )
            except NonFiniteParametersError as error:  # diverged too: name the learning rate in use as well
                raise NonFiniteParametersError(f"step {step}: {error}; {self.nonfinite.advice}") from None
            self.nonfinite.record(result.skipped, self.step, result.total)
            if step % wcfg.decoder_every == 0:
                decoder_loss = self.train_decoder(
                    windows, step_rng(seed, step, STREAM_DECODER), wcfg.batch_size, self.rows
                )
            self.step = step + 1
            window_sequences += wcfg.batch_size
            elapsed = time.monotonic() - window_start
            bar.update(1, loss=result.total, seq_s=window_sequences / max(elapsed, 1e-9))
            if self.step % self.cfg.run.log_every == 0 or self.step == total:
                self.log(
                    {
                        **{f"loss/{name}": value for name, value in result.losses.items()},
                        "loss/total": result.total,
                        "loss/decoder": decoder_loss,
                        "train/grad_norm": result.grad_norm,
                        "train/lr": scheduled["lr"],
                        "train/ema": scheduled["ema"],
                        "train/skipped_steps": self.nonfinite.total,
                        "perf/seq_per_s": window_sequences / max(elapsed, 1e-9),
                        "perf/frames_per_s": window_sequences * wcfg.sequence_length / max(elapsed, 1e-9),
                    },
                )
                window_start, window_sequences = time.monotonic(), 0
            if wcfg.eval_every and self.step % wcfg.eval_every == 0 and self.step < total:
                self.evaluate()
            if stop.check():
                self.save()
                bar.close()
                raise Interrupted
            if self.step % self.cfg.run.checkpoint_every == 0 and self.step < total:
                self.save()
        bar.close()
        self.save()
        self.finish_decoder(stop)
        metrics = self.evaluate()
        return {
            "step": self.step,
            "results": {"skipped_steps": self.nonfinite.total},
            "model": {**metrics, "collapsed": bool(metrics["collapsed"])},
        }

    def train_decoder(self, windows: Windows, rng: np.random.Generator, batch_size: int, rows: slice) -> float:
        """One decoder step on `decoder_batch` frames drawn from a training batch of `batch_size` windows, of which
        `windows` (b, T, ...) are rows `rows` (all of them alone; this process's share under torchrun)."""
        if self.decoder is None:
            return float("nan")
        b, T = windows.is_first.shape
        pick = rng.choice(batch_size * T, size=min(self.cfg.world_model.decoder_batch, batch_size * T), replace=False)
        own = pick[(pick >= rows.start * T) & (pick < rows.stop * T)] - rows.start * T  # (N,) into this share's b*T
        obs = torch.as_tensor(windows.obs.reshape(b * T, *windows.obs.shape[2:])[own])  # (b*T, H, W, C) -> (N, ...)
        features = latents = None
        if not self.model.frame_latents:  # e.g. the posterior's means along the windows
            with torch.no_grad():
                _, _, targets = self.model.real_states(batch_from_windows(windows, self.device, self.use_features))
            latents = targets.reshape(b * T, -1)[torch.as_tensor(own, device=self.device)]  # (b, T, D) -> (N, D)
        elif self.use_features and len(own):
            features = torch.as_tensor(windows.latent.reshape(b * T, -1)[own], device=self.device)  # (N, F)
        weight = len(own) * distributed.world_size() / len(pick)
        return decoder_step(
            self.decoder, self.decoder_optimizer, self.model, obs.to(self.device), features, weight, latents
        )

    def finish_decoder(self, stop: GracefulStop) -> None:
        """Decoder-only steps on the final latents: during training it chased latents that kept moving."""
        wcfg, seed = self.cfg.world_model, self.cfg.run.seed
        if self.decoder is None or self.decoder_step >= wcfg.decoder_steps:
            return
        bar = Progress(
            wcfg.decoder_steps, "decoder", initial=self.decoder_step, unit="step", enabled=self.cfg.run.progress
        )
        loss = float("nan")
        while self.decoder_step < wcfg.decoder_steps:
            # Windows of one frame each; latents that need the history (not frame_latents) get training-length
            # windows. Seeds continue after the world model's steps.
            rng = step_rng(seed, wcfg.steps + self.decoder_step, STREAM_DECODER)
            rows = distributed.share(wcfg.decoder_batch)
            length = 1 if self.model.frame_latents else wcfg.sequence_length
            windows = self.data.train_windows(wcfg.decoder_batch, length, rng, rows)
            loss = self.train_decoder(windows, rng, wcfg.decoder_batch, rows)
            self.decoder_step += 1
            bar.update(1, loss=loss)
            if stop.check():
                self.save()
                bar.close()
                raise Interrupted
        bar.close()
        self.log({"loss/decoder_final": loss})
        self.save()

    def write_video(self) -> dict | None:
        """videos/dream_vs_real.mp4: a held-out episode beside the model's decoded open-loop dream of it."""
        wcfg = self.cfg.world_model
        if self.decoder is None or wcfg.video_steps == 0 or not distributed.is_main():
            return None
        episode = self.data.held_out_episode()
        frames = min(wcfg.video_steps, episode.num_steps)
        if frames <= wcfg.video_context:
            print(f"no video: the longest held-out episode has only {episode.num_steps} steps", file=sys.stderr)
            return None
        obs = torch.tensor(episode.obs[:frames], device=self.device)  # (T, H, W, C), a copy: store arrays are read-only
        action = torch.tensor(episode.action[:frames], device=self.device)  # (T, A)
        real, dream = dream_clip(self.model, self.decoder, obs, action, wcfg.video_context)
        write_mp4(self.run.path / VIDEO_PATH, side_by_side(real, dream, wcfg.video_context), fps=VIDEO_FPS)
        return {"path": VIDEO_PATH, "frames": frames, "context": wcfg.video_context, "fps": VIDEO_FPS}


# ------------------------------------------------------------------------------------------------------
# A whole run


def read_resume_state(run: Run, cfg: Config, spec: EnvSpec, command: str = "train") -> tuple[dict, Path]:
    """The run's newest valid checkpoint, refused when it belongs to another command, config or env."""
    state, path = load_latest(run.checkpoint_dir)
    differences = checkpoint_differences(state, path, command, cfg)
    differences += EnvSpec.from_dict(state["env_spec"]).differences(spec)
    if differences:
        raise CheckpointError(f"{path} was written under another config or env:\n  " + "\n  ".join(differences))
    distributed.barrier()  # every process has read the checkpoint before rank 0 may replace it
    return state, path


def train(
    run: Run,
    stop: GracefulStop,
    encoder: dict[str, torch.Tensor] | None = None,
    encoder_path: str | None = None,
    episodes: Path | None = None,
) -> dict:
    """Build the parts from the run's config (collecting episodes first, unless given some) and train.

    Before collecting, a checkpoint of phase "collect" holds the initial model (a pretrained encoder included) and
    where the episodes go: `--resume` of a run stopped while collecting continues the collection from what the store
    holds, then trains as an uninterrupted run would.
    """
    cfg, wcfg = run.cfg, run.cfg.world_model
    device, precision = prepare_runtime(run.cfg.run, run.path)
    spec = env_spec(cfg.env)
    resume = read_resume_state(run, cfg, spec) if run.resumed else None

    model = build_model(wcfg, spec).to(device)
    decoder = build_decoder(wcfg, spec)
    decoder = decoder.to(device) if decoder is not None else None
    if resume is not None:
        provenance = dict(resume[0]["data"])
        store = open_store(recorded_store(provenance["episodes"], run.path), spec)
        collects = resume[0].get("collects", False)
    else:
        if encoder is not None:
            load_pretrained_encoder(model, encoder, str(encoder_path))
        store = open_store(episodes or run.path / "episodes", spec)
        collects = episodes is None
        provenance = {
            "episodes": path_in_run(store.path, run.path),  # relative inside the run: a moved run reads its own
            "num_episodes": None if collects else len(store),  # a collection's, once collected
            "encoder": None if encoder_path is None else path_in_run(encoder_path, run.path),
            "latent_key": encoder_fingerprint(model) if wcfg.freeze_encoder else None,
            "collected": None,
        }
        save_checkpoint(run.checkpoint_dir / "latest.pt", collection_state(model, cfg, spec, provenance, collects))
    if resume is None or resume[0].get("phase") == COLLECT_PHASE:
        if resume is not None:
            model.load_state_dict(resume[0]["model"])
            set_rng_state(resume[0]["rng"])  # where a run that never stopped stands before collecting
            print(f"resumed from {resume[1]} before training", file=sys.stderr)
        if collects:
            collected = collect_episodes(cfg, store, stop)
            provenance.update(num_episodes=len(store), collected=collection_figures(collected, cfg.env.action_repeat))
    if len(store) < provenance["num_episodes"]:
        raise RunFailure(f"{store.path} holds {len(store)} episodes, fewer than the {provenance['num_episodes']} used")
    split = split_episodes(store.episode_steps[: provenance["num_episodes"]], wcfg.eval_fraction)
    data = StoreWindows(store, split, provenance["latent_key"])
    trainer = WorldModelTrainer(model, decoder, data, cfg, run, spec, device, precision, provenance)
    run.write_summary(
        device=str(device),
        precision=precision,
        env=spec.to_dict(),
        data={
            **provenance,
            "train_episodes": split.first_held_out,
            "held_out_episodes": split.num_episodes - split.first_held_out,
            "train_steps": split.train_steps,
            "held_out_steps": split.total_steps - split.train_steps,
        },
    )
    if resume is not None and resume[0].get("phase") != COLLECT_PHASE:
        trainer.load_state(*resume)
    else:
        trainer.save()  # step 0: the episodes are collected, so a resume never collects again
    if provenance["latent_key"] is not None:
        encoded = fill_latent_cache(model, store, provenance["latent_key"], device, stop, cfg.run.progress)
        print(
            f"frozen encoder: {encoded} episodes encoded into the latent cache {provenance['latent_key']}",
            file=sys.stderr,
        )
    if not model.feature_statistics_set:  # also after a resume from the step-0 checkpoint, saved before them
        standardize_features(model, data, cfg, device, precision)
        trainer.save()  # with the statistics, so a resume from here uses the same ones
    results = trainer.train(stop)
    video = trainer.write_video()
    if video is not None:
        results["video"] = video
    print_model_metrics(results["model"])
    return results


def collection_state(model: WorldModel, cfg: Config, spec: EnvSpec, provenance: dict, collects: bool) -> dict:
    """The checkpoint of a run about to collect (phase "collect"): its initial model, its RNG state and where its
    episodes go (`collects`: whether it collects them). Step 0 and no feature statistics: no command loads it as a
    world model."""
    return {
        "command": "train",
        "phase": COLLECT_PHASE,
        "step": 0,
        "collects": collects,
        "config": config_lib.to_dict(cfg),
        "env_spec": spec.to_dict(),
        "data": provenance,
        "model": model.state_dict(),
        "rng": rng_state(),
    }


def print_model_metrics(metrics: dict) -> None:
    """The headline figures of the final evaluation, each beside its baseline, on stderr."""
    for k in PREDICTION_DEPTHS:
        print(
            f"pred_error_k{k}: {metrics[f'pred_error_k{k}']:.3f} (no-change baseline "
            f"{metrics[f'pred_error_k{k}_baseline']:.3f})",
            file=sys.stderr,
        )
    print(
        f"reward_error: {metrics['reward_error']:.4f} (mean baseline {metrics['reward_error_baseline']:.4f}); "
        f"cont_auc: {metrics['cont_auc']:.3f}; probe R2 z {metrics.get('probe_r2_z', math.nan):.3f}, "
        f"[z, h] {metrics.get('probe_r2_zh', math.nan):.3f}; effective rank {metrics['effective_rank']:.2f}"
        + (" (COLLAPSED)" if metrics["collapsed"] else ""),
        file=sys.stderr,
    )
