"""The table of runs that `wm runs` prints: one line per run directory, read from its summary.json (`read_runs`,
`format_table`), so an experiment table is one command.

A summary.json is read, not trusted: one that cannot be read, or whose fields have the wrong types, is a row that
says what is wrong, and the rest of the table prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = ("name", "command", "env", "status", "iterations", "env_steps", "best_return", "wall", "result")
KINDS = {
    "number": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    "object": lambda value: isinstance(value, dict),
    "list": lambda value: isinstance(value, list),
}


class MalformedSummary(ValueError):
    """A summary.json that is not an object, or a field of it of the wrong type (the message names the field)."""


def field(mapping: dict, key: str, kind: str, where: str = "", required: bool = False) -> Any:
    """`mapping[key]` checked to be a `kind` (see KINDS); None when absent (or null) and not `required`.

    `where` is the dotted path of `mapping` inside the summary, for the message.
    """
    value = mapping.get(key)
    if value is None and not required:
        return None
    if value is None or not KINDS[kind](value):
        got = "missing" if value is None else f"{value!r:.40}"
        raise MalformedSummary(f"{where}{key} is {got}, not {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    return value


def headline(summary: dict) -> str:
    """The one figure that says how a run did."""
    probe = field(summary, "probe", "object") or {}
    for key in ("knn_top1", "state_r2"):
        if key in probe:
            figure, random = (field(probe, k, "number", "probe.", required=True) for k in (key, key + "_random"))
            return f"{key} {figure:.3f} (random {random:.3f})"
    real = field(summary, "eval_return_mean", "number")
    if real is not None:  # a controller: its real return beside what the dream promised
        spread = field(summary, "eval_return_std", "number")
        text = f"real {real:.1f} ± {float('nan') if spread is None else spread:.1f}"
        success = field(summary, "eval_success_rate", "number")
        if success is not None:
            text += f" ({100 * success:.0f}% successful)"
        dream = field(summary, "dream_return", "number")
        if dream is not None:
            text += f", dream {dream:.1f}"
        return text
    model = field(summary, "model", "object") or {}
    error = field(model, "pred_error_k5", "number", "model.")
    if error is not None:  # a world model: its 5-step dream error beside "nothing changes"
        baseline = field(model, "pred_error_k5_baseline", "number", "model.", required=True)
        collapsed = " COLLAPSED" if model.get("collapsed") else ""
        return f"pred_error_k5 {error:.3f} (no-change {baseline:.3f}){collapsed}"
    return ""


def env_steps(summary: dict) -> int | float | str:
    """Real env steps the run used: the cycle's count, a model-free search's, or a world model's collection."""
    for key in ("env_steps", "real_env_steps"):
        steps = field(summary, key, "number")
        if steps is not None:
            return steps
    collected = field(field(summary, "data", "object") or {}, "collected", "object", "data.") or {}
    for key in ("env_steps", "steps"):
        steps = field(collected, key, "number", "data.collected.")
        if steps is not None:
            return steps
    return ""


def best_return(summary: dict) -> str:
    """The best real return: a finished run's own figure, else (an interrupted cycle) its history's best."""
    best = field(summary, "best_eval_return", "number")
    if best is None:
        best = field(summary, "eval_return_mean", "number")
    history = history_of(summary)
    if best is None and history:
        best = max(
            field(record, "eval_return_mean", "number", f"history[{i}].", required=True)
            for i, record in enumerate(history)
        )
    return "" if best is None else f"{best:.1f}"


def history_of(summary: dict) -> list[dict]:
    """The evaluations of a cycle so far (each an object), or []."""
    history = field(summary, "history", "list") or []
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise MalformedSummary(f"history[{i}] is {record!r:.40}, not an object")
    return history


def iterations(summary: dict) -> int | float | str:
    """Iterations of a cycle (those evaluated so far, when interrupted) or generations of a search."""
    count = field(summary, "iterations", "number")
    if count is not None:
        return count
    history = history_of(summary)
    if history:
        return len(history)
    count = field(summary, "generations", "number")
    return "" if count is None else count


def wall(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def read_runs(root: Path) -> list[dict]:
    """One row per run under `root`; a summary that cannot be read or is malformed is a row saying so."""
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bytes that are not UTF-8
            rows.append({"name": path.parent.name, "status": f"unreadable summary: {error}"})
            continue
        try:
            rows.append(summary_row(summary, path.parent.name))
        except MalformedSummary as error:
            rows.append({"name": path.parent.name, "status": f"malformed summary: {error}"})
    return rows


def summary_row(summary: Any, name: str) -> dict:
    """The table's row of one run's summary; MalformedSummary names the first field of the wrong type."""
    if not isinstance(summary, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(summary), "a number")
        raise MalformedSummary(f"the file holds {kind}, not an object")
    return {
        **summary,
        "name": name,
        "env": (field(summary, "env", "object") or {}).get("env_id", ""),
        "iterations": iterations(summary),
        "env_steps": env_steps(summary),
        "best_return": best_return(summary),
        "wall": wall(field(summary, "wall_seconds", "number")),
        "result": headline(summary),
    }


def format_table(rows: list[dict]) -> str:
    cells = [[str(row.get(c, "")) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def sort_rows(rows: list[dict], key: str, descending: bool = False) -> list[dict]:
    """Rows ordered by a column or summary field, numbers as numbers (before texts). Rows without the field (or with
    an empty one) come last either way."""

    def value(row: dict) -> float | str | None:
        raw = row.get(key)
        if isinstance(raw, bool) or raw in (None, "") or isinstance(raw, (dict, list)):
            return None
        try:
            return float(raw)
        except (TypeError, ValueError):
            return str(raw)

    present = [row for row in rows if value(row) is not None]
    numbers = [row for row in present if isinstance(value(row), float)]
    texts = [row for row in present if isinstance(value(row), str)]
    ordered = sorted(numbers, key=value, reverse=descending) + sorted(texts, key=value, reverse=descending)
    return ordered + [row for row in rows if value(row) is None]


def json_line(row: dict) -> str:
    """A row for machines: the table's columns, then every field of the summary, as one JSON object."""
    ordered = {column: row.get(column, "") for column in COLUMNS}
    return json.dumps({**ordered, **{k: v for k, v in row.items() if k not in ordered}}, default=str)
