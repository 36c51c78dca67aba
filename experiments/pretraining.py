"""The I-JEPA pretraining loop (`Pretrainer`, `train_step`) and its probes: what `wm pretrain` runs.

It lives in experiments/ rather than worldmodel/perception/ because it drives checkpoints, logging and torchrun, which
live in experiments/ and which worldmodel/ may not import.

Every random draw of a training step (batch order, crops, masks) comes from generators seeded by
(seed, step), so a resumed run repeats exactly what an uninterrupted run would have done.

Under torchrun (see experiments/distributed.py) every process draws the whole batch's indices, crops and masks,
loads and crops only its share of the images and trains a DDP copy of the model: the updates equal one process's
on the whole batch, and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from experiments import config as config_lib
from experiments import distributed
from experiments.checkpoint import CheckpointError, load_latest, save_checkpoint
from experiments.config import Config, DataConfig, PretrainConfig
from experiments.pictures import PROBE_CURVE_PATH, save_mask_picture, write_probe_curve
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted, NonFiniteGuard, Run, RunFailure, checkpoint_differences
from experiments.runtime import (
    adamw,
    autocast,
    optimizer_step,
    prepare_runtime,
    rebalance_threads,
    rng_state,
    set_rng_state,
    step_generator,
    step_rng,
)
from worldmodel import schedules
from worldmodel.dynamics.metrics import effective_rank
from worldmodel.perception import augment, probe
from worldmodel.perception.data import (
    BadImageBudget,
    FractalDataset,
    ImageFolderDataset,
    StepBatchSampler,
    TensorImageDataset,
    collate_images,
)
from worldmodel.perception.glyphs import GlyphDataset
from worldmodel.perception.ijepa import IJEPA
from worldmodel.perception.masks import MultiBlockMaskSampler
from worldmodel.perception.vit import VisionTransformer

# Streams of per-step randomness (see runtime.step_seed): one each, so that adding one never shifts another.
STREAM_CROPS, STREAM_MASKS, STREAM_PROBE = 1, 2, 3
RANDOM_INIT_SEED_OFFSET = 10_007


# ------------------------------------------------------------------------------------------------------
# Data


def build_dataset(cfg: DataConfig, image_size: int, seed: int, show_progress: bool = True) -> Dataset:
    """The image source named by `data.source`."""
    if cfg.kind == "synthetic":
        per_class = math.ceil(cfg.num_images / cfg.num_classes)
        return FractalDataset(cfg.num_classes, per_class, cfg.stored_size, seed)
    if cfg.kind == "glyphs":
        return GlyphDataset(cfg.num_classes, math.ceil(cfg.num_images / cfg.num_classes), cfg.stored_size, seed)
    if cfg.kind == "folder":
        return ImageFolderDataset(cfg.target, cfg.stored_size, seed=seed)  # every image in the folder
    from experiments.frames import collect_env_frames  # only env sources need gymnasium

    frames, states, episodes = collect_env_frames(cfg.target, cfg.num_images, image_size, seed, show_progress)
    return TensorImageDataset(frames, states=states, name=cfg.target, groups=episodes)


def make_loader(
    dataset: Dataset, cfg: PretrainConfig, seed: int, start_step: int, rows: slice = slice(None),
    skip: Collection[int] = (),
) -> DataLoader:  # fmt: skip
    """Batches for steps start_step .. steps-1, in an order fixed by (seed, step); only rows `rows` of each (this
    process's share under torchrun) are loaded, less the indices in `skip` (images known to be unreadable)."""
    sampler = StepBatchSampler(len(dataset), cfg.optim.batch_size, seed, start_step, cfg.optim.steps, rows, skip)
    # In-memory sources gain nothing from worker processes; decoding an image folder does.
    workers = cfg.data.workers if isinstance(dataset, ImageFolderDataset) else 0
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(collate_images, image_shape=dataset.image_shape),
        timeout=300 if workers else 0,
        persistent_workers=False,
    )


