"""Schedules as pure functions of the step, so a resumed run recomputes them exactly."""

from __future__ import annotations

import math


def linear(step: int, total: int, start: float, end: float) -> float:
    """From `start` at step 0 to `end` at step `total` (held there after)."""
    fraction = min(step / max(total, 1), 1.0)
    return start + (end - start) * fraction


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from `start` at step 0 to `end` at step `total` (held there after)."""
    fraction = min(step / max(total, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def warmup_cosine(step: int, total: int, warmup: int, start: float, peak: float, end: float) -> float:
    """Linear warmup from `start` to `peak` over `warmup` steps, then cosine decay to `end` at `total`."""
    if step < warmup:
        return linear(step, warmup, start, peak)
    return cosine(step - warmup, total - warmup, peak, end)
