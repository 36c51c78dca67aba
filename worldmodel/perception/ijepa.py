"""I-JEPA: predict the target encoder's features of masked blocks from a context block.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
CVPR 2023 (https://arxiv.org/abs/2301.08243). The context encoder and predictor learn by gradient; the
target encoder is an exponential moving average of the context encoder and receives no gradient.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.perception.masks import MaskBatch
from worldmodel.perception.vit import Predictor, VisionTransformer, gather_tokens


class IJEPA(nn.Module):
    """Context encoder, EMA target encoder and predictor. One verb per job: `loss`, `update_target`,
    `features`."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int = 3,
        size: str = "mini",
        predictor_width: int = 96,
        predictor_depth: int = 3,
        predictor_heads: int = 4,
    ):
        super().__init__()
        self.encoder = VisionTransformer(image_size, patch_size, in_channels, size)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(
            self.encoder.grid, self.encoder.width, predictor_width, predictor_depth, predictor_heads
        )

    def loss(self, images: torch.Tensor, masks: MaskBatch) -> dict[str, torch.Tensor]:
        """images (B, C, H, W) normalised; masks for that batch. Returns {'jepa': scalar}."""
        B = images.shape[0]
        M, Nt = masks.targets.shape[1:]
        with torch.no_grad():
            target = self.target_encoder(images)  # (B, Np, V)
            # Targets are LayerNorm-ed without affine parameters, as in the paper's code.
            target = F.layer_norm(target, target.shape[-1:])
            target = gather_tokens(target, masks.targets.flatten(1))  # (B, M*Nt, V)
        context = self.encoder(images, masks.context)  # (B, Nc, V)
        # Each target block gets its own predictor pass over the same context (the batch grows M-fold).
        context = context.repeat_interleave(M, dim=0)  # (B, Nc, V) -> (B*M, Nc, V)
        context_index = masks.context.repeat_interleave(M, dim=0)  # (B*M, Nc)
        prediction = self.predictor(context, context_index, masks.targets.reshape(B * M, Nt))  # (B*M, Nt, V)
        prediction = prediction.reshape(B, M * Nt, -1)  # (B*M, Nt, V) -> (B, M*Nt, V)
        return {"jepa": F.smooth_l1_loss(prediction.float(), target.float())}

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * context encoder, parameter by parameter."""
        target = list(self.target_encoder.parameters())
        online = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)  # one pass over memory, where mul then add take two

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled target-encoder features of full images: (B, C, H, W) -> (B, V)."""
        return self.target_encoder.pooled(images)
