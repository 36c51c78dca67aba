"""Pictures a person would rather look at than read: the I-JEPA masks drawn over sample images and the probes against
the step beside the random-init encoder's (`wm pretrain`), the learning curve of a cycle (`wm cycle`)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from envs.atomic import atomic_write_bytes
from experiments.runtime import step_rng
from worldmodel.perception import augment
from worldmodel.perception.masks import MultiBlockMaskSampler

TARGET_COLOURS = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (64, 220, 120), (220, 80, 255), (255, 140, 0)]
STREAM_PICTURE = 4


def mask_picture(
    images: torch.Tensor, sampler: MultiBlockMaskSampler, rng: np.random.Generator, scale: int = 4
) -> Image.Image:
    """Rows of [image | context (hidden patches greyed) | target blocks outlined] for float images (B, C, H, W)
    in [0, 1]."""
    masks = sampler(images.shape[0], rng)
    grid = sampler.grid
    size = images.shape[-1] * scale
    patch = size // grid
    pictures = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    sheet = Image.new("RGB", (3 * size + 4 * 4, len(pictures) * (size + 4) + 4), (255, 255, 255))
    for row, picture in enumerate(pictures):
        base = Image.fromarray(picture[..., :3]).resize((size, size), Image.NEAREST)
        visible = np.zeros(grid * grid, dtype=bool)
        visible[masks.context[row].numpy()] = True
        context = np.asarray(base).copy()
        for index in np.flatnonzero(~visible):
            r, c = divmod(int(index), grid)
            context[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 96
        targets = base.copy()
        draw = ImageDraw.Draw(targets)
        for t, block in enumerate(masks.targets[row].numpy()):
            rows, cols = np.divmod(block, grid)
            box = (cols.min() * patch, rows.min() * patch, (cols.max() + 1) * patch - 1, (rows.max() + 1) * patch - 1)
            draw.rectangle(box, outline=TARGET_COLOURS[t % len(TARGET_COLOURS)], width=2)
        y = 4 + row * (size + 4)
        for column, tile in enumerate((base, Image.fromarray(context), targets)):
            sheet.paste(tile, (4 + column * (size + 4), y))
    return sheet


def save_mask_picture(path: Path, dataset, sampler: MultiBlockMaskSampler, cfg, seed: int) -> None:
    """masks.png in the run directory: the first `eval.mask_images` images with their masks."""
    count = min(cfg.eval.mask_images, len(dataset))
    if count == 0:
        return
    # Spread over the dataset, which is often ordered by class, so the picture shows several classes.
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    images = torch.stack([dataset[int(i)].image for i in picks])  # (B, C, h, w) uint8
    images = augment.resize(images, cfg.encoder.image_size)  # (B, C, H, W) float in [0, 1]
    mask_picture(images, sampler, step_rng(seed, 0, STREAM_PICTURE)).save(path)


# ------------------------------------------------------------------------------------------------------
# The learning curve

CURVE_SIZE = (720, 440)
CURVE_MARGIN = (70, 40, 30, 50)  # left, top, right, bottom
REAL_COLOUR, DREAM_COLOUR, TARGET_COLOUR, AXIS_COLOUR = (31, 119, 180), (255, 127, 14), (150, 150, 150), (60, 60, 60)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_axes(
    draw: ImageDraw.ImageDraw, x_high: float, y_low: float, y_high: float, title: str, x_label: str
) -> Callable[[float, float], tuple[float, float]]:
    """The frame, grid, ticks, title and x label of a CURVE_SIZE picture whose axes run over [0, x_high] and
    [y_low, y_high]; returns the map from (x, y) values to pixels."""
    left, top, right, bottom = CURVE_MARGIN
    width, height = CURVE_SIZE[0] - left - right, CURVE_SIZE[1] - top - bottom

    def point(x: float, y: float) -> tuple[float, float]:
        return left + width * x / x_high, top + height * (y_high - y) / (y_high - y_low)

    for tick in nice_ticks(y_low, y_high):
        _, y = point(0, tick)
        draw.line([(left, y), (left + width, y)], fill=(235, 235, 235))
        draw.text((left - 8, y), f"{tick:g}", fill=AXIS_COLOUR, anchor="rm")
    for tick in nice_ticks(0, x_high):
        px, _ = point(tick, y_low)
        draw.line([(px, top + height), (px, top + height + 4)], fill=AXIS_COLOUR)
        draw.text((px, top + height + 8), f"{tick:g}", fill=AXIS_COLOUR, anchor="mt")
    draw.rectangle([left, top, left + width, top + height], outline=AXIS_COLOUR)
    draw.text((left + width / 2, CURVE_SIZE[1] - 14), x_label, fill=AXIS_COLOUR, anchor="mm")
    draw.text((left + width / 2, 16), title, fill=(0, 0, 0), anchor="mm")
    return point


def learning_curve(history: list[dict], title: str, target: float | None = None) -> Image.Image:
    """Real return (mean ± std over the evaluation episodes) and dream return against the env steps used, one
    point per iteration (no dream point where the agent has no dream return: the planner's)."""
    image = Image.new("RGB", CURVE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = CURVE_MARGIN
    width, height = CURVE_SIZE[0] - left - right, CURVE_SIZE[1] - top - bottom
    x = [r["env_steps"] for r in history]
    real = [r["eval_return_mean"] for r in history]
    spread = [r["eval_return_std"] for r in history]
    dreamt = [(r["env_steps"], r["dream_return"]) for r in history if r["dream_return"] is not None]
    values = [bound for m, s in zip(real, spread, strict=True) for bound in (m - s, m + s)] + [v for _, v in dreamt]
    values += [target] if target is not None else []
    y_low, y_high = min(values + [0.0]), max(values + [1.0])
    y_pad = 0.05 * (y_high - y_low)
    y_low, y_high = y_low - y_pad, y_high + y_pad
    x_high = max(x) * 1.05 if x else 1.0

    point = draw_axes(draw, x_high, y_low, y_high, title, "real env steps")
    draw.text((12, top + height / 2), "return", fill=AXIS_COLOUR, anchor="lm")
    if target is not None:
        _, y = point(0, target)
        for start in range(left, left + width, 12):  # dashed
            draw.line([(start, y), (min(start + 6, left + width), y)], fill=TARGET_COLOUR, width=2)
    for pairs, colour in ((dreamt, DREAM_COLOUR), (list(zip(x, real, strict=True)), REAL_COLOUR)):
        points = [point(s, v) for s, v in pairs]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    for s, m, sd in zip(x, real, spread, strict=True):  # error bars: ± one std over the evaluation episodes
        (px, y_top), (_, y_bottom) = point(s, m + sd), point(s, m - sd)
        draw.line([(px, y_top), (px, y_bottom)], fill=REAL_COLOUR, width=1)
        draw.line([(px - 5, y_top), (px + 5, y_top)], fill=REAL_COLOUR)
        draw.line([(px - 5, y_bottom), (px + 5, y_bottom)], fill=REAL_COLOUR)
    legend = [("real return (mean ± std)", REAL_COLOUR)] + ([("dream return", DREAM_COLOUR)] if dreamt else [])
    legend += [("target", TARGET_COLOUR)] if target is not None else []
    for row, (label, colour) in enumerate(legend):
        y = top + 12 + 16 * row
        draw.rectangle([left + 10, y - 4, left + 18, y + 4], fill=colour)
        draw.text((left + 24, y), label, fill=(0, 0, 0), anchor="lm")
    return image


def write_learning_curve(path: Path, history: list[dict], env_id: str, target: float | None) -> None:
    """learning_curve.png, replaced atomically (a reader never sees half a picture)."""
    buffer = io.BytesIO()
    learning_curve(history, f"wm cycle on {env_id}: return per iteration", target).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------------
# The probe curve of a pretraining run

PROBE_CURVE_PATH = "probe_curve.png"
PROBE_COLOURS = {"knn_top1": (31, 119, 180), "linear_top1": (255, 127, 14), "state_r2": (44, 160, 44)}


def probe_curve(history: list[dict], title: str) -> Image.Image:
    """Each probe's score against the training step, the trained encoder's (solid, with points) beside its
    random-init twin's (dashed), from `eval/<probe>` and `eval/<probe>_random` of each evaluation."""
    image = Image.new("RGB", CURVE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top = CURVE_MARGIN[:2]
    probes = [key for key in PROBE_COLOURS if any(f"eval/{key}" in record for record in history)]
    steps = [record["step"] for record in history]
    values = [record[f"eval/{key}{tail}"] for record in history for key in probes for tail in ("", "_random")
              if f"eval/{key}{tail}" in record]  # fmt: skip
    y_low, y_high = min(values + [0.0]), max(values + [1.0])
    x_high = max(steps + [1]) * 1.05

    point = draw_axes(draw, x_high, y_low, y_high, title, "pretraining step")
    for row, key in enumerate(probes):
        colour = PROBE_COLOURS[key]
        trained = [point(r["step"], r[f"eval/{key}"]) for r in history if f"eval/{key}" in r]
        random = [point(r["step"], r[f"eval/{key}_random"]) for r in history if f"eval/{key}_random" in r]
        if len(trained) > 1:
            draw.line(trained, fill=colour, width=2)
        for px, py in trained:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        for (x0, y0), (x1, y1) in zip(random, random[1:], strict=False):  # dashed: 6 px on, 6 off
            length = max(math.hypot(x1 - x0, y1 - y0), 1e-9)
            for start in np.arange(0, length, 12):
                a, b = start / length, min(start + 6, length) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=colour, width=2)  # fmt: skip
        y = top + 12 + 16 * row
        draw.rectangle([left + 10, y - 4, left + 18, y + 4], fill=colour)
        draw.text((left + 24, y), f"{key} (dashed: random-init encoder)", fill=(0, 0, 0), anchor="lm")
    return image


def write_probe_curve(path: Path, history: list[dict], source: str) -> None:
    """probe_curve.png, replaced atomically; nothing to draw for a run without probes."""
    if not any(key.startswith("eval/") for record in history for key in record):
        return
    buffer = io.BytesIO()
    probe_curve(history, f"wm pretrain on {source}: probes against steps").save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
