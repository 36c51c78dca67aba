"""Dream-vs-real videos: the open-loop dream equals stepping the model by hand, the side-by-side layout, and
mp4 files that decode with the frame count written."""

import imageio
import numpy as np
import pytest
import torch

from experiments.video import LABEL_HEIGHT, dream_clip, side_by_side, write_mp4
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel


def tiny_model_and_decoder() -> tuple[WorldModel, Decoder]:
    torch.manual_seed(0)
    model = JEPAWorldModel(
        (16, 16, 3),
        2,
        latent_dim=8,
        hidden_dim=8,
        mlp_dim=8,
        ensemble_size=2,
        vit_size="micro",
        image_size=16,
        patch_size=4,
    )
    return model, Decoder(latent_dim=8, image_size=16, width=4)


def test_dream_clip_reconstructs_the_context_then_imagines_like_stepping_by_hand():
    model, decoder = tiny_model_and_decoder()
    T, context = 7, 3
    generator = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (T, 16, 16, 3), generator=generator, dtype=torch.uint8)
    action = torch.eye(2)[torch.randint(0, 2, (T,), generator=generator)]  # (T, 2) one-hot
    action[0] = 0  # nothing led to an episode's first step
    real, dream = dream_clip(model, decoder, obs, action, context)
    assert real.shape == (T, 16, 16, 3) and dream.shape == (T, 16, 16, 3) and dream.dtype == np.uint8
    np.testing.assert_array_equal(real, obs.numpy())
    with torch.no_grad():
        z, targets = model.encode(obs), model.targets(obs)  # (T, D)
        h, z_prev = model.initial_state(1), torch.zeros(1, 8)
        for t in range(context):  # teacher-forced, from the episode's start
            h, _ = model.step(h, z_prev, action[None, t] if t else torch.zeros(1, 2))
            z_prev = z[None, t]
        latents = list(targets[:context])
        for t in range(context, T):  # open loop: the model's own predictions fed back
            h, z_prev = model.step(h, z_prev, action[None, t])
            latents.append(z_prev[0])
        expected = decoder.frames(torch.stack(latents)).numpy()
    assert np.abs(dream.astype(int) - expected.astype(int)).max() <= 1  # float rounding may move a pixel value by 1
    with pytest.raises(ValueError, match="context"):
        dream_clip(model, decoder, obs, action, context=T)


def test_side_by_side_puts_real_left_dream_right_in_macro_blocks():
    real = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    dream = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    frames = side_by_side(real, dream, labels=False)
    side = 192  # 32 px enlarged 6 times
    assert frames.shape == (3, 208, 384, 3) and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    left = frames[:, LABEL_HEIGHT : LABEL_HEIGHT + side, :side]
    right = frames[:, LABEL_HEIGHT : LABEL_HEIGHT + side, side : 2 * side]
    np.testing.assert_array_equal(left[:, ::6, ::6], real)  # nearest-neighbour enlargement
    np.testing.assert_array_equal(right[:, ::6, ::6], dream)
    labelled = side_by_side(real, dream, context=1)
    assert labelled[:, :LABEL_HEIGHT].any()  # captions drawn in the band
    np.testing.assert_array_equal(labelled[:, LABEL_HEIGHT:], frames[:, LABEL_HEIGHT:])
    with pytest.raises(ValueError, match="same number of frames"):
        side_by_side(real, dream[:2])


def test_mp4_decodes_with_every_frame(tmp_path):
    frames = np.zeros((11, 48, 64, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.linspace(0, 250, 11, dtype=np.uint8)[:, None, None]  # red rises frame by frame
    path = write_mp4(tmp_path / "videos" / "clip.mp4", frames, fps=10)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # no temp file left behind
    with imageio.get_reader(path, format="FFMPEG") as reader:  # an mp4 reader reports len() as inf: iterate
        decoded = np.stack(list(reader.iter_data()))
    assert decoded.shape == (11, 48, 64, 3)
    red = decoded[..., 0].mean(axis=(1, 2))
    assert np.abs(red - frames[:, 0, 0, 0]).max() < 10  # each frame back in its place (steps are 25 apart)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "bad.mp4", frames.astype(np.float32))
