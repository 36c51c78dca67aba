"""`wm runs`: one line per run directory, read from its summary.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("name", "command", "status", "step", "wall_seconds", "result")


def headline(summary: dict) -> str:
    """The one figure that says how a run did."""
    probe = summary.get("probe") or {}
    for key in ("knn_top1", "state_r2"):
        if key in probe:
            return f"{key} {probe[key]:.3f} (random {probe[key + '_random']:.3f})"
    model = summary.get("model") or {}
    if "pred_error_k5" in model:  # a world model: its 5-step dream error beside "nothing changes"
        figure = f"pred_error_k5 {model['pred_error_k5']:.3f} (no-change {model['pred_error_k5_baseline']:.3f})"
        return figure + (" COLLAPSED" if model.get("collapsed") else "")
    return ""


def read_runs(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            rows.append({"name": path.parent.name, "status": f"unreadable summary: {error}"})
            continue
        rows.append({**summary, "name": path.parent.name, "result": headline(summary)})
    return rows


def format_table(rows: list[dict]) -> str:
    cells = [[str(row.get(c, "")) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm runs", description="A table of runs.")
    parser.add_argument("--runs", default="runs", help="the directory holding runs (default: runs)")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        print(f"no runs directory {root}")
        return 1
    print(format_table(read_runs(root)))
    return 0
