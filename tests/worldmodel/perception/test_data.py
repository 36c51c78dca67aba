"""Image sources on real files: scanning, labels, decoding, corrupt files through DataLoader workers,
fractals, in-memory frames and step-addressed batch sampling."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from worldmodel.perception.data import (
    IMAGE_EXTENSIONS,
    BadImageBudget,
    FractalDataset,
    ImageBatch,
    ImageFolderDataset,
    ImageItem,
    ImageSource,
    StepBatchSampler,
    TensorImageDataset,
    collate_images,
    load_image,
)
from worldmodel.perception.probe import knn_top1, split_train_test


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 16), mode: str = "RGB") -> Path:
    """A solid-colour image file; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def write_corrupt_files(folder: Path) -> tuple[Path, Path]:
    """Random bytes named .jpg and a png cut off halfway through its pixel data."""
    folder.mkdir(parents=True, exist_ok=True)
    random_bytes = folder / "noise.jpg"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    truncated = folder / "truncated.png"
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible pixels
    Image.fromarray(noise).save(truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return random_bytes, truncated


# ------------------------------------------------------------------------------------------------
# ImageFolderDataset


def test_class_subfolders_become_labels(tmp_path):
    write_image(tmp_path / "cat" / "a.jpg", (200, 0, 0))
    write_image(tmp_path / "cat" / "deeper" / "b.PNG", (210, 0, 0))  # nested, upper-case suffix
    write_image(tmp_path / "dog" / "c.webp", (0, 0, 200))
    write_image(tmp_path / "dog" / "d.jpeg", (0, 0, 210))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "dog" / ".hidden.png", (0, 0, 0))  # editor/OS debris is skipped
    dataset = ImageFolderDataset(tmp_path, image_size=8)
    assert isinstance(dataset, ImageSource)
    assert len(dataset) == 4
    assert dataset.class_names == ["cat", "dog"] and dataset.num_classes == 2
    assert dataset.labels.tolist() == [0, 0, 1, 1] and dataset.labels.dtype == torch.int64
    assert [dataset.path(i).relative_to(tmp_path).as_posix() for i in range(4)] == [
        "cat/a.jpg",
        "cat/deeper/b.PNG",
        "dog/c.webp",
        "dog/d.jpeg",
    ]
    assert dataset.states is None and dataset.image_shape == (3, 8, 8)
    item = dataset[2]
    assert item.ok and item.index == 2 and item.image.shape == (3, 8, 8) and item.image.dtype == torch.uint8
    # Lossy webp/jpeg: the solid blue survives within a few levels.
    assert abs(item.image[2].float().mean().item() - 200) < 6 and item.image[0].float().mean().item() < 6


def test_images_at_the_top_level_mean_no_labels(tmp_path):
    write_image(tmp_path / "a.png", (1, 2, 3))
    write_image(tmp_path / "sub" / "b.png", (4, 5, 6))
    dataset = ImageFolderDataset(tmp_path, image_size=4)
    assert len(dataset) == 2 and dataset.labels is None and dataset.num_classes is None
    # Beside two or more class folders, loose top-level images make it unlabelled, with a warning.
    write_image(tmp_path / "other" / "c.png", (7, 8, 9))
    with pytest.warns(UserWarning, match="top level"):
        mixed = ImageFolderDataset(tmp_path, image_size=4)
    assert len(mixed) == 3 and mixed.labels is None


def test_decode_resizes_the_shorter_side_and_centre_crops(tmp_path):
    # 40 x 20 image: left quarter red, middle half green, right quarter blue. Shorter side 20 -> 10
    # gives 20 x 10, and the centre 10 x 10 crop is the green half only.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:30] = (0, 255, 0)
    pixels[:, 30:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 10)
    assert image.shape == (3, 10, 10)
    assert image[1, :, 2:8].min() >= 250 and image[0, :, 2:8].max() <= 5 and image[2, :, 2:8].max() <= 5
    # Grey and RGBA files come out as 3-channel RGB.
    grey = load_image(write_image(tmp_path / "grey.png", (90, 90, 90), mode="L"), 6)
    rgba = load_image(write_image(tmp_path / "rgba.png", (10, 20, 30), mode="RGBA"), 6)
    assert grey.shape == rgba.shape == (3, 6, 6)
    assert rgba[:, 0, 0].tolist() == [10, 20, 30]


