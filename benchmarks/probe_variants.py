"""How a `wm pretrain` run's encoders read their labels under each way of probing them, beside random init.

    python benchmarks/probe_variants.py --run runs/<a pretrain run>          # its latest checkpoint
    python benchmarks/probe_variants.py --run runs/<run> --images 2000

For the run's own data source and probe split (the seeded subset `wm pretrain` probes), it encodes the probe images
with the EMA target encoder, the online (context) encoder and the run's random-init twin, and prints one JSON line per
encoder and pooling: linear top-1; k-NN top-1 of the raw features (cosine, what `wm pretrain` reports), of the
centred ones (the training features' mean removed) and of the standardised ones (per dimension, train statistics);
the centred features' effective rank and smallest per-dimension std relative to the mean one (a collapse shows as a
low rank); and the share of the patch features' variance that position alone explains (a patch that says only where
it is). Poolings: the mean of the final (layer-normed) patch features, their mean and std, the mean before the final
norm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

from experiments import config as config_lib  # noqa: E402
from experiments.checkpoint import read_checkpoint  # noqa: E402
from experiments.pretraining import build_dataset, build_probe_set, random_init_encoder  # noqa: E402
from worldmodel.dynamics.metrics import effective_rank  # noqa: E402
from worldmodel.perception import augment, probe  # noqa: E402
from worldmodel.perception.vit import VisionTransformer, pool_tokens  # noqa: E402


@torch.no_grad()
def tokens(encoder: VisionTransformer, images: torch.Tensor, image_size: int, final_norm: bool) -> torch.Tensor:
    """Patch features of uint8 images (N, C, H, W) -> (N, Np, V), with or without the encoder's final LayerNorm."""
    out = []
    for start in range(0, len(images), 256):
        x = augment.normalize(augment.resize(images[start : start + 256], image_size))
        x = encoder.patch_embed(x).flatten(2).transpose(1, 2) + encoder.pos_embed  # (N, V, grid, grid) -> (N, Np, V)
        for block in encoder.blocks:
            x = block(x)
        out.append(encoder.norm(x) if final_norm else x)
    return torch.cat(out)


def normalised(train: torch.Tensor, test: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    if how == "none":
        return train, test
    mean = train.mean(dim=0)
    if how == "centred":
        return train - mean, test - mean
    std = train.std(dim=0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a `wm pretrain` run directory")
    parser.add_argument("--images", type=int, default=0, help="probe images (default: the run's pretrain.eval)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    state = read_checkpoint(args.run / "checkpoints/latest.pt")
    cfg = config_lib.from_dict(state["config"])
    if args.images:
        cfg = config_lib.load_config([], [f"pretrain.eval.max_images={args.images}"], base=state["config"])
    pcfg, seed = cfg.pretrain, cfg.run.seed
    probes = build_probe_set(build_dataset(pcfg.data, pcfg.encoder.image_size, seed, False), pcfg, seed)
    if probes is None or probes.labels is None:
        sys.exit("the run's data has no labels to probe")
    encoders = {"random": random_init_encoder(pcfg, seed)}
    for name, prefix in (("target", "target_encoder."), ("online", "encoder.")):
        encoders[name] = random_init_encoder(pcfg, seed)
        encoders[name].load_state_dict(
            {k.removeprefix(prefix): v for k, v in state["model"].items() if k.startswith(prefix)}
        )
    tr, te, y = probes.train, probes.test, probes.labels
    classes = int(y.max()) + 1
    for name, encoder in encoders.items():
        encoder.eval()
        for final_norm in (True, False):
            patches = tokens(encoder, probes.images, pcfg.encoder.image_size, final_norm)  # (N, Np, V)
            # The share of the patch features' variance that is the same for every image at a position: near 1,
            # a patch's feature says where it is and little of what it shows (a collapse I-JEPA's loss cannot see).
            total = patches.flatten(0, 1).var(dim=0).sum()  # (N*Np, V) -> variance summed over V
            position_share = float(patches.mean(dim=0).var(dim=0).sum() / total)
            for pooling in ("mean", "mean_std") if final_norm else ("mean",):
                features = pool_tokens(patches, pooling)  # (N, F)
                std = features.std(dim=0)
                label = pooling + ("" if final_norm else "_prenorm")
                record = {
                    "step": state["step"],
                    "encoder": name,
                    "pooling": label,
                    "position_share": round(position_share, 3),
                    "centred_rank": round(float(effective_rank(features - features.mean(dim=0))), 2),
                    "std_min_over_mean": round(float(std.min() / std.mean()), 4),
                    "linear_top1": round(
                        probe.linear_probe_accuracy(features[tr], y[tr], features[te], y[te], classes), 4
                    ),
                }
                for how in ("none", "centred", "standardised"):
                    train, test = normalised(features[tr], features[te], how)
                    record[f"knn_{how}"] = round(probe.knn_top1(train, y[tr], test, y[te], k=pcfg.eval.knn_k), 4)
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
