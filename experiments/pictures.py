"""Pictures a person would rather look at than read: the I-JEPA masks drawn over sample images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from experiments.runtime import step_rng
from worldmodel.perception import augment
from worldmodel.perception.masks import MultiBlockMaskSampler

TARGET_COLOURS = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (64, 220, 120), (220, 80, 255), (255, 140, 0)]
STREAM_PICTURE = 4


def mask_picture(
    images: torch.Tensor, sampler: MultiBlockMaskSampler, rng: np.random.Generator, scale: int = 4
) -> Image.Image:
    """Rows of [image | context (hidden patches greyed) | target blocks outlined] for float images (B, C, S, S)
    in [0, 1]."""
    masks = sampler(images.shape[0], rng)
    grid = sampler.grid
    size = images.shape[-1] * scale
    patch = size // grid
    pictures = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (B, S, S, C)
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
    images = augment.resize(images, cfg.encoder.image_size)  # (B, C, S, S) float in [0, 1]
    mask_picture(images, sampler, step_rng(seed, 0, STREAM_PICTURE)).save(path)
