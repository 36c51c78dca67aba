"""`wm train`: learn a JEPA world model of a gymnasium env from random-policy rollouts.

    wm train --config configs/cartpole.yaml
    wm train --config configs/cartpole.yaml --encoder runs/<pretrain run>/checkpoints/latest.pt
    wm train --config configs/cartpole.yaml --episodes runs/<earlier run>/episodes

The loop lives in experiments/training.py. The life of a run: save a checkpoint of the initial model -> collect
random-policy episodes into `<run>/episodes` (or reuse a store), stored shard by shard, so that a run stopped while
collecting resumes the collection -> split the store by episode, the last `eval_fraction` held out -> save a step-0
checkpoint -> with a frozen encoder, encode every frame once into the store's latent cache -> train (the decoder
beside it every `decoder_every` steps), evaluating on the held-out episodes every `eval_every` steps -> train the
decoder alone for `decoder_steps` more steps -> final evaluation into summary.json's `model` section ->
videos/dream_vs_real.mp4.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from experiments import config as config_lib
from experiments.collection import check_episode_store
from experiments.features import load_encoder_weights
from experiments.inputs import env_spec
from experiments.rundir import RunError, add_run_arguments, execute, open_run
from experiments.training import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm train", description="Train a JEPA world model of a gymnasium env.")
    add_run_arguments(parser)
    parser.add_argument("--encoder", metavar="CHECKPOINT", help="start the encoder from a `wm pretrain` checkpoint")
    parser.add_argument("--episodes", metavar="DIR", help="train on this episode store instead of collecting")
    args = parser.parse_args(argv)
    encoder = episodes = None
    if args.resume:
        if args.encoder or args.episodes:
            raise RunError("--resume continues with the run's own encoder and episodes; drop --encoder and --episodes")
    else:
        # Check what the command line names against the config before any work or run directory exists.
        cfg = config_lib.load_config(args.config, args.overrides)
        spec = env_spec(cfg.env)
        if args.encoder:
            encoder = load_encoder_weights(Path(args.encoder), cfg)
        if args.episodes:
            episodes = check_episode_store(Path(args.episodes), spec)
    run = open_run(args, "train")
    body = functools.partial(train, encoder=encoder, encoder_path=args.encoder, episodes=episodes)
    return execute(run, body)
