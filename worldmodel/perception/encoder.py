"""A frozen ViT that embeds raw images: one call from uint8 pixels to one feature vector per image.

`Encoder.embed` does what the toolkit does to a frame before its ViT, so that a caller never normalises by hand:

    uint8 (B, H, W, C) -> (B, C, H, W) in [0, 1], resized to the ViT's input (bilinear, squashed to a square)
    -> Gaussian blur (input_blur > 0 only) -> ImageNet mean and std per RGB channel -> ViT -> pooled (B, F)

This is `WorldModel.encode_features` for one image (without its feature standardisation, which belongs to the world
model) and the pretraining probes' path (`experiments.pretraining.encode_all`) for the I-JEPA target encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from worldmodel.perception.augment import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur, normalize, resize
from worldmodel.perception.vit import POOLINGS, VisionTransformer, pool_tokens


class Encoder(nn.Module):
    """A ViT and the preprocessing it was trained with; frozen, in eval mode.

    Args:
        backbone: the ViT (its weights are frozen).
        image_size: the ViT's input side; images of any other size are resized to it.
        pooling: how the patch features become one vector (`worldmodel.perception.vit.pool_tokens`).
        input_blur: std in pixels of the Gaussian blur applied to the resized image (0: none).
    """

    def __init__(self, backbone: VisionTransformer, image_size: int, pooling: str = "mean", input_blur: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {pooling!r}")
        self.backbone = backbone.requires_grad_(False).eval()
        self.image_size, self.pooling, self.input_blur = image_size, pooling, float(input_blur)
        self.channels = backbone.patch_embed.in_channels
        self.feature_dim = backbone.width * POOLINGS[pooling]
        """F, the width of one image's features."""
        # Frame stacks of RGB frames reuse the ImageNet statistics per frame (as WorldModel does).
        self.mean, self.std = IMAGENET_MEAN * (self.channels // 3), IMAGENET_STD * (self.channels // 3)
        self.eval()

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of a batch of raw images: uint8 (B, H, W, C), numpy or torch, any H and W -> float32 (B, F) on the
        encoder's device."""
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(np.asarray(images))
        if images.ndim != 4 or images.shape[-1] != self.channels or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 of shape (B, H, W, {self.channels}) (channels last, as envs and PIL give them), "
                f"got {images.dtype} of shape {tuple(images.shape)}"
            )
        weight = self.backbone.patch_embed.weight
        frames = images.to(weight.device).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        x = normalize(gaussian_blur(resize(frames, self.image_size), self.input_blur), self.mean, self.std)
        return pool_tokens(self.backbone(x.to(weight.dtype)), self.pooling).float()  # (B, Np, V) -> (B, F)

    def forward(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`embed`."""
        return self.embed(images)
