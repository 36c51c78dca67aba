"""`wm presets`: the presets shipped with the toolkit, each with its purpose; `--config NAME` applies one."""

from __future__ import annotations

import argparse

from experiments.config import preset_purpose, shipped_presets


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="wm presets", description=__doc__.splitlines()[0]).parse_args(argv)
    presets = shipped_presets()
    width = max(map(len, presets))
    for name, path in presets.items():
        print(f"{name:<{width}}  {preset_purpose(path)}")
    return 0
