"""The toolkit's run machinery and loops (the commands are in experiments/commands/). The Python API (docs/api.md)
imports from here:

    from experiments import Config, dream_env, load_config, load_encoder, load_policy, load_world_model, run_cycle

The names load on first use (PEP 562), so `wm runs` and `wm presets` do not pay for torch and gymnasium.
"""

import importlib

API = {
    "Config": "experiments.config",
    "load_config": "experiments.config",
    "load_encoder": "experiments.load",
    "load_world_model": "experiments.load",
    "dream_env": "experiments.load",
    "load_policy": "experiments.load",
    "load_player": "experiments.load",
    "run_cycle": "experiments.cycle",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(API[name]), name)