def test_missing_and_empty_folders_name_the_folder_and_extensions(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as missing:
        ImageFolderDataset(tmp_path / "nowhere", image_size=8)
    assert "nowhere" in str(missing.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images") as empty:
        ImageFolderDataset(tmp_path / "empty", image_size=8)
    assert "empty" in str(empty.value) and all(ext in str(empty.value) for ext in IMAGE_EXTENSIONS)


def test_max_images_is_a_seeded_subset(tmp_path):
    for i in range(12):
        write_image(tmp_path / f"{i:02d}.png", (i, i, i), size=(4, 4))
    full = ImageFolderDataset(tmp_path, image_size=4)
    subset = ImageFolderDataset(tmp_path, image_size=4, max_images=5, seed=1)
    same = ImageFolderDataset(tmp_path, image_size=4, max_images=5, seed=1)
    other = ImageFolderDataset(tmp_path, image_size=4, max_images=5, seed=2)
    names = [subset.path(i).name for i in range(len(subset))]
    assert len(full) == 12 and len(subset) == 5
    assert names == sorted(names) and set(names) <= {full.path(i).name for i in range(12)}
    assert names == [same.path(i).name for i in range(5)]
    assert names != [other.path(i).name for i in range(5)]
    assert len(ImageFolderDataset(tmp_path, image_size=4, max_images=100)) == 12


def test_corrupt_files_are_dropped_and_reported_through_dataloader_workers(tmp_path):
    for i in range(10):
        write_image(tmp_path / "good" / f"{i}.png", (i * 20, 0, 0), size=(10, 10))
    noise, truncated = write_corrupt_files(tmp_path / "bad")
    dataset = ImageFolderDataset(tmp_path, image_size=8)
    assert len(dataset) == 12 and dataset.labels.tolist() == [0, 0] + [1] * 10  # "bad" < "good"
    item = dataset[0]
    assert isinstance(item, ImageItem) and not item.ok and item.image.shape == (3, 8, 8) and item.image.max() == 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=5, shuffle=False, num_workers=2, collate_fn=collate_images, timeout=60
    )
    budget = BadImageBudget(dataset, max_bad=5)
    batches = list(loader)
    for batch in batches:
        assert isinstance(batch, ImageBatch)
        budget.update(batch)
    assert [len(b.images) for b in batches] == [3, 5, 2]
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(2, 12))
    assert sum(b.num_bad for b in batches) == 2 == budget.num_bad
    assert [dataset.path(i) for i in batches[0].bad_indices] == [noise, truncated]
    assert all(error for error in batches[0].bad_errors)  # the reason travels with the index
    assert str(noise) in budget.bad_items[0] and str(truncated) in budget.bad_items[1]
    labels = dataset.labels[batches[1].indices]  # labels stay aligned after dropping
    assert labels.tolist() == [1] * 5
    # Past the limit, the budget stops the run and names the files.
    strict = BadImageBudget(dataset, max_bad=1)
    with pytest.raises(RuntimeError, match="truncated.png"):
        strict.update(batches[0])


def test_a_batch_of_only_failures_keeps_its_shape(tmp_path):
    write_corrupt_files(tmp_path)
    dataset = ImageFolderDataset(tmp_path, image_size=6)
    batch = collate_images([dataset[0], dataset[1]])
    assert batch.images.shape == (0, 3, 6, 6) and batch.indices.shape == (0,) and batch.num_bad == 2


# ------------------------------------------------------------------------------------------------
# FractalDataset


def registered(images: torch.Tensor) -> torch.Tensor:
    """Undo the per-instance nuisances: crop to the drawn pixels (offset, scale), average with the
    mirror image (flip), grey (colours). (N, 3, S, S) uint8 -> (N, 144) float."""
    features = []
    for image in images:
        grey = image.float().mean(dim=0)  # (S, S)
        rows = (grey > 0).any(dim=1).nonzero()
        cols = (grey > 0).any(dim=0).nonzero()
        crop = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        small = F.interpolate(crop[None, None], size=(12, 12), mode="area")[0, 0]
        features.append((small + small.flip(-1)).flatten())
    return torch.stack(features)


def test_fractals_are_deterministic_labelled_and_distinct():
    dataset = FractalDataset(num_classes=8, per_class=15, image_size=32, seed=3)
    assert isinstance(dataset, ImageSource)
    assert len(dataset) == 120 and dataset.num_classes == 8 and dataset.states is None
    assert dataset.images.shape == (120, 3, 32, 32) and dataset.images.dtype == torch.uint8
    assert dataset.labels.tolist() == [c for c in range(8) for _ in range(15)]
    item = dataset[17]
    assert item.ok and item.index == 17 and torch.equal(item.image, dataset.images[17])
    # Every image draws something, and leaves background.
    drawn = (dataset.images.amax(dim=1) > 0).float().mean(dim=(1, 2))  # (N,) fraction of lit pixels
    assert bool((drawn > 0.02).all() and (drawn < 0.9).all())
    # Same seed: identical tensors; another seed: other images.
    assert torch.equal(FractalDataset(8, 15, 32, seed=3).images, dataset.images)
    assert not torch.equal(FractalDataset(8, 15, 32, seed=4).images, dataset.images)
    # Instances of a class differ (jitter, colour, placement)...
    assert not torch.equal(dataset.images[0], dataset.images[1])
    # ...but the classes are told apart once offset, scale, flip and colour are undone (chance 1/8).
    features = registered(dataset.images)
    train_idx, test_idx = split_train_test(len(dataset), 0.3, seed=0)
    accuracy = knn_top1(features[train_idx], dataset.labels[train_idx], features[test_idx], dataset.labels[test_idx], 5)
    assert accuracy > 0.8


