import numpy as np
import pytest
import torch

from worldmodel.perception.ijepa import IJEPA
from worldmodel.perception.masks import MultiBlockMaskSampler
from worldmodel.perception.vit import (
    VIT_SIZES,
    VisionTransformer,
    attention,
    explicit_attention,
    pool_tokens,
    sincos_pos_embed_2d,
)


def test_ema_update_matches_hand_computation():
    model = IJEPA(16, 4, size="micro", predictor_width=16, predictor_depth=1, predictor_heads=2)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.fill_(1.0)
        for p in model.encoder.parameters():
            p.fill_(3.0)
    model.update_target(0.75)  # 0.75 * 1 + 0.25 * 3 = 1.5
    for p in model.target_encoder.parameters():
        assert torch.all(p == 1.5)
    model.update_target(1.0)  # momentum 1 freezes the target
    assert all(torch.all(p == 1.5) for p in model.target_encoder.parameters())


def test_target_encoder_gets_no_gradient():
    model = IJEPA(16, 4, size="micro", predictor_width=16, predictor_depth=1, predictor_heads=2)
    masks = MultiBlockMaskSampler(4, min_keep=1)(2, np.random.default_rng(0))
    model.loss(torch.randn(2, 3, 16, 16), masks)["jepa"].backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_shapes_for_every_size_preset(size):
    width = VIT_SIZES[size][0]
    encoder = VisionTransformer(32, 8, 3, size)
    images = torch.randn(2, 3, 32, 32)
    assert encoder(images).shape == (2, 16, width)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15]])
    assert encoder(images, keep).shape == (2, 3, width)
    assert encoder.pooled(images).shape == (2, width)


def test_keep_selects_the_same_tokens_as_full_sequence_at_the_embedding():
    # With zero blocks, the encoder is patch embedding + positions + norm, so selecting patches before the
    # blocks must equal selecting them from the full output.
    encoder = VisionTransformer(16, 4, 3, "micro")
    encoder.blocks = torch.nn.ModuleList()
    images = torch.randn(2, 3, 16, 16)
    keep = torch.tensor([[3, 0, 7], [15, 4, 4]])
    full = encoder(images)
    picked = torch.stack([full[b, keep[b]] for b in range(2)])
    torch.testing.assert_close(encoder(images, keep), picked)


def test_pool_tokens_matches_hand_computed_mean_and_spread():
    # One image, three patches of two channels: channel 0 is 1, 2, 6 (mean 3, spread sqrt(14/3)), channel 1 is
    # constant 5 (spread 0).
    tokens = torch.tensor([[[1.0, 5.0], [2.0, 5.0], [6.0, 5.0]]])
    torch.testing.assert_close(pool_tokens(tokens), torch.tensor([[3.0, 5.0]]))
    torch.testing.assert_close(pool_tokens(tokens, "mean_std"), torch.tensor([[3.0, 5.0, (14 / 3) ** 0.5, 0.0]]))
    images = torch.randn(2, 3, 16, 16)
    encoder = VisionTransformer(16, 4, 3, "micro")
    torch.testing.assert_close(pool_tokens(encoder(images)), encoder.pooled(images))
    with pytest.raises(ValueError, match=r"pooling must be one of \('mean', 'mean_std', 'grid2', 'grid4'\), got 'max'"):
        pool_tokens(tokens, "max")


def test_grid_pooling_keeps_each_cell_of_the_patch_grid_apart():
    # A 4 x 4 patch grid whose one channel counts 0..15 row by row: a 2 x 2 grid's cells are the quarters
    # {0, 1, 4, 5}, {2, 3, 6, 7}, {8, 9, 12, 13}, {10, 11, 14, 15}; the second channel is the first negated.
    values = torch.arange(16.0)
    tokens = torch.stack([values, -values], dim=-1)[None]  # (1, 16, 2)
    quarters = torch.tensor([2.5, 4.5, 10.5, 12.5])
    torch.testing.assert_close(pool_tokens(tokens, "grid2"), torch.stack([quarters, -quarters], dim=-1).reshape(1, 8))
    torch.testing.assert_close(pool_tokens(tokens, "grid4"), tokens.reshape(1, 32))  # one patch per cell
    # The same image mirrored left to right has the same mean but not the same grid.
    mirrored = tokens.reshape(1, 4, 4, 2).flip(2).reshape(1, 16, 2)
    torch.testing.assert_close(pool_tokens(mirrored), pool_tokens(tokens))
    assert not torch.allclose(pool_tokens(mirrored, "grid2"), pool_tokens(tokens, "grid2"))
    with pytest.raises(ValueError, match="needs a square patch grid whose side 4 divides, got 9 patches"):
        pool_tokens(torch.zeros(1, 9, 2), "grid4")
    with pytest.raises(ValueError, match="needs a square patch grid whose side 2 divides, got 12 patches"):
        pool_tokens(torch.zeros(1, 12, 2), "grid2")


def test_sincos_positions_are_distinct_and_bounded():
    pos = sincos_pos_embed_2d(16, 4)
    assert pos.shape == (16, 16)
    assert pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(16) * 10).min() > 0.1  # every patch has its own code


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = IJEPA(16, 4, size="micro", predictor_width=32, predictor_depth=1, predictor_heads=2)
    images = torch.randn(4, 3, 16, 16)
    masks = MultiBlockMaskSampler(4, min_keep=2)(4, np.random.default_rng(0))
    optimizer = torch.optim.Adam([*model.encoder.parameters(), *model.predictor.parameters()], lr=2e-3)
    first = None
    for _ in range(300):
        optimizer.zero_grad()
        loss = model.loss(images, masks)["jepa"]  # the target stays fixed: no EMA update here
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first


def test_explicit_attention_matches_the_formula_in_float64():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    weights = torch.exp(q @ k.transpose(-2, -1) / 2.0)  # d = 4: scale 1/2
    expected = (weights / weights.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(explicit_attention(q, k, v), expected.to(torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_paths_agree_forward_and_backward(dtype):
    """`attention` picks the explicit products in bf16 on a CPU and the fused kernel in float32: each must give what
    the other gives, values and gradients, to the dtype's rounding."""
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(4, 2, 23, 24, generator=generator).to(dtype) for _ in range(3)]
    results = []
    for path in (attention, explicit_attention, torch.nn.functional.scaled_dot_product_attention):
        q, k, v = (x.clone().requires_grad_() for x in inputs)
        out = path(q, k, v)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append([out.float(), q.grad.float(), k.grad.float(), v.grad.float()])
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.02}
    for chosen, other in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(chosen, other, **tolerance)
    for chosen, other in zip(results[0], results[2], strict=True):
        torch.testing.assert_close(chosen, other, **tolerance)
