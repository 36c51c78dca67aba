"""`wm config`: the resolved config, every field with its one-line documentation.

    wm config                                   # the defaults
    wm config --config cartpole --set run.seed=3

The output is YAML: saved to a file, it loads back with `--config FILE` to the same config.
"""

from __future__ import annotations

import argparse

from experiments.config import describe, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm config", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", action="append", default=[], metavar="NAME|YAML", help="a preset to apply (repeatable, in order)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one config value (repeatable)",
    )
    args = parser.parse_args(argv)
    print("\n".join(describe(load_config(args.config, args.overrides))))
    return 0
