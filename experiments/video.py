"""Videos: a real clip beside the world model's open-loop dream of it, written as mp4 with moviepy.

    real, dream = dream_clip(model, decoder, obs, action, context=5)
    write_mp4(path, side_by_side(real, dream, context=5), fps=15)

The dream starts from the same real step and is driven by the same real actions; after `context` observed
steps the model only sees its own predictions, so where the two panels drift apart is where the model's
understanding of the env ends. Frames before that are the decoder's reconstructions of the observed latents.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from agents.agent import Recording
from envs.atomic import fsync_directory
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

VIDEO_FPS = 15  # frames per second of every video a run writes
LABEL_HEIGHT = 16  # pixels of the caption band above the panels
PANEL_SIDE = 192  # frames are enlarged (nearest neighbour) to about this side so small frames stay visible
MACRO_BLOCK = 16  # H.264 encoders want sides divisible by 16; frames are padded to that
REAL_COLOUR, RECON_COLOUR, DREAM_COLOUR = (255, 255, 255), (160, 200, 255), (255, 200, 0)


@torch.no_grad()
def dream_clip(
    model: WorldModel, decoder: Decoder, obs: torch.Tensor, action: torch.Tensor, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Real frames of one episode segment and the model's decoded dream of the same segment.

    The model observes steps [0, context) (teacher-forced, the segment starts an episode), then imagines
    steps [context, T) open-loop under the real actions. Dream frames before `context` are reconstructions
    of the observed target latents; from `context` on they decode the predicted latents.

    Args:
        model: the world model (pixel observations).
        decoder: a decoder of the model's target latents.
        obs: (T, H, W, C) uint8 frames starting at an episode's first step, on the model's device.
        action: (T, A) float32 actions (action[t] led to obs[t]).
        context: observed steps, 1 <= context < T.
    Returns:
        real (T, H, W, C) and dream (T, side, side, C) uint8 arrays, side the decoder's image size.
    """
    T = len(obs)
    if not 1 <= context < T:
        raise ValueError(f"context must be in [1, {T}) for a clip of {T} frames, got {context}")
    is_first = torch.zeros(1, context, dtype=torch.bool, device=obs.device)
    is_first[0, 0] = True
    zeros = torch.zeros(1, context, dtype=action.dtype, device=obs.device)
    observed = WorldModelBatch(obs[None, :context], action[None, :context], zeros, zeros + 1, is_first)
    hidden, z, targets = model.real_states(observed)  # (1, context, hidden_dim), (1, context, D) twice
    dream = model.imagine(hidden[:, -1], z[:, -1], action[None, context:])  # latents (1, T - context, D)
    latents = torch.cat([targets, dream.latent], dim=1)  # (1, T, D)
    return obs.cpu().numpy(), decoder.frames(latents[0]).cpu().numpy()


def recorded_clip(model: WorldModel, decoder: Decoder, recording: Recording, context: int) -> np.ndarray:
    """[real | dream] video frames of an episode a controller played: the real env on the left, on the right the
    model's open-loop dream under the same actions after `context` observed steps (fewer when the episode is short).

    Returns (T, H', W', 3) uint8 frames for `write_mp4`.
    """
    obs, action = recording.episode()
    if len(obs) < 2:
        raise ValueError(f"a dream beside reality needs an episode of at least 2 frames, got {len(obs)}")
    context = min(context, len(obs) - 1)
    weight = next(model.parameters())
    obs_t = torch.as_tensor(obs, device=weight.device)
    action_t = torch.as_tensor(action, device=weight.device, dtype=weight.dtype)
    real, dream = dream_clip(model, decoder, obs_t, action_t, context)
    return side_by_side(real, dream, context)


def _panel(frame: np.ndarray, side: int) -> np.ndarray:
    """uint8 (h, w, C) -> (side, side, 3), nearest-neighbour so pixels stay sharp."""
    image = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
    return np.asarray(image.resize((side, side), Image.NEAREST))


def side_by_side(real: np.ndarray, dream: np.ndarray, context: int = 0, labels: bool = True) -> np.ndarray:
    """Compose [real | dream] video frames with a caption band, padded to sides divisible by 16.

    Args:
        real: (T, H, W, C) uint8; dream: (T, side, side, C) uint8 (enlarged to the same panel size).
        context: frames before this index are captioned "recon" instead of "dream".
        labels: draw the captions and the frame index.
    Returns:
        (T, H', W', 3) uint8 with H' = panel + 16 and W' = 2 * panel, rounded up to multiples of 16.
    """
    if len(real) != len(dream):
        raise ValueError(f"real and dream need the same number of frames, got {len(real)} and {len(dream)}")
    side = max(real.shape[1], round(PANEL_SIDE / real.shape[1]) * real.shape[1])
    height = -(-(side + LABEL_HEIGHT) // MACRO_BLOCK) * MACRO_BLOCK
    width = -(-(2 * side) // MACRO_BLOCK) * MACRO_BLOCK
    out = np.zeros((len(real), height, width, 3), dtype=np.uint8)
    for t, (left, right) in enumerate(zip(real, dream, strict=True)):
        out[t, LABEL_HEIGHT : LABEL_HEIGHT + side, :side] = _panel(left, side)
        out[t, LABEL_HEIGHT : LABEL_HEIGHT + side, side : 2 * side] = _panel(right, side)
        if labels:
            canvas = Image.fromarray(out[t])
            draw = ImageDraw.Draw(canvas)
            draw.text((4, 2), f"real  t={t}", fill=REAL_COLOUR)
            dreaming = t >= context
            caption = "dream (open loop)" if dreaming else "recon (observed)"
            draw.text((side + 4, 2), caption, fill=DREAM_COLOUR if dreaming else RECON_COLOUR)
            out[t] = np.asarray(canvas)
    return out


def single_panel(frames: np.ndarray) -> np.ndarray:
    """Frames (T, H, W, C) uint8 of any shape, enlarged by a whole factor (nearest neighbour) to about PANEL_SIDE
    pixels tall when smaller, then padded with black to sides divisible by 16: (T, H', W', 3)."""
    if frames.ndim != 4 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, C) with T >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    factor = max(1, round(PANEL_SIDE / height))
    padded = (-(-height * factor // MACRO_BLOCK) * MACRO_BLOCK, -(-width * factor // MACRO_BLOCK) * MACRO_BLOCK)
    out = np.zeros((len(frames), *padded, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
        out[t, : height * factor, : width * factor] = np.asarray(
            image.resize((width * factor, height * factor), Image.NEAREST)
        )
    return out


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 15) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4, atomically (temp file in the same folder, rename).

    Uses moviepy 2 (`from moviepy import ImageSequenceClip`); ffmpeg comes from imageio-ffmpeg.
    """
    from moviepy import ImageSequenceClip  # imported late: it is slow to import and only videos need it

    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # moviepy picks the format by suffix
    try:
        # moviepy writes int(duration * fps) frames and sums the duration from float 1 / fps steps, which can
        # fall a hair short of len(frames) (11 frames at 10 fps gave 10); half a frame more gives exactly all.
        clip = ImageSequenceClip(list(frames), fps=fps).with_duration((len(frames) + 0.5) / fps)
        clip.write_videofile(str(temp), codec="libx264", audio=False, logger=None, pixel_format="yuv420p")
        clip.close()
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path
