"""Exporting a run's policy as one ONNX graph and a torch.export program, checked on real steps: `export_and_check`,
what `wm export` runs (experiments/commands/export.py says what the files hold and how the check is made)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from agents.policy import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    OnnxPolicy,
    PolicyStep,
    StatefulStep,
    actions_agree,
    export_onnx,
    export_program,
    record_steps,
    replay,
)
from envs import make_env
from envs.atomic import atomic_write_bytes, sha256_file
from experiments.load import Player
from experiments.progress import Progress

DEFAULT_STEPS = 200
ONNX_NAME, PROGRAM_NAME, REPORT_NAME = "policy.onnx", "policy.pt2", "export.json"


def export_and_check(
    player: Player, out: Path, steps: int, seed: int, threads: int | None, show_progress: bool
) -> dict:
    """Export the player's policy into `out` and check both files against the PyTorch agent on `steps` real steps;
    the figures for export.json."""
    import onnxruntime

    cfg = player.cfg
    env, _ = make_env(cfg.env.id, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat)
    bar = Progress(steps, "play", unit="step", enabled=show_progress)
    try:
        recorded = record_steps(player.agent(1), env, steps, seed, on_step=bar.update)
    finally:
        bar.close()
        env.close()
    step = PolicyStep(player.model, player.controller, player.parameters)
    print(f"exporting to {out / ONNX_NAME} and {out / PROGRAM_NAME}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ONNX_NAME, export_onnx(step, recorded.obs[:1]))
    atomic_write_bytes(out / PROGRAM_NAME, export_program(step, recorded.obs[:1]))
    runtimes = {
        "onnxruntime": OnnxPolicy(out / ONNX_NAME, 1, threads),
        "torch.export": StatefulStep(torch.export.load(out / PROGRAM_NAME).module(), step.initial_state(1)),
    }
    difference, state_difference, agree = {}, {}, {}
    for name, policy in runtimes.items():
        replayed = replay(policy, recorded)
        difference[name] = float(np.abs(replayed.actions - recorded.actions).max())
        state_difference[name] = max(
            float(np.abs(getattr(replayed, key) - getattr(recorded, key)).max()) for key in ("hidden", "latent")
        )
        agree[name] = actions_agree(player.controller, recorded.actions, replayed.actions)
    return {
        "run": str(player.path),
        "policy": player.source,
        "env": cfg.env.id,
        "seed": seed,
        "files": {
            name: {"path": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
            for name in (ONNX_NAME, PROGRAM_NAME)
        },
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "steps_checked": int(len(recorded.obs)),
        "episodes": int(recorded.is_first.sum()),
        "agreement": all(agree.values()),
        "env_actions_agree": agree,
        "max_abs_difference": difference,
        "max_abs_state_difference": state_difference,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
