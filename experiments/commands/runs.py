"""`wm runs`: one line per run directory, read from its summary.json, so an experiment table is one command.

The table itself: experiments/runs.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.runs import format_table, json_line, read_runs, sort_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm runs", description="A table of runs.")
    parser.add_argument("--runs", default="runs", help="the directory holding runs (default: runs)")
    parser.add_argument(
        "--sort",
        metavar="KEY",
        help="order by a column or summary field, e.g. best_return or wall_seconds (rows without it last)",
    )
    parser.add_argument("--reverse", action="store_true", help="with --sort: largest first")
    parser.add_argument("--json", action="store_true", help="one JSON object per run (every summary field) per line")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        print(f"no runs directory {root}")
        return 1
    rows = read_runs(root)
    if args.sort:
        rows = sort_rows(rows, args.sort, descending=args.reverse)
    print("\n".join(json_line(row) for row in rows) if args.json else format_table(rows))
    return 0
