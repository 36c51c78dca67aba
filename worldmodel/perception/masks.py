"""Multi-block masking of I-JEPA (Assran et al., 2023, https://arxiv.org/abs/2301.08243, section 3).

Per batch, one target block size and one context block size are drawn (so every image keeps the same
number of patches and no padding is needed); per image, `num_targets` target blocks and one context
block are placed at random, and the targets are cut out of the context so the predictor never sees
what it must predict. Contexts are then trimmed to the smallest in the batch, by a random subset so that
no image region is favoured.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


class MaskBatch(NamedTuple):
    """Patch indices, row-major on the patch grid."""

    context: torch.Tensor
    """(B, Nc) int64: patches the context encoder sees."""
    targets: torch.Tensor
    """(B, M, Nt) int64: patches of each of the M target blocks."""


class MultiBlockMaskSampler:
    """Draws context and target patch indices for a batch on a `grid x grid` patch grid."""

    def __init__(
        self,
        grid: int,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 4,
        max_tries: int = 200,
    ):
        self.grid = grid
        self.num_targets = num_targets
        self.target_scale = target_scale
        self.target_aspect = target_aspect
        self.context_scale = context_scale
        self.min_keep = min_keep
        self.max_tries = max_tries

    def block_size(
        self, rng: np.random.Generator, scale: tuple[float, float], aspect: tuple[float, float]
    ) -> tuple[int, int]:
        """Height and width in patches of a block whose area fraction is drawn from `scale` and whose
        height/width ratio is drawn from `aspect`."""
        area = rng.uniform(*scale) * self.grid**2
        ratio = rng.uniform(*aspect)
        height = int(round(math.sqrt(area * ratio)))
        width = int(round(math.sqrt(area / ratio)))
        return min(max(height, 1), self.grid), min(max(width, 1), self.grid)

    def block_mask(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A (grid, grid) boolean mask holding one block at a random position."""
        top = rng.integers(0, self.grid - height + 1)
        left = rng.integers(0, self.grid - width + 1)
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        mask[top : top + height, left : left + width] = True
        return mask

    def sample_one(self, rng: np.random.Generator, target_hw: tuple[int, int], context_hw: tuple[int, int]):
        """Target masks (M, grid, grid) and the context mask (grid, grid) for one image."""
        for _ in range(self.max_tries):
            targets = np.stack([self.block_mask(rng, *target_hw) for _ in range(self.num_targets)])
            context = self.block_mask(rng, *context_hw) & ~targets.any(axis=0)
            if context.sum() >= self.min_keep:
                return targets, context
        raise RuntimeError(
            f"could not keep {self.min_keep} context patches in {self.max_tries} tries: {self.num_targets} targets "
            f"of {target_hw} patches cover the {context_hw} context block; lower mask.num_targets or "
            "mask.target_scale, or raise mask.context_scale"
        )

    def __call__(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        target_hw = self.block_size(rng, self.target_scale, self.target_aspect)
        context_hw = self.block_size(rng, self.context_scale, (1.0, 1.0))
        targets, contexts = zip(*(self.sample_one(rng, target_hw, context_hw) for _ in range(batch_size)), strict=True)
        keep = min(int(c.sum()) for c in contexts)
        context_index = np.stack([np.sort(rng.choice(np.flatnonzero(c), keep, replace=False)) for c in contexts])
        # Every target block in the batch has the same size, so no trimming is needed for them.
        target_index = np.stack([[np.flatnonzero(t) for t in per_image] for per_image in targets])  # (B, M, Nt)
        return MaskBatch(torch.from_numpy(context_index).long(), torch.from_numpy(target_index).long())
