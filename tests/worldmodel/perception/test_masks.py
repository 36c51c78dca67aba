import numpy as np
import pytest

from worldmodel.perception.masks import MultiBlockMaskSampler


def draw(seed=0, batch=16, grid=14, **kwargs):
    sampler = MultiBlockMaskSampler(grid, **kwargs)
    return sampler, sampler(batch, np.random.default_rng(seed))


def test_counts_and_index_ranges():
    sampler, masks = draw(num_targets=4)
    B, M, Nt = masks.targets.shape
    assert (B, M) == (16, 4)
    assert masks.context.shape[0] == 16
    for index in (masks.context, masks.targets):
        assert index.min() >= 0 and index.max() < 14 * 14
    for row in masks.context:  # no patch twice in one context
        assert len(set(row.tolist())) == len(row)


@pytest.mark.parametrize("seed", range(5))
def test_context_never_sees_a_target(seed):
    _, masks = draw(seed)
    for context, targets in zip(masks.context, masks.targets, strict=True):
        assert not set(context.tolist()) & set(targets.flatten().tolist())


@pytest.mark.parametrize("seed", range(5))
def test_targets_are_rectangles_of_the_configured_scale_and_aspect(seed):
    grid, scale, aspect = 14, (0.15, 0.2), (0.75, 1.5)
    _, masks = draw(seed, grid=grid, target_scale=scale, target_aspect=aspect)
    area_min, area_max = scale[0] * grid**2, scale[1] * grid**2
    for block in masks.targets.reshape(-1, masks.targets.shape[-1]).numpy():
        rows, cols = np.divmod(block, grid)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h * w == len(block)  # a full rectangle
        # h and w are rounded from sqrt(area * ratio) and sqrt(area / ratio): allow half a patch either way.
        assert (h - 0.5) * (w - 0.5) <= area_max and (h + 0.5) * (w + 0.5) >= area_min
        assert (h - 0.5) / (w + 0.5) <= aspect[1] and (h + 0.5) / (w - 0.5) >= aspect[0]


def test_minimum_kept_and_same_size_across_batch():
    _, masks = draw(grid=8, min_keep=6, batch=64)
    assert masks.context.shape[1] >= 6
    assert masks.targets.shape[2] >= 1


def test_same_seed_same_masks_other_seed_other_masks():
    _, a = draw(seed=3)
    _, b = draw(seed=3)
    _, c = draw(seed=4)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a.context.shape == c.context.shape and (a.context == c.context).all())


def test_impossible_minimum_raises_with_advice():
    sampler = MultiBlockMaskSampler(4, num_targets=4, target_scale=(0.5, 0.5), min_keep=8, max_tries=20)
    with pytest.raises(RuntimeError, match="min_keep|context patches"):
        sampler(2, np.random.default_rng(0))