def prepare_images(
    images: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator, batch: int | None = None,
    rows: slice = slice(None),
) -> torch.Tensor:  # fmt: skip
    """uint8 (B, C, h, w) -> normalised float (B, C, S, S), S the encoder's image size.

    The images may be rows `rows` of a batch of `batch` (a process's share under torchrun): the crops are drawn for
    the whole batch, as one process draws them, and these rows cropped.
    """
    size = cfg.encoder.image_size
    if cfg.data.augment == "crop_flip":
        height, width = images.shape[-2:]
        theta = augment.random_crop_theta(batch or len(images), height, width, scale=cfg.data.crop_scale,
                                          generator=generator)  # fmt: skip
        x = augment.crop_resize(images, theta[rows], size)
    else:
        x = augment.resize(images, size)
    return augment.normalize(x)


# ------------------------------------------------------------------------------------------------------
# Model and optimizer


def build_model(cfg: PretrainConfig, in_channels: int = 3) -> IJEPA:
    return IJEPA(
        cfg.encoder.image_size,
        cfg.encoder.patch_size,
        in_channels,
        cfg.encoder.size,
        cfg.predictor.width,
        cfg.predictor.depth,
        cfg.predictor.heads,
    )


def build_optimizer(model: IJEPA) -> torch.optim.AdamW:
    """AdamW over encoder and predictor; biases, norms and the mask token get no weight decay (as I-JEPA)."""
    decay, no_decay = [], []
    for module in (model.encoder, model.predictor):
        for name, param in module.named_parameters():
            (no_decay if param.ndim <= 1 or name == "mask_token" else decay).append(param)
    return adamw([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])


class StepResult(NamedTuple):
    loss: float
    grad_norm: float
    skipped: bool


def apply_schedules(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, step: int) -> dict[str, float]:
    """Set this step's learning rate and weight decay; return them with the step's EMA momentum."""
    o = cfg.optim
    lr = schedules.warmup_cosine(step, o.steps, o.warmup_steps, o.start_lr, o.lr, o.final_lr)
    weight_decay = schedules.cosine(step, o.steps, o.weight_decay, o.final_weight_decay)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.param_groups[0]["weight_decay"] = weight_decay
    return {"lr": lr, "weight_decay": weight_decay, "ema": schedules.linear(step, o.steps, o.ema, o.final_ema)}


def train_step(
    model: IJEPA,
    optimizer: torch.optim.Optimizer,
    scaler,
    images: torch.Tensor,
    masks,
    momentum: float,
    cfg: PretrainConfig,
    device: torch.device,
    precision: str,
    loss_fn: Callable[..., dict[str, torch.Tensor]] | None = None,
    weight: float = 1.0,
) -> StepResult:
    """One optimizer step and one EMA update, both skipped when the loss or gradient is not finite.

    Under torchrun `images` are this process's share of the batch, `loss_fn` the model's loss through DDP and
    `weight` this share of the batch's images times the world size (1 when the shares are equal): DDP averages the
    gradients, so the processes' losses averaged are the whole batch's mean, which is the loss reported.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = (loss_fn or model.loss)(images, masks)["jepa"] * weight
    value = distributed.average_over_processes({"jepa": loss})["jepa"]
    update = optimizer_step(loss, optimizer, scaler, cfg.optim.grad_clip, finite=math.isfinite(value))
    if not update.skipped:
        model.update_target(momentum)
    return StepResult(value, update.grad_norm, update.skipped)


class Placement(NamedTuple):
    """Where this process's readable images sit in a step's batch, over every process (one process: all of it)."""

    total: int
    """Readable images in the whole batch."""
    rows: slice
    """This process's among them."""
    fewest: int
    """The fewest readable images any process holds."""


# ------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def encode_all(
    encoder: VisionTransformer,
    images: torch.Tensor,
    cfg: PretrainConfig,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
) -> torch.Tensor:
    """Mean-pooled features of uint8 images (N, C, h, w) -> float32 (N, D)."""
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = augment.normalize(augment.resize(images[start : start + batch_size], cfg.encoder.image_size))
        with autocast(device, precision):
            out.append(encoder.pooled(x.to(device)).float().cpu())
    encoder.train()
    return torch.cat(out)


class ProbeSet(NamedTuple):
    """A fixed, seeded subset of the data for the frozen-feature probes."""

    images: torch.Tensor  # (N, C, h, w) uint8
    labels: torch.Tensor | None  # (N,)
    states: torch.Tensor | None  # (N, S)
    train: torch.Tensor  # indices into the subset
    test: torch.Tensor
    groups: torch.Tensor | None = None  # (N,) each image's group (env frames: its episode), kept whole by the split


