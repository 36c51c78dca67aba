"""Batched augmentation: equivalence with per-image references, box sampling properties, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

from worldmodel.perception.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBoxes,
    crop_boxes_theta,
    crop_resize,
    gaussian_blur,
    normalize,
    random_resized_crop,
    resize,
    sample_crop_boxes,
)


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def reference_crop(image: torch.Tensor, top: int, left: int, height: int, width: int, out: int, flip: bool):
    """The simple path: slice the box, resize it with F.interpolate, mirror it."""
    crop = image[:, top : top + height, left : left + width].float()[None] / 255.0  # (1, C, h, w)
    resized = F.interpolate(crop, size=(out, out), mode="bilinear", align_corners=False, antialias=False)[0]
    return resized.flip(-1) if flip else resized


def test_batched_crop_equals_slice_and_interpolate_for_shrinking_crops():
    # Crops at least as large as the output: grid_sample's sample points then fall inside the box,
    # where they coincide with interpolate's (both sample at pixel centres, align_corners=False).
    # Tolerance 1e-5 (a 400th of one uint8 level): grid_sample goes through float32 normalised
    # coordinates, which round differently from interpolate's pixel arithmetic.
    images = random_images(16, 40, 48)
    out = 16
    boxes = sample_crop_boxes(16, 40, 48, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), generator=torch.Generator())
    assert bool((boxes.height >= out).all() and (boxes.width >= out).all())
    flip = torch.arange(16) % 2 == 0
    batched = crop_resize(images, crop_boxes_theta(boxes, 40, 48, flip), out)
    for i in range(16):
        expected = reference_crop(
            images[i], *(int(v[i]) for v in (boxes.top, boxes.left, boxes.height, boxes.width)), out, bool(flip[i])
        )
        torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=0)


def test_batched_crop_equals_interpolate_inside_the_box_when_enlarging():
    # Enlarging a small crop: interpolate clamps sample points to the crop's own edge pixels, while
    # grid_sample reads the real neighbours just outside the box. Wherever the sample point lies inside
    # the box (all but a half-pixel rim) the two must agree exactly.
    image = random_images(1, 20, 20)
    top, left, height, width, out = 5, 3, 6, 9, 24
    boxes = CropBoxes(*(torch.tensor([v]) for v in (top, left, height, width)))
    batched = crop_resize(image, crop_boxes_theta(boxes, 20, 20), out)[0]
    expected = reference_crop(image[0], top, left, height, width, out, flip=False)
    centres = torch.arange(out) + 0.5
    inside_rows = (centres * height / out - 0.5 >= 0) & (centres * height / out - 0.5 <= height - 1)
    inside_cols = (centres * width / out - 0.5 >= 0) & (centres * width / out - 0.5 <= width - 1)
    inside = inside_rows[:, None] & inside_cols[None, :]  # (out, out)
    assert inside.float().mean() > 0.7
    torch.testing.assert_close(batched[:, inside], expected[:, inside], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[:, ~inside], expected[:, ~inside])  # the rim really differs


def test_full_image_without_flip_is_the_resized_image():
    images = random_images(4, 30, 40)
    generator = torch.Generator().manual_seed(3)
    crop = random_resized_crop(images, 24, scale=(1.0, 1.0), ratio=(40 / 30, 40 / 30), hflip=False, generator=generator)
    torch.testing.assert_close(crop, resize(images, 24), atol=1e-6, rtol=0)
    # And resize itself is plain bilinear interpolation of the whole image, shrinking or enlarging.
    for size in (24, 50):
        reference = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(resize(images, size), reference, atol=1e-5, rtol=0)


def test_flip_mirrors_the_crop():
    images = random_images(8, 32, 32)
    boxes = sample_crop_boxes(8, 32, 32, (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    plain = crop_resize(images, crop_boxes_theta(boxes, 32, 32), 16)
    mirrored = crop_resize(images, crop_boxes_theta(boxes, 32, 32, torch.ones(8, dtype=torch.bool)), 16)
    torch.testing.assert_close(mirrored, plain.flip(-1), atol=1e-6, rtol=0)


def test_same_generator_same_output_and_output_contract():
    images = random_images(32, 36, 36)
    first = random_resized_crop(images, 20, generator=torch.Generator().manual_seed(7))
    second = random_resized_crop(images, 20, generator=torch.Generator().manual_seed(7))
    other = random_resized_crop(images, 20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == (32, 3, 20, 20) and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_boxes_follow_torchvision_rules():
    height, width, scale, ratio = 60, 80, (0.2, 0.9), (0.5, 2.0)
    boxes = sample_crop_boxes(4000, height, width, scale, ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes
    assert bool((top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all())
    assert bool((top + h <= height).all() and (left + w <= width).all())
    # Rounding w and h to whole pixels moves the area and aspect a little: allow one pixel of slack.
    area = (h * w).float() / (height * width)
    assert bool((area >= scale[0] * (1 - 2 / h.float().clamp(max=w.float()))).all())
    assert bool((area <= scale[1] * (1 + 2 / h.float().clamp(max=w.float())) + 1e-6).all())
    log_aspect = torch.log(w.float() / h.float())
    assert bool((log_aspect >= math.log(ratio[0]) - 1.0 / h.clamp(max=w).float()).all())
    assert bool((log_aspect <= math.log(ratio[1]) + 1.0 / h.clamp(max=w).float()).all())
    # Offsets spread over the valid positions (uniform), not stuck at a corner or the centre.
    assert 0.4 < (left.float() / (width - w).clamp(min=1).float()).mean() < 0.6


def test_fallback_is_a_centre_crop_with_clamped_aspect():
    # A 10x100 strip cannot hold any box of aspect in [3/4, 4/3] and area >= 90%: every image falls back.
    boxes = sample_crop_boxes(5, 10, 100, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), generator=torch.Generator())
    assert boxes.height.tolist() == [10] * 5
    assert boxes.width.tolist() == [round(10 * 4 / 3)] * 5
    assert boxes.top.tolist() == [0] * 5
    assert boxes.left.tolist() == [(100 - 13) // 2] * 5


def test_normalize_and_input_errors():
    x = torch.rand(2, 3, 4, 4)
    y = normalize(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y * std + mean, x)
    with pytest.raises(ValueError, match="uint8"):
        resize(torch.rand(2, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(random_images(1, 8, 8), 4, scale=(0.5, 0.1), generator=torch.Generator())


def test_gaussian_blur_spreads_an_impulse_by_the_normalised_kernel_and_keeps_constants():
    sigma = 1.5
    radius = math.ceil(3 * sigma)
    weights = [math.exp(-(k**2) / (2 * sigma**2)) for k in range(-radius, radius + 1)]
    total = sum(weights)
    impulse = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    impulse[0, 0, 7, 7] = 1.0
    out = gaussian_blur(impulse, sigma)[0, 0]
    assert out.sum().item() == pytest.approx(1.0)  # interior: nothing reaches the border
    assert out[7, 7].item() == pytest.approx((weights[radius] / total) ** 2)
    assert out[7, 9].item() == pytest.approx(weights[radius] * weights[radius + 2] / total**2)
    torch.testing.assert_close(out, out.T)
    constant = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)  # border repeated, not zero-padded
    x = torch.rand(2, 3, 8, 8)
    assert gaussian_blur(x, 0.0) is x
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, -1.0)
    with pytest.raises(ValueError, match="float"):
        gaussian_blur(x.to(torch.uint8), 1.0)
