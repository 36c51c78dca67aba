"""Vision Transformer for I-JEPA: patch embedding, fixed 2-D sin-cos positions, pre-norm blocks.

Shapes: images (B, C, H, W); patch tokens (B, Np, V) with Np = (H / patch)^2; a `keep` index tensor (B, Nc)
selects the patches an encoder sees (the context), after positions are added, as in I-JEPA.
Attention runs through `F.scaled_dot_product_attention` (a fused kernel) except in reduced precision on a CPU,
where explicit products are faster (`attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# width, depth, heads. tiny/small/base follow DeiT and I-JEPA; micro and mini are for CPU work and tests.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),
    "mini": (128, 6, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding (MAE, I-JEPA). Returns (grid*grid, dim), row-major patches."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    out = []
    for coord in (cols.flatten(), rows.flatten()):  # (Np,) each
        angles = coord[:, None] * omega[None, :]  # (Np, dim/4)
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1).float()  # (Np, dim)


GRIDS: dict[str, int] = {"grid2": 2, "grid4": 4}
"""The grid poolings, each with its number of cells along a side of the square grid."""
POOLINGS: dict[str, int] = {"mean": 1, "mean_std": 2, **{name: cells * cells for name, cells in GRIDS.items()}}
"""The ways `pool_tokens` pools patch features, each with its output width in units of the token width."""


def pool_tokens(tokens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """One feature vector per image from its patch features: tokens (B, Np, V) -> (B, V) for "mean", (B, 2V) for
    "mean_std" (the mean, then the standard deviation over the patches), (B, cells * cells * V) for a grid pooling (the
    mean of each cell of a cells x cells grid over the square patch grid, cells row-major, each cell's V features
    together).

    A small object changes few patches, so it moves the mean little, diluted by the background; the spread of the
    patch features over the image keeps more of it, and a grid keeps where in the image it is (measured:
    benchmarks/pooling.py).
    """
    if pooling == "mean":
        return tokens.mean(dim=1)
    if pooling == "mean_std":
        std, mean = torch.std_mean(tokens, dim=1, correction=0)
        return torch.cat([mean, std], dim=-1)
    if pooling in GRIDS:
        batch, count, width = tokens.shape
        side, cells = math.isqrt(count), GRIDS[pooling]
        if side * side != count or side % cells:
            raise ValueError(
                f"pooling {pooling!r} needs a square patch grid whose side {cells} divides, got {count} patches"
            )
        # (B, Np, V) -> (B, cell row, row in cell, cell column, column in cell, V)
        grid = tokens.reshape(batch, cells, side // cells, cells, side // cells, width)
        # (B, cells, cells, V) -> (B, cells * cells * V)
        return grid.mean(dim=(2, 4)).reshape(batch, cells * cells * width)
    raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {pooling!r}")


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick tokens by patch index: tokens (B, Np, V), index (B, Nc) -> (B, Nc, V); likewise a target index (B, Nt)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, tokens, d) tensors.

    On a CPU in bf16 (or fp16) torch's fused kernel is 4.9 to 11.4 times slower, forward and backward, than the two
    matrix products with a softmax between them at this toolkit's sequence lengths (tens of tokens), and in float32
    it is 1.6 to 3.6 times faster than them (2 threads, quiet, a CPU with bf16 units: `python benchmarks/pretrain.py
    --attention`). So the explicit products serve reduced precision on a CPU, the fused kernel everything else.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return explicit_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`attention` as two matrix products with a softmax between them, the softmax taken in float32 at least."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, tokens, tokens)
    return torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, tokens, width = x.shape
        # (B, tokens, 3 * width) -> (3, B, heads, tokens, width/heads)
        qkv = self.qkv(x).view(B, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])  # (B, heads, tokens, width/heads)
        return self.proj(out.transpose(1, 2).reshape(B, tokens, width))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """Truncated-normal linear weights, then each block's output projections scaled down by its depth
    (I-JEPA's `fix_init_weight`), which keeps the residual stream's variance from growing with depth."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for layer, block in enumerate(blocks, start=1):
        block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
        block.mlp[2].weight.data.div_(math.sqrt(2.0 * layer))


class VisionTransformer(nn.Module):
    """ViT encoder. `forward(images, keep)` -> patch features (B, Nc, V), Nc = Np when `keep` is None."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int = 3, size: str = "mini"):
        super().__init__()
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {size!r}; choose from {', '.join(VIT_SIZES)}")
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.width, depth, heads = VIT_SIZES[size]
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.patch_embed = nn.Conv2d(in_channels, self.width, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.width, self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(self.width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(self.width)
        init_transformer_weights(self, self.blocks)
        # The patch embedding is a linear map of the flattened patch (MAE initialises it so). At std 0.02 a
        # small patch (4x4x3 values) would give content features far weaker than the unit-size positions,
        # and targets that encode mostly position are trivial to predict: the encoder then learns nothing.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.width, -1))

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, V, grid, grid) -> (B, Np, V)
        x = x + self.pos_embed.to(x.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)  # (B, Np, V) -> (B, Nc, V)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of all patch features: images (B, C, H, W) -> (B, V), the frozen-feature probes' input."""
        return pool_tokens(self.forward(images))


class Predictor(nn.Module):
    """I-JEPA predictor: a narrow ViT that reads context tokens and fills mask tokens placed at the target
    positions. `forward(context (B, Nc, V), context_index (B, Nc), target_index (B, Nt))` -> (B, Nt, V)."""

    def __init__(self, grid: int, encoder_width: int, width: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, grid), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, encoder_width)
        init_transformer_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_index: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
        B, Nc, _ = context.shape
        pos = self.pos_embed.to(context.dtype).expand(B, -1, -1)  # (B, Np, width)
        x = self.embed(context) + gather_tokens(pos, context_index)  # (B, Nc, width)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_index)  # (B, Nt, width)
        x = torch.cat([x, queries], dim=1)  # (B, Nc + Nt, width)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, Nc:]))  # (B, Nt, V)
