"""`wm video --run DIR`: a video of one real episode of a run's controller beside the world model's dream of it.

    wm video --run runs/cartpole                  # <run>/videos/controller.mp4
    wm video --run runs/cartpole --steps 200 --seed 3 --out cartpole.mp4

Works on any finished or interrupted `wm train`, `wm evolve` or `wm cycle` run (`wm eval` says which controller and
model it plays). Left: the real env; right: the model's open-loop dream under the same actions after `--context`
observed steps (world_model.video_context), decoded into frames. A run without a decoder (state observations, or
world_model.decoder_width 0) gets the real env alone, drawn with the env's own renderer. A run without a controller
yet (a train run, or one interrupted before its first evaluation) plays random actions. The episode is played by
experiments/playback.py's `play`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from experiments.arguments import add_common_arguments, open_player, positive
from experiments.playback import play
from experiments.video import VIDEO_FPS, recorded_clip, single_panel, write_mp4

DEFAULT_STEPS = 500


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm video", description="A video of a run's controller beside its dream.")
    parser.add_argument("--run", required=True, type=Path, help="a `wm train`, `wm evolve` or `wm cycle` run")
    parser.add_argument("--steps", type=positive, default=DEFAULT_STEPS, help=f"at most (default {DEFAULT_STEPS})")
    parser.add_argument("--context", type=positive, help="real steps observed before the dream (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode (default 0)")
    parser.add_argument("--out", type=Path, help="the mp4 to write (default: <run>/videos/controller.mp4)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    player = open_player(args)
    out = args.out or args.run / "videos" / ("controller.mp4" if player.parameters is not None else "random.mp4")
    who = "random actions" if player.parameters is None else "the controller"
    print(f"playing {who} of {player.source} on {player.cfg.env.id}", file=sys.stderr)
    recording, rendered, total = play(player, args.steps, args.seed, args.progress)
    if player.decoder is not None:
        context = args.context or player.cfg.world_model.video_context
        frames = recorded_clip(player.model, player.decoder, recording, context)
    else:
        frames = single_panel(np.stack(rendered))
    write_mp4(out, frames, fps=VIDEO_FPS)
    print(
        f"return {total:.1f} over {len(recording.obs) - 1} steps; {len(frames)} frames written to {out}",
        file=sys.stderr,
    )
    return 0