def build_probe_set(dataset: Dataset, cfg: PretrainConfig, seed: int) -> ProbeSet | None:
    """The probes' seeded subset of at most eval.max_images labelled images, split into fitting and held-out parts:
    whole groups (env frames: episodes) held out where the dataset has them, single images elsewhere."""
    labels, states = getattr(dataset, "labels", None), getattr(dataset, "states", None)
    if labels is None and states is None:
        return None
    count = min(len(dataset), cfg.eval.max_images)
    index = torch.from_numpy(step_rng(seed, 0, STREAM_PROBE).permutation(len(dataset))[:count])
    items = [dataset[int(i)] for i in index]
    kept = [k for k, item in enumerate(items) if item.ok]
    if len(kept) < 2:  # the probes split train from test: a subset this unreadable cannot be scored
        print(f"no probes: only {len(kept)} of the {count} probe images can be read", file=sys.stderr)
        return None
    images = torch.stack([items[k].image for k in kept])  # (N, C, h, w)
    index = index[kept]
    groups = getattr(dataset, "groups", None)
    groups = None if groups is None else groups[index]
    if groups is not None and len(groups.unique()) >= 2:  # env frames: whole episodes held out
        train, test = probe.split_by_groups(groups, cfg.eval.test_fraction, seed)
    else:
        train, test = probe.split_train_test(len(index), cfg.eval.test_fraction, seed)
    return ProbeSet(
        images,
        None if labels is None else labels[index],
        None if states is None else states[index],
        torch.as_tensor(train),
        torch.as_tensor(test),
        groups,
    )


def run_probes(features: torch.Tensor, probes: ProbeSet, cfg: PretrainConfig) -> dict:
    """Probe scores of one encoder's features (N, F) on the probe set, and the collapse watch: the effective rank of
    the centred features and their smallest and mean per-dimension std (a collapsing encoder's rank falls)."""
    tr, te = probes.train, probes.test
    std = features.std(dim=0)  # (F,)
    out = {"feature_rank": effective_rank(features - features.mean(dim=0)), "feature_std_min": float(std.min()),
           "feature_std_mean": float(std.mean())}  # fmt: skip
    if probes.labels is not None:
        y = probes.labels
        out["knn_top1"] = probe.knn_top1(features[tr], y[tr], features[te], y[te], k=cfg.eval.knn_k)
        centred = features - features[tr].mean(dim=0)  # the fitting images' mean: a shared direction cosine sees
        out["knn_top1_centred"] = probe.knn_top1(centred[tr], y[tr], centred[te], y[te], k=cfg.eval.knn_k)
        num_classes = int(y.max()) + 1
        out["linear_top1"] = probe.linear_probe_accuracy(features[tr], y[tr], features[te], y[te], num_classes)
    if probes.states is not None:
        r2 = probe.linear_probe_r2(features[tr], probes.states[tr], features[te], probes.states[te])
        out["state_r2"] = r2.mean
        out["state_r2_per_dim"] = [round(float(v), 4) for v in r2.per_dim]
    return out


