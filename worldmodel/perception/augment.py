"""Batched image augmentation in torch: random resized crops, resizing, blurring and normalisation.

Everything works on a whole batch at once. Crop boxes are sampled as torchvision's
`RandomResizedCrop` samples them, vectorised, and every crop is resampled in one `F.grid_sample`
call with bilinear interpolation. For a crop at least as large as the output this equals slicing the
box and calling `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`; there is no
antialiasing, so sources should be stored near the training resolution (`ImageFolderDataset`
already resizes, with antialiasing, when it decodes).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back to a centre crop


class CropBoxes(NamedTuple):
    """Integer pixel boxes, one per image: rows [top, top + height), columns [left, left + width)."""

    top: torch.Tensor
    """(B,) int64"""
    left: torch.Tensor
    """(B,) int64"""
    height: torch.Tensor
    """(B,) int64"""
    width: torch.Tensor
    """(B,) int64"""


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be a uint8 tensor of shape (B, C, H, W), got dtype {images.dtype} and shape "
            f"{tuple(images.shape)}"
        )


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> CropBoxes:
    """Sample one crop box per image as torchvision's `RandomResizedCrop.get_params`, vectorised.

    Each image tries up to 10 boxes with area fraction uniform in `scale` and aspect ratio (width /
    height) log-uniform in `ratio`, keeping the first that fits; if none fits it takes the largest
    centre crop with the aspect ratio clamped to `ratio`. The offset is uniform over the valid positions.

    Returns:
        CropBoxes of (B,) int64 tensors on the CPU.
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
    area = height * width
    # All attempts of all images at once: (B, 10).
    target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(batch, _CROP_ATTEMPTS, generator=generator))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(batch, _CROP_ATTEMPTS, generator=generator))
    widths = torch.round(torch.sqrt(target_area * aspect)).long()  # (B, 10)
    heights = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)  # (B, 10)
    # First fitting attempt per image: argmax of a bool picks the first True (0 when there is none).
    first = fits.long().argmax(dim=1, keepdim=True)  # (B, 1)
    any_fit = fits.any(dim=1)  # (B,)
    crop_width = widths.gather(1, first).squeeze(1)  # (B,)
    crop_height = heights.gather(1, first).squeeze(1)

    # Fallback, as torchvision: the whole image, trimmed to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_width, fallback_height = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fallback_width, fallback_height = int(round(height * ratio[1])), height
    else:
        fallback_width, fallback_height = width, height
    crop_width = torch.where(any_fit, crop_width, torch.full_like(crop_width, fallback_width))
    crop_height = torch.where(any_fit, crop_height, torch.full_like(crop_height, fallback_height))

    # Random offsets for fitted boxes (uniform integer in [0, size - crop]), centred for fallbacks.
    offset = torch.rand(batch, 2, generator=generator)  # (B, 2) rows, columns
    top = torch.floor(offset[:, 0] * (height - crop_height + 1)).long().clamp(max=height - crop_height)
    left = torch.floor(offset[:, 1] * (width - crop_width + 1)).long().clamp(max=width - crop_width)
    top = torch.where(any_fit, top, (height - crop_height) // 2)
    left = torch.where(any_fit, left, (width - crop_width) // 2)
    return CropBoxes(top, left, crop_height, crop_width)


def crop_boxes_theta(boxes: CropBoxes, height: int, width: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Affine matrices that map a crop box onto the whole output for `F.affine_grid`.

    With align_corners=False, normalised coordinate -1 is the left edge of pixel 0 and +1 the right
    edge of the last pixel, so a box with left edge `left` and width `w` has centre
    (2 left + w) / W - 1 and half-width w / W. A horizontal flip negates the x scale.

    Args:
        boxes: (B,) boxes in pixels of an H x W image.
        flip: (B,) bool, True to mirror the crop left-right.
    Returns:
        theta (B, 2, 3) float32.
    """
    scale_x = boxes.width.float() / width  # (B,)
    scale_y = boxes.height.float() / height
    centre_x = (2 * boxes.left + boxes.width).float() / width - 1
    centre_y = (2 * boxes.top + boxes.height).float() / height - 1
    if flip is not None:
        scale_x = torch.where(flip, -scale_x, scale_x)
    zeros = torch.zeros_like(scale_x)
    theta = torch.stack(
        [torch.stack([scale_x, zeros, centre_x], dim=1), torch.stack([zeros, scale_y, centre_y], dim=1)], dim=1
    )  # (B, 2, 3)
    return theta


def crop_resize(images: torch.Tensor, theta: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample every image through its affine `theta` to (out_size, out_size), bilinear, in one call.

    Args:
        images: (B, C, H, W) uint8.
        theta: (B, 2, 3) float32, e.g. from `crop_boxes_theta`.
    Returns:
        (B, C, out_size, out_size) float32 in [0, 1].
    """
    _check_images(images)
    batch, channels = images.shape[:2]
    x = images.float().div_(255.0)  # (B, C, H, W) in [0, 1]
    grid = F.affine_grid(
        theta.to(device=images.device, dtype=x.dtype), [batch, channels, out_size, out_size], align_corners=False
    )  # (B, out, out, 2)
    # "border" clamps to the image's own edge pixels, as F.interpolate does, instead of blending in zeros.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    images: torch.Tensor,
    out_size: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """One random resized crop (and horizontal flip with probability 1/2) per image, whole batch at once.

    Args:
        images: (B, C, H, W) uint8, on any device.
        out_size: side of the square output.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: mirror each crop with probability 1/2.
        generator: CPU generator for the box and flip draws; the same state gives the same output.
    Returns:
        (B, C, out_size, out_size) float32 in [0, 1] on the images' device.
    """
    _check_images(images)
    batch, _, height, width = images.shape
    theta = random_crop_theta(batch, height, width, scale, ratio, hflip, generator=generator)
    return crop_resize(images, theta, out_size)


def random_crop_theta(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """The crops (and flips) `random_resized_crop` draws for a batch of `batch` images of height x width, as
    `crop_resize` matrices. Drawn for a whole batch, its rows crop any part of it as the whole batch's call would
    (a process that holds only its share of a batch crops its rows with them).

    Returns:
        theta (B, 2, 3) float32.
    """
    boxes = sample_crop_boxes(batch, height, width, scale, ratio, generator)
    flip = torch.rand(batch, generator=generator) < 0.5 if hflip else None
    return crop_boxes_theta(boxes, height, width, flip)


def resize(images: torch.Tensor, out_size: int, antialias: bool = False) -> torch.Tensor:
    """Resize whole images to (out_size, out_size), bilinear, no crop (evaluation and env frames).

    With the default `antialias=False` this is the same resampling as `random_resized_crop` applied to
    the full image, so evaluation views match training views; pass True when shrinking by a lot.

    Args:
        images: (B, C, H, W) uint8.
    Returns:
        (B, C, out_size, out_size) float32 in [0, 1].
    """
    _check_images(images)
    x = images.float().div_(255.0)
    if antialias and x.shape[-2:] != (out_size, out_size):
        return F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    batch, _, height, width = images.shape
    full = CropBoxes(
        torch.zeros(batch, dtype=torch.int64),
        torch.zeros(batch, dtype=torch.int64),
        torch.full((batch,), height, dtype=torch.int64),
        torch.full((batch,), width, dtype=torch.int64),
    )
    return crop_resize(images, crop_boxes_theta(full, height, width), out_size)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of standard deviation `sigma` pixels, the kernel cut at 3 sigma and normalised to sum
    1; edges are padded by repeating the border (so a constant image stays constant).

    Args:
        x: (B, C, H, W) float.
    Returns:
        (B, C, H, W), same dtype and device; `x` itself when sigma is 0.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (B, C, H, W) tensor, got dtype {x.dtype} and shape {tuple(x.shape)}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)  # (2r + 1,)
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)  # (C, 1, 1, 2r + 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=channels)
    columns = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)  # (C, 1, 2r + 1, 1)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), columns, groups=channels)


def normalize(
    x: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Per-channel (x - mean) / std.

    Args:
        x: (B, C, H, W) float in [0, 1].
    Returns:
        (B, C, H, W) float, same dtype and device.
    """
    if x.ndim != 4 or x.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"x must be (B, C, H, W) with C = len(mean) = len(std); got shape {tuple(x.shape)}, "
            f"{len(mean)} means and {len(std)} stds"
        )
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
