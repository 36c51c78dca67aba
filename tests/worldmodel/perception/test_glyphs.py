"""Glyph images rendered by the project, and labelled images written as a real image folder (`wm images`)."""

import numpy as np
import pytest
import torch

from experiments import cli
from worldmodel.perception.data import FractalDataset, ImageFolderDataset
from worldmodel.perception.glyphs import GLYPHS, MIN_CONTRAST, GlyphDataset, render_glyph, write_image_folder


def test_glyphs_are_seeded_labelled_and_visible():
    a, b = GlyphDataset(4, 5, 32, seed=3), GlyphDataset(4, 5, 32, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (20, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.tolist() == [k for k in range(4) for _ in range(5)] and a[7].index == 7 and a[7].ok
    assert not torch.equal(a.images, GlyphDataset(4, 5, 32, seed=4).images)
    for image in a.images:  # every image holds two shades that far apart
        luminance = (image.float() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0) / 255
        assert luminance.max() - luminance.min() >= 0.8 * MIN_CONTRAST  # antialiased thin strokes at 32 px


def test_a_glyph_is_drawn_where_it_is_told_whatever_the_colours():
    image = render_glyph(GLYPHS.index("1"), 48, np.random.default_rng(0))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    background = image[0, 0]
    assert (image != background).any(axis=-1).mean() > 0.02  # the glyph covers some of the image, not none


@pytest.mark.parametrize(
    "bad", [dict(num_classes=1), dict(num_classes=len(GLYPHS) + 1), dict(per_class=0), dict(image_size=8)]
)
def test_impossible_glyph_sets_are_refused(bad):
    kwargs = dict(num_classes=3, per_class=2, image_size=32, seed=0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        GlyphDataset(**kwargs)


def test_a_written_folder_reads_back_as_the_same_images_and_labels(tmp_path):
    glyphs = GlyphDataset(3, 4, 24, seed=0)
    assert write_image_folder(glyphs.images, glyphs.labels, list(GLYPHS[:3]), tmp_path / "out") == 12
    folder = ImageFolderDataset(tmp_path / "out", 24)
    assert folder.class_names == ["0", "1", "2"] and folder.labels.tolist() == glyphs.labels.tolist()
    assert torch.equal(torch.stack([folder[i].image for i in range(12)]), glyphs.images)  # PNG is lossless
    assert not list((tmp_path / "out").rglob("*.partial"))
    with pytest.raises(FileExistsError, match="not empty"):
        write_image_folder(glyphs.images, glyphs.labels, list(GLYPHS[:3]), tmp_path / "out")


def test_wm_images_writes_fractals_and_glyphs_and_refuses_a_full_folder(tmp_path, capsys):
    assert cli.main(["images", "--source", "synthetic", "--out", str(tmp_path / "f"), "--num-images", "8",
                     "--num-classes", "2", "--size", "16"]) == 0  # fmt: skip
    folder = ImageFolderDataset(tmp_path / "f", 16)
    assert folder.class_names == ["fractal00", "fractal01"] and len(folder) == 8
    assert torch.equal(torch.stack([folder[i].image for i in range(8)]), FractalDataset(2, 4, 16, seed=0).images)
    assert cli.main(["images", "--source", "glyphs", "--out", str(tmp_path / "g"), "--num-images", "6",
                     "--num-classes", "3", "--size", "16"]) == 0  # fmt: skip
    assert "6 images in 3 classes written to" in capsys.readouterr().out
    assert (
        cli.main(
            ["images", "--source", "glyphs", "--out", str(tmp_path / "g"), "--num-images", "6", "--num-classes", "3"]
        )
        == 2
    )
    assert "exists and is not empty" in capsys.readouterr().err
