"""A small convolutional decoder from latents to frames, so dreams can be looked at.

It is trained on detached latents only (`Decoder.loss` detaches its input), with its own optimizer and a loss
that is not one of the world model's: the JEPA world model never reconstructs pixels, and the decoder cannot
change what the encoder learns. Layout: latent (N, D) -> Linear -> (N, C0, 4, 4) -> stride-2 transposed
convolutions, each doubling the side and halving the channels -> (N, C, H, W) in [0, 1], H = W = image_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.perception.augment import resize

BASE_SIDE = 4  # side of the first feature map, before any upsampling
MAX_CHANNELS = 256


class Decoder(nn.Module):
    """Latent z -> frame. `forward` gives floats (N, C, H, W) in [0, 1]; `frames` gives uint8 (..., H, W, C).

    Args:
        latent_dim: D.
        image_size: H = W, the side of the frames it draws (any side >= 4; sides that are not 4 * 2^n are reached by
            a final bilinear resize).
        channels: C of the frames (3 for RGB).
        width: channels of the last, full-resolution layer; each halving of resolution doubles them (to 256).
    """

    def __init__(self, latent_dim: int, image_size: int, channels: int = 3, width: int = 16):
        super().__init__()
        if min(latent_dim, channels, width) < 1 or image_size < BASE_SIDE:
            raise ValueError(
                f"need latent_dim, channels, width >= 1 and image_size >= {BASE_SIDE}, got {latent_dim}, "
                f"{channels}, {width} and {image_size}"
            )
        self.image_size, self.channels = image_size, channels
        upsamples = max(math.ceil(math.log2(image_size / BASE_SIDE)), 0)
        widths = [min(width * 2 ** (upsamples - i), MAX_CHANNELS) for i in range(upsamples + 1)]  # coarse -> fine
        self.stem = nn.Sequential(nn.Linear(latent_dim, widths[0] * BASE_SIDE**2), nn.SiLU())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.GroupNorm(1, c_out)]
            layers.append(nn.SiLU())
        self.upsample = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], channels, kernel_size=3, padding=1)
        # Channels-last feature maps take oneDNN's kernels for the transposed convolutions on a CPU: a training step
        # of the default task's decoder ran 1.43x faster on one thread (61 against 42 ms), with the same loss.
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, D) -> frames (N, C, H, W), floats in [0, 1]."""
        x = self.stem(z).view(len(z), -1, BASE_SIDE, BASE_SIDE)  # (N, C0 * 16) -> (N, C0, 4, 4)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.head(self.upsample(x))  # (N, C, 4 * 2^n, 4 * 2^n)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)

    def loss(self, z: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Mean squared pixel error of decoding latents; the latents are detached, so no gradient leaves here.

        Args:
            z: (N, D) latents (any graph they belong to is cut).
            frames: (N, H, W, C) uint8 of any size, the frames they encode (resized to image_size when it differs).
        Returns:
            scalar, in units of [0, 1] pixel values.
        """
        # (N, H, W, C) at any size -> (N, C, image_size, image_size)
        target = resize(frames.permute(0, 3, 1, 2).contiguous(), self.image_size)
        return F.mse_loss(self(z.detach().float()), target.to(z.device))

    @torch.no_grad()
    def frames(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (..., D) -> uint8 frames (..., H, W, C), channels-last like the env's observations."""
        lead = z.shape[:-1]
        images = self(z.reshape(-1, z.shape[-1]).float())  # (..., D) -> (N, D) -> (N, C, H, W)
        pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # (N, H, W, C)
        return pixels.reshape(*lead, self.image_size, self.image_size, self.channels)