# ------------------------------------------------------------------------------------------------
# TensorImageDataset


def test_tensor_dataset_layouts_labels_and_states():
    frames = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)  # (N, H, W, C)
    states = np.arange(12, dtype=np.float64).reshape(6, 2)
    dataset = TensorImageDataset(frames, labels=np.array([0, 1, 2, 0, 1, 2]), states=states, name="env")
    assert isinstance(dataset, ImageSource)
    assert dataset.image_shape == (3, 10, 12) and dataset.num_classes == 3
    assert torch.equal(dataset[4].image, torch.from_numpy(frames[4]).permute(2, 0, 1))
    assert dataset.states.dtype == torch.float32 and dataset.states.shape == (6, 2)
    channels_first = TensorImageDataset(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert torch.equal(channels_first.images, dataset.images) and channels_first.labels is None
    grey = TensorImageDataset(frames[..., :1])
    assert grey.image_shape == (3, 10, 12) and torch.equal(grey[0].image[0], grey[0].image[2])
    rgba = TensorImageDataset(np.concatenate([frames, frames[..., :1]], axis=3))
    assert torch.equal(rgba.images, dataset.images)
    # An ambiguous layout is settled by the argument.
    square = np.zeros((2, 3, 5, 3), dtype=np.uint8)
    assert TensorImageDataset(square).image_shape == (3, 3, 5)
    assert TensorImageDataset(square, channels_last=False).image_shape == (3, 5, 3)
    batch = collate_images([dataset[i] for i in range(3)])
    assert batch.images.shape == (3, 3, 10, 12) and batch.num_bad == 0
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(frames.astype(np.float32))
    with pytest.raises(ValueError, match="channel"):
        TensorImageDataset(np.zeros((2, 5, 6, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="states"):
        TensorImageDataset(frames, states=np.zeros((5, 2)))


# ------------------------------------------------------------------------------------------------
# StepBatchSampler


def test_step_sampler_covers_each_epoch_and_resumes_exactly():
    sampler = StepBatchSampler(num_items=23, batch_size=5, seed=7, total_steps=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20 and sampler.steps_per_epoch == 4
    assert all(len(batch) == 5 for batch in batches)
    for epoch in range(5):
        seen = [i for batch in batches[epoch * 4 : (epoch + 1) * 4] for i in batch]
        assert len(set(seen)) == 20 and set(seen) <= set(range(23))  # no repeats; 3 dropped (drop_last)
    assert batches[0:4] != batches[4:8]  # a new permutation every epoch
    # A restart at step k yields exactly the rest of the uninterrupted sequence.
    for k in (0, 3, 4, 13):
        assert list(StepBatchSampler(23, 5, seed=7, start_step=k, total_steps=20)) == batches[k:]
    assert sampler.batch_indices(13) == batches[13]
    assert list(StepBatchSampler(23, 5, seed=8, total_steps=20)) != batches


def test_step_sampler_drives_a_dataloader_and_resumes_mid_run():
    dataset = TensorImageDataset(np.arange(10, dtype=np.uint8).repeat(12).reshape(10, 2, 2, 3))
    loader_full = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(10, 4, seed=0, total_steps=6), collate_fn=collate_images
    )
    resumed = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(10, 4, seed=0, start_step=4, total_steps=6), collate_fn=collate_images
    )
    full_indices = [batch.indices.tolist() for batch in loader_full]
    assert [batch.indices.tolist() for batch in resumed] == full_indices[4:]
    first = next(iter(loader_full))
    assert first.images[:, 0, 0, 0].tolist() == first.indices.tolist()  # pixel value = index here
    infinite = StepBatchSampler(10, 4, seed=0)
    with pytest.raises(TypeError, match="infinite"):
        len(infinite)
    with pytest.raises(ValueError, match="batch_size"):
        StepBatchSampler(3, 4, seed=0)


def test_tensor_dataset_groups_are_kept_and_a_wrong_shape_or_type_is_refused():
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    assert TensorImageDataset(frames, groups=np.array([0, 0, 1, 1])).groups.tolist() == [0, 0, 1, 1]
    assert TensorImageDataset(frames).groups is None
    for groups in (np.array([0, 1, 2]), np.array([0.0, 0.0, 1.0, 1.0])):
        with pytest.raises(ValueError, match=r"groups must be integers of shape \(4,\)"):
            TensorImageDataset(frames, groups=groups)
