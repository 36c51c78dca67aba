"""`wm export --run DIR`: a run's policy as one ONNX graph and a torch.export program, checked on real steps.

    wm export --run runs/cartpole                  # <run>/export/policy.onnx, policy.pt2 and export.json
    wm export --run runs/cartpole --steps 500 --out exported/

The policy is the controller `wm eval` plays (a `wm evolve` run's chosen one, a `wm cycle` run's best) with the world
model it was evolved in: encoder, filter and controller in one graph (agents/policy.py says what goes in and comes
out). The PyTorch agent plays `--steps` real env steps (the run's env, seeded by --seed, across as many episodes as
they take), the policy is exported, and the recorded observations go through onnxruntime and through the program,
each carrying its own state: every env action they choose must equal the agent's. export.json says how close they
came (the largest difference of their action vectors and of their states h and z from PyTorch's); a disagreement is
reported in one line with exit code 1. Needs the export extra (`pip install 'worldmodel-toolkit[export]'`).
"""

from __future__ import annotations

import argparse
import json
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
    require_export_packages,
)
from envs import make_env
from envs.atomic import atomic_write_bytes, atomic_write_text, sha256_file
from experiments.evaluate import add_common_arguments, open_player, positive
from experiments.inputs import InputError
from experiments.load import Player
from experiments.progress import Progress
from experiments.rundir import RunError

DEFAULT_STEPS = 200
ONNX_NAME, PROGRAM_NAME, REPORT_NAME = "policy.onnx", "policy.pt2", "export.json"


def export_and_check(player: Player, out: Path, steps: int, seed: int, threads: int | None, show_progress: bool
                     ) -> dict:  # fmt: skip
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
        state_difference[name] = max(float(np.abs(getattr(replayed, key) - getattr(recorded, key)).max())
                                     for key in ("hidden", "latent"))  # fmt: skip
        agree[name] = actions_agree(player.controller, recorded.actions, replayed.actions)
    return {
        "run": str(player.path), "policy": player.source, "env": cfg.env.id, "seed": seed,
        "files": {name: {"path": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                  for name in (ONNX_NAME, PROGRAM_NAME)},
        "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
        "steps_checked": int(len(recorded.obs)), "episodes": int(recorded.is_first.sum()),
        "agreement": all(agree.values()), "env_actions_agree": agree, "max_abs_difference": difference,
        "max_abs_state_difference": state_difference,
        "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm export", description="Export a run's policy to ONNX and torch.export.")
    parser.add_argument("--run", required=True, type=Path, help="a `wm evolve` or `wm cycle` run directory")
    parser.add_argument("--out", type=Path, help="where the files go (default: <run>/export)")
    parser.add_argument("--steps", type=positive, default=DEFAULT_STEPS,
                        help=f"real env steps to check the files on (default {DEFAULT_STEPS})")  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed of the checked episodes (default: the run's run.seed)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    try:
        require_export_packages()
    except ModuleNotFoundError as error:
        raise InputError(str(error)) from None
    player = open_player(args)
    if player.parameters is None:
        raise RunError(f"--run {args.run}: no controller yet (no checkpoints/best.pt) to export; a `wm evolve` run has "
                       "one when it finishes, a `wm cycle` run after its first evaluation")  # fmt: skip
    out = args.out or args.run / "export"
    seed = player.cfg.run.seed if args.seed is None else args.seed
    print(f"exporting {player.source} ({player.cfg.env.id})", file=sys.stderr)
    report = export_and_check(player, out, args.steps, seed, args.threads, args.progress)
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    actions, states = report["max_abs_difference"], report["max_abs_state_difference"]
    difference = ", ".join(f"{name} {actions[name]:.2g} (state {states[name]:.2g})" for name in actions)
    if not report["agreement"]:
        wrong = [name for name, agree in report["env_actions_agree"].items() if not agree]
        print(f"wm export: {' and '.join(wrong)} chose other env actions than PyTorch on {report['steps_checked']} "
              f"real steps (largest action difference: {difference}); see {out / REPORT_NAME}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"onnxruntime and torch.export chose PyTorch's env action on all {report['steps_checked']} real steps "
          f"({report['episodes']} episodes; largest action difference: {difference}); written to {out}",
          file=sys.stderr)  # fmt: skip
    return 0
