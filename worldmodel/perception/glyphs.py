"""Synthetic labelled images the project renders itself: glyphs (the digits 0-9, or more characters) drawn with
Pillow's built-in scalable font at a random size, place, slant and stroke, in a random grey on a random grey.

A glyph's class is its character; nothing else about an image tells the classes apart (every shade, size and place
is drawn independently of it), so a probe that reads the class reads the shape. `write_image_folder` saves any
labelled images as a real image folder (one subfolder of PNG files per class), the layout `folder:<path>` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from worldmodel.perception.data import ImageItem

GLYPHS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
"""The characters, in class order: 10 classes are the digits."""
MIN_CONTRAST = 0.3
"""Least difference in luminance (0-1) between a glyph and its background: every glyph is visible."""


def _shades(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A background and a glyph grey at least MIN_CONTRAST apart, as RGB."""
    background = int(rng.integers(0, 256))
    while True:
        glyph = int(rng.integers(0, 256))
        if abs(glyph - background) >= MIN_CONTRAST * 255:
            return (background,) * 3, (glyph,) * 3


def render_glyph(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of character GLYPHS[label]: (size, size, 3) uint8.

    The glyph's height is 0.55-0.8 of the image, its centre within 0.1 of the image's from the middle, its slant
    -15..15 degrees, its stroke 0-2 px wider (at 72 px; scaled with the size).
    """
    scale = size / 72
    font = ImageFont.load_default(size=max(4, round(rng.uniform(0.55, 0.8) * size)))
    background, colour = _shades(rng)
    canvas = Image.new("RGB", (2 * size, 2 * size), background)  # room to rotate without empty corners
    centre = size + rng.uniform(-0.1, 0.1, 2) * size
    stroke = int(round(rng.integers(0, 3) * scale))
    ImageDraw.Draw(canvas).text(
        tuple(centre), GLYPHS[label], fill=colour, font=font, anchor="mm", stroke_width=stroke, stroke_fill=colour
    )
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=background)
    half = size // 2
    return np.asarray(canvas.crop((half, half, half + size, half + size)))


class GlyphDataset(torch.utils.data.Dataset):
    """`num_classes` glyph classes of `per_class` images each, rendered once from the seed; item i is of class
    i // per_class. The same seed gives identical images."""

    def __init__(self, num_classes: int, per_class: int, image_size: int, seed: int) -> None:
        if not 2 <= num_classes <= len(GLYPHS):
            raise ValueError(f"num_classes must be in [2, {len(GLYPHS)}] (the characters {GLYPHS}), got {num_classes}")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels for a glyph to be legible, got {image_size}")
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(num_classes), per_class)  # (N,)
        images = np.stack([render_glyph(int(label), image_size, rng) for label in labels])  # (N, H, W, 3)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.labels = torch.from_numpy(labels).to(torch.int64)
        self.num_classes, self.per_class = num_classes, per_class
        self.states = None
        self.name = f"glyphs{num_classes}x{per_class}"
        self.image_shape = (3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}] (class {GLYPHS[index // self.per_class]})"

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(self.images[index], int(index), True)


def write_image_folder(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], root: Path) -> int:
    """Save (N, 3, H, W) uint8 images as root/<class name>/<index>.png; returns how many were written.

    Each file is written under a temporary name and renamed, so a folder never holds a half-written image; an
    existing root that is not empty is refused (nothing is overwritten)."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; name a new folder")
    if len(images) != len(labels) or images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected (N, 3, H, W) uint8 images and N labels, got {tuple(images.shape)} "
            f"{images.dtype} and {len(labels)} labels"
        )
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        path = root / class_names[label] / f"{index:06d}.png"
        partial = path.with_suffix(".png.partial")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(partial, format="PNG")
        os.replace(partial, path)
    return len(images)
