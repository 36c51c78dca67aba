"""Progress bars: tqdm, redrawn in place on a terminal, a line every few seconds in a log file.

`Progress` keeps the few calls the toolkit makes (`update(n, **fields)`, `close`) and the look its tests and
users read ("pretrain 100%|...| 300/300 [00:41<00:00, 7.30 step/s] loss=0.21").
"""

from __future__ import annotations

import re
import sys

from tqdm import tqdm

_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


class _Lines:
    """A log file's view of tqdm's output: each redraw on a line of its own, not behind a carriage return."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = _CURSOR_MOVES.sub("", text.replace("\r", "")).rstrip("\n")  # nested bars move the cursor up
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """`bar = Progress(total, "pretrain"); bar.update(1, loss=0.3); bar.close()`."""

    def __init__(
        self,
        total: int,
        description: str,
        initial: int = 0,
        unit: str = "it",
        enabled: bool = True,
        stream=None,
        log_interval: float = 10.0,
    ):
        stream = stream or sys.stderr
        interactive = stream.isatty()
        self.bar = tqdm(
            total=total,
            desc=description,
            initial=initial,
            unit=f" {unit}",
            disable=not enabled,
            file=stream if interactive else _Lines(stream),
            bar_format=BAR_FORMAT,
            mininterval=0.2 if interactive else log_interval,
            ascii=None if interactive else " █",  # a log file gets whole blocks, not partial-width characters
            dynamic_ncols=interactive,
        )
        self.fields: dict[str, str] = {}

    def update(self, n: int = 1, **fields) -> None:
        if fields:
            self.fields.update({k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in fields.items()})
            self.bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in self.fields.items()), refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
