"""`wm runs`: one line per run directory, read from its summary.json, so an experiment table is one command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("name", "command", "env", "status", "iterations", "env_steps", "best_return", "wall", "result")


def headline(summary: dict) -> str:
    """The one figure that says how a run did."""
    probe = summary.get("probe") or {}
    for key in ("knn_top1", "state_r2"):
        if key in probe:
            return f"{key} {probe[key]:.3f} (random {probe[key + '_random']:.3f})"
    if "eval_return_mean" in summary:  # a controller: its real return beside what the dream promised
        text = f"real {summary['eval_return_mean']:.1f} ± {summary.get('eval_return_std', float('nan')):.1f}"
        if "eval_success_rate" in summary:
            text += f" ({100 * summary['eval_success_rate']:.0f}% successful)"
        if "dream_return" in summary:
            text += f", dream {summary['dream_return']:.1f}"
        return text
    model = summary.get("model") or {}
    if "pred_error_k5" in model:  # a world model: its 5-step dream error beside "nothing changes"
        figure = f"pred_error_k5 {model['pred_error_k5']:.3f} (no-change {model['pred_error_k5_baseline']:.3f})"
        return figure + (" COLLAPSED" if model.get("collapsed") else "")
    return ""


def env_steps(summary: dict) -> int | str:
    """Real env steps the run used: the cycle's count, a model-free search's, or a world model's collection."""
    if "env_steps" in summary:
        return summary["env_steps"]
    if "real_env_steps" in summary:
        return summary["real_env_steps"]
    collected = (summary.get("data") or {}).get("collected") or {}
    return collected.get("env_steps", collected.get("steps", ""))


def best_return(summary: dict) -> str:
    """The best real return: a finished run's own figure, else (an interrupted cycle) its history's best."""
    best = summary.get("best_eval_return", summary.get("eval_return_mean"))
    history = summary.get("history") or []
    if best is None and history:
        best = max(record["eval_return_mean"] for record in history)
    return "" if best is None else f"{best:.1f}"


def iterations(summary: dict) -> int | str:
    """Iterations of a cycle (those evaluated so far, when interrupted) or generations of a search."""
    if "iterations" in summary:
        return summary["iterations"]
    if summary.get("history"):
        return len(summary["history"])
    return summary.get("generations", "")


def wall(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def read_runs(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            rows.append({"name": path.parent.name, "status": f"unreadable summary: {error}"})
            continue
        rows.append({
            **summary,
            "name": path.parent.name,
            "env": (summary.get("env") or {}).get("env_id", ""),
            "iterations": iterations(summary),
            "env_steps": env_steps(summary),
            "best_return": best_return(summary),
            "wall": wall(summary.get("wall_seconds")),
            "result": headline(summary),
        })  # fmt: skip
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
