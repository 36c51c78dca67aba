"""`max_bad_images` counts distinct unreadable files, not reads of them: a long run over a folder with a few bad files
meets each of them every epoch, and must neither stop for it nor keep decoding them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from battery_helpers import DEBUG, summary, wm
from PIL import Image

from worldmodel.perception.data import BadImageBudget, ImageFolderDataset, StepBatchSampler, collate_images

GOOD, BAD, LIMIT = 14, 2, 3


def mixed_folder(root: Path) -> Path:
    """GOOD readable pngs and BAD unreadable files."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(GOOD):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"good{i:02d}.png")
    (root / "bad-noise.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "bad-text.png").write_bytes(b"not a png")
    return root


def test_each_bad_file_counts_once_and_is_not_read_again(tmp_path):
    dataset = ImageFolderDataset(mixed_folder(tmp_path / "images"), image_size=8)
    bad = {i for i in range(len(dataset)) if dataset.path(i).name.startswith("bad")}
    budget = BadImageBudget(dataset, max_bad=LIMIT)
    steps = 40  # 20 epochs of 2 batches of 8: every bad file is drawn about 20 times
    sampler = StepBatchSampler(len(dataset), 8, seed=0, total_steps=steps, skip=budget.bad)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_images)
    reads, images = 0, 0
    for batch in loader:
        reads += batch.num_bad
        images += len(batch.images)
        budget.update(batch)  # would raise at the fourth read if reads were counted
    assert budget.num_bad == BAD and budget.bad == bad
    assert reads == BAD  # met once each, then left out of every later batch
    assert images == steps * 8 - sum(1 for s in range(steps) for i in sampler.batch_indices(s) if i in bad)
    # A budget restored from its state (a resumed run) knows them too.
    restored = BadImageBudget(dataset, max_bad=LIMIT)
    restored.load_state_dict(budget.state_dict())
    assert restored.bad == bad and restored.record(sorted(bad), ["again", "again"]) == []


def test_a_batch_whose_every_item_is_skipped_collates_to_an_empty_batch():
    batch = collate_images([], image_shape=(3, 8, 8))
    assert batch.images.shape == (0, 3, 8, 8) and batch.indices.shape == (0,) and batch.num_bad == 0


@pytest.mark.slow
def test_a_long_pretrain_over_a_few_bad_files_finishes_counting_each_once(tmp_path):
    folder = mixed_folder(tmp_path / "images")
    run = tmp_path / "run"
    # 24 steps of batches of 8 from 16 images: 12 epochs, each drawing both bad files (with 2 decoding workers).
    settings = [
        f"pretrain.data.source=folder:{folder}",
        f"pretrain.data.max_bad_images={LIMIT}",
        "pretrain.optim.steps=24",
        "pretrain.data.workers=2",
    ]
    result = wm("pretrain", *DEBUG, "--run-dir", str(run), *(arg for s in settings for arg in ("--set", s)))
    assert result.returncode == 0, result.stderr
    assert summary(run)["results"]["bad_images"] == BAD
    assert result.stderr.count("skipped unreadable image") == BAD  # each named once
