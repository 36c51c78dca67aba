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
The export and its checks live in experiments/export.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.policy import require_export_packages
from envs.atomic import atomic_write_text
from experiments.arguments import add_common_arguments, open_player, positive
from experiments.export import DEFAULT_STEPS, REPORT_NAME, export_and_check
from experiments.inputs import InputError
from experiments.rundir import RunError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm export", description="Export a run's policy to ONNX and torch.export.")
    parser.add_argument("--run", required=True, type=Path, help="a `wm evolve` or `wm cycle` run directory")
    parser.add_argument("--out", type=Path, help="where the files go (default: <run>/export)")
    parser.add_argument(
        "--steps",
        type=positive,
        default=DEFAULT_STEPS,
        help=f"real env steps to check the files on (default {DEFAULT_STEPS})",
    )
    parser.add_argument("--seed", type=int, help="seed of the checked episodes (default: the run's run.seed)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    try:
        require_export_packages()
    except ModuleNotFoundError as error:
        raise InputError(str(error)) from None
    player = open_player(args)
    if player.parameters is None:
        raise RunError(
            f"--run {args.run}: no controller yet (no checkpoints/best.pt) to export; a `wm evolve` run has "
            "one when it finishes, a `wm cycle` run after its first evaluation"
        )
    out = args.out or args.run / "export"
    seed = player.cfg.run.seed if args.seed is None else args.seed
    print(f"exporting {player.source} ({player.cfg.env.id})", file=sys.stderr)
    report = export_and_check(player, out, args.steps, seed, args.threads, args.progress)
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    actions, states = report["max_abs_difference"], report["max_abs_state_difference"]
    difference = ", ".join(f"{name} {actions[name]:.2g} (state {states[name]:.2g})" for name in actions)
    if not report["agreement"]:
        wrong = [name for name, agree in report["env_actions_agree"].items() if not agree]
        print(
            f"wm export: {' and '.join(wrong)} chose other env actions than PyTorch on {report['steps_checked']} "
            f"real steps (largest action difference: {difference}); see {out / REPORT_NAME}",
            file=sys.stderr,
        )
        return 1
    print(
        f"onnxruntime and torch.export chose PyTorch's env action on all {report['steps_checked']} real steps "
        f"({report['episodes']} episodes; largest action difference: {difference}); written to {out}",
        file=sys.stderr,
    )
    return 0
