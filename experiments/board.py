"""What tensorboard shows beside the scalars: the resolved config as hparams, and videos.

torch's `SummaryWriter.add_video` needs `moviepy.editor`, which moviepy 2 no longer has, and `add_hparams`
writes into a new sub-run of its own. Both summaries are written here directly into the run's own event file:

    write_hparams(run.tb, config_lib.to_dict(cfg), metrics=["cycle/return_mean"])
    add_gif(run.tb, "video/iteration", frames, step, fps=15)
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

GIF_SIDE = 256  # tensorboard videos are shrunk so their longer side is at most this many pixels


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, with values tensorboard's hparams accept: numbers, bools and strings
    (None and lists become their text)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def write_hparams(writer, config: dict[str, Any], metrics: list[str]) -> None:
    """The config as tensorboard hparams of this run, with `metrics` (scalar tags the run logs) as its results."""
    from torch.utils.tensorboard.summary import hparams

    experiment, session_start, session_end = hparams(flatten(config), {tag: 0.0 for tag in metrics})
    file_writer = writer._get_file_writer()
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary)


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """uint8 frames (T, H, W, 3) as a looping animated GIF, shrunk to at most GIF_SIDE pixels a side."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    scale = min(1.0, GIF_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images = [Image.fromarray(frame).resize(size, Image.BILINEAR) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def add_gif(writer, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    """A video in tensorboard's images tab (an animated GIF, which is how tensorboard stores videos)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = gif_bytes(frames, fps)
    width, height = Image.open(io.BytesIO(data)).size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
