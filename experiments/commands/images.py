"""`wm images`: write labelled images the project makes itself as a real image folder (one subfolder of PNG files
per class), for `wm pretrain --set pretrain.data.source=folder:<DIR>` and for any other tool that reads folders.

    wm images --source glyphs --out data/glyphs               # the digits 0-9, 300 images each, 72 px
    wm images --source synthetic --out data/fractals --num-classes 10 --num-images 3000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from worldmodel.perception.data import FractalDataset
from worldmodel.perception.glyphs import GLYPHS, GlyphDataset, write_image_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm images", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        choices=("glyphs", "synthetic"),
        required=True,
        help="glyphs: rendered characters; synthetic: fractals (as pretrain.data.source)",
    )
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    parser.add_argument("--num-images", type=int, default=3000, help="images in all (default 3000)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")
    parser.add_argument("--size", type=int, default=72, help="image side in pixels (default 72)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    args = parser.parse_args(argv)
    if args.num_images < args.num_classes or args.seed < 0:
        parser.error(
            f"need --num-images >= --num-classes and --seed >= 0, got {args.num_images}, "
            f"{args.num_classes} and {args.seed}"
        )
    per_class = math.ceil(args.num_images / args.num_classes)
    try:
        if args.source == "glyphs":
            dataset = GlyphDataset(args.num_classes, per_class, args.size, args.seed)
            names = list(GLYPHS[: args.num_classes])
        else:
            dataset = FractalDataset(args.num_classes, per_class, args.size, args.seed)
            names = [f"fractal{k:02d}" for k in range(args.num_classes)]
        written = write_image_folder(dataset.images, dataset.labels, names, args.out)
    except (ValueError, FileExistsError) as error:
        print(f"wm images: {error}", file=sys.stderr)
        return 2
    print(
        f"{written} images in {len(names)} classes written to {args.out} (use: --set pretrain.data.source=folder:"
        f"{args.out})"
    )
    return 0