def random_init_encoder(cfg: PretrainConfig, seed: int, in_channels: int = 3) -> VisionTransformer:
    """An untrained encoder of the same shape: the baseline that gives probe figures their meaning."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + RANDOM_INIT_SEED_OFFSET)
        return VisionTransformer(cfg.encoder.image_size, cfg.encoder.patch_size, in_channels, cfg.encoder.size)


# ------------------------------------------------------------------------------------------------------
# A whole run


@dataclasses.dataclass
class Pretrainer:
    """Trains `model` on `dataset` and logs to `run`. Parts are injected so tests can swap any of them."""

    model: IJEPA
    dataset: Dataset
    cfg: Config
    run: Run
    device: torch.device
    precision: str

    def __post_init__(self):
        pcfg = self.cfg.pretrain
        self.optimizer = build_optimizer(self.model)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.masks = MultiBlockMaskSampler(self.model.encoder.grid, **dataclasses.asdict(pcfg.mask))
        self.step = 0
        self.nonfinite = NonFiniteGuard(pcfg.optim.max_nonfinite, "lower pretrain.optim.lr or check the data")
        self.bad_images = BadImageBudget(self.dataset, pcfg.data.max_bad_images)
        # Rank 0 alone evaluates (the probes read nothing the others need).
        self.probes = build_probe_set(self.dataset, pcfg, self.cfg.run.seed) if distributed.is_main() else None
        self.random_scores: dict | None = None
        self.probe_history: list[dict] = []  # every evaluation's scores so far, for probe_curve.png
        self.rows = distributed.even_share(pcfg.optim.batch_size, "pretrain.optim.batch_size")

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "command": "pretrain",
            "step": self.step,
            "config": config_lib.to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "counters": {**self.nonfinite.state_dict(), **self.bad_images.state_dict()},
            "probe_history": self.probe_history,
        }

    def save(self) -> None:
        save_checkpoint(self.run.checkpoint_dir / "latest.pt", self.state_dict())

    def resume(self) -> None:
        state, path = load_latest(self.run.checkpoint_dir)
        differences = checkpoint_differences(state, path, "pretrain", self.cfg)
        if differences:
            raise CheckpointError(f"{path} was written under another config:\n  " + "\n  ".join(differences))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        counters = state["counters"]
        self.nonfinite.load_state_dict(counters)
        self.bad_images.load_state_dict(counters)
        self.probe_history = list(state.get("probe_history", []))
        self.step = state["step"]
        distributed.barrier()  # every process has read the checkpoint before rank 0 may replace it
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Probe scores of the EMA target encoder beside a random-init encoder of the same shape (`*_random`) and the
        online context encoder (`*_context`), which may read the images better than the target the run reports."""
        if self.probes is None:
            return {}
        pcfg = self.cfg.pretrain
        if self.random_scores is None:
            baseline = random_init_encoder(pcfg, self.cfg.run.seed).to(self.device)
            features = encode_all(baseline, self.probes.images, pcfg, self.device, self.precision)
            self.random_scores = run_probes(features, self.probes, pcfg)
        features = encode_all(self.model.target_encoder, self.probes.images, pcfg, self.device, self.precision)
        scores = run_probes(features, self.probes, pcfg)
        scores.update({f"{key}_random": value for key, value in self.random_scores.items()})
        features = encode_all(self.model.encoder, self.probes.images, pcfg, self.device, self.precision)
        scores.update({f"{key}_context": value for key, value in run_probes(features, self.probes, pcfg).items()})
        scores["step"] = self.step
        numbers = {f"eval/{k}": v for k, v in scores.items() if isinstance(v, float)}
        self.run.log(self.step, numbers)
        self.probe_history = [old for old in self.probe_history if old["step"] < self.step] + [
            numbers | {"step": self.step}
        ]
        write_probe_curve(self.run.path / PROBE_CURVE_PATH, self.probe_history, pcfg.data.source)
        return scores

    # -- training --------------------------------------------------------------------------------------
    def train(self, stop: GracefulStop) -> dict:
        pcfg, seed = self.cfg.pretrain, self.cfg.run.seed
        total = pcfg.optim.steps
        self.run.start_at(self.step)
        loader = make_loader(self.dataset, pcfg, seed, self.step, self.rows, skip=self.bad_images.bad)
        loss_fn = distributed.data_parallel(self.model, self.device)
        bar = Progress(total, "pretrain", initial=self.step, unit="step", enabled=self.cfg.run.progress)
        window_start, window_images = time.monotonic(), 0
        for batch in loader:
            rebalance_threads()  # a neighbour that came or went since the last look
            step = self.step
            place = self.place(batch)
            # Fewer than two readable images in the batch, or (under torchrun) none in some process's share: a step
            # the processes skip together.
            if place.total < 2 or place.fewest == 0:
                self.step = step + 1
                bar.update(1)
                continue
            crops = step_generator(seed, step, STREAM_CROPS)
            images = prepare_images(batch.images, pcfg, crops, place.total, place.rows).to(self.device)
            masks = self.masks(place.total, step_rng(seed, step, STREAM_MASKS))  # the whole batch's, as one process
            masks = type(masks)(*(m[place.rows].to(self.device) for m in masks))
            scheduled = apply_schedules(self.optimizer, pcfg, step)
            result = train_step(
                self.model,
                self.optimizer,
                self.scaler,
                images,
                masks,
                scheduled["ema"],
                pcfg,
                self.device,
                self.precision,
                loss_fn,
                len(images) * distributed.world_size() / place.total,
            )
            self.nonfinite.record(result.skipped, step, result.loss)
            self.step = step + 1
            window_images += place.total
            bar.update(1, loss=result.loss)
            if self.step % self.cfg.run.log_every == 0 or self.step == total:
                elapsed = time.monotonic() - window_start
                self.run.log(
                    self.step,
                    {
                        "loss/jepa": result.loss,
                        "train/grad_norm": result.grad_norm,
                        "train/lr": scheduled["lr"],
                        "train/weight_decay": scheduled["weight_decay"],
                        "train/ema": scheduled["ema"],
                        "train/skipped_steps": self.nonfinite.total,
                        "data/bad_images": self.bad_images.num_bad,
                        "perf/images_per_s": window_images / max(elapsed, 1e-9),
                    },
                )
                window_start, window_images = time.monotonic(), 0
            if pcfg.eval.every and self.step % pcfg.eval.every == 0 and self.step < total:
                self.evaluate()
            if stop.check():
                self.save()
                self.run.write_summary(step=self.step)
                bar.close()
                raise Interrupted
            if self.step % self.cfg.run.checkpoint_every == 0 and self.step < total:
                self.save()
                self.run.write_summary(step=self.step)
        bar.close()
        scores = self.evaluate()
        self.save()  # with the last evaluation in its probe history
        return {
            "step": self.step,
            "results": {"skipped_steps": self.nonfinite.total, "bad_images": self.bad_images.num_bad},
            "probe": scores,
        }

    def place(self, batch) -> Placement:
        """Count the step's unreadable images, over every process, and place this process's readable ones."""
        shares = distributed.all_gather_object((len(batch.images), batch.bad_indices, batch.bad_errors))
        counts = [count for count, _, _ in shares]
        bad = [(index, error) for _, indices, errors in shares for index, error in zip(indices, errors, strict=True)]
        self.count_bad_images([index for index, _ in bad], [error for _, error in bad])
        start = sum(counts[: distributed.rank()])
        return Placement(sum(counts), slice(start, start + len(batch.images)), min(counts))

    def count_bad_images(self, indices: list[int], errors: list[str]) -> None:
        """Skip unreadable images with a note the first time each is met (the loader skips it thereafter); too many
        distinct ones stop the run (the budget names the files)."""
        if not indices:
            return
        try:
            new = self.bad_images.record(indices, errors)
        except RuntimeError as error:
            raise RunFailure(f"{error}\n(raise pretrain.data.max_bad_images to allow more)") from None
        if distributed.is_main():
            why = dict(zip(indices, errors, strict=True))
            for index in new:
                print(f"skipped unreadable image {self.dataset.describe(index)}: {why[index]}", file=sys.stderr)


def pretrain(run: Run, stop: GracefulStop) -> dict:
    """Build the parts from the run's config and train."""
    cfg = run.cfg
    device, precision = prepare_runtime(cfg.run, run.path)
    dataset = build_dataset(cfg.pretrain.data, cfg.pretrain.encoder.image_size, cfg.run.seed, cfg.run.progress)
    model = build_model(cfg.pretrain).to(device)
    trainer = Pretrainer(model, dataset, cfg, run, device, precision)
    if run.resumed:
        trainer.resume()
    elif distributed.is_main():
        save_mask_picture(run.path / "masks.png", dataset, trainer.masks, cfg.pretrain, cfg.run.seed)
    run.write_summary(
        device=str(device), precision=precision, dataset={"source": cfg.pretrain.data.source, "images": len(dataset)}
    )
    results = trainer.train(stop)
    print_probe(results["probe"])
    return results


def print_probe(scores: dict) -> None:
    for key in ("knn_top1", "linear_top1", "state_r2", "feature_rank"):
        if key in scores:
            print(
                f"probe {key}: {scores[key]:.3f} (random-init encoder: {scores[key + '_random']:.3f})", file=sys.stderr
            )
