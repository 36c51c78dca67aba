"""A small progress bar: redrawn in place on a terminal, a line every few seconds in a log file."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


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
        self.total, self.description, self.unit = total, description, unit
        self.count = self.start_count = initial
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.log_interval = log_interval
        self.start = self.last_draw = time.monotonic()
        self.fields: dict[str, str] = {}
        self.drawn_count = -1

    def update(self, n: int = 1, **fields) -> None:
        self.count += n
        self.fields.update({k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in fields.items()})
        now = time.monotonic()
        interval = 0.2 if self.interactive else self.log_interval
        if self.enabled and (now - self.last_draw >= interval or self.count >= self.total):
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        self.drawn_count = self.count
        elapsed = now - self.start
        done = self.count - self.start_count
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.count) / rate if rate > 0 else 0.0
        fraction = min(self.count / max(self.total, 1), 1.0)
        bar = "█" * int(fraction * 24) + " " * (24 - int(fraction * 24))
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        line = (
            f"{self.description} {fraction:4.0%}|{bar}| {self.count}/{self.total} "
            f"[{_clock(elapsed)}<{_clock(left)}, {rate:.2f} {self.unit}/s] {extra}"
        )
        if self.interactive:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self.drawn_count != self.count:
                self._draw(time.monotonic())
            if self.interactive:
                self.stream.write("\n")
            self.stream.flush()
