"""experiments/progress.py in a log file: one plain line per redraw, nested bars included."""

import io

from experiments.progress import Progress


def test_a_log_file_gets_plain_lines_without_cursor_moves():
    log = io.StringIO()  # not a terminal
    outer = Progress(2, "cycle", unit="iter", stream=log)
    inner = Progress(3, "train", unit="step", stream=log)
    for _ in range(3):
        inner.update(1, loss=0.25)
    inner.close()
    outer.update(1)
    outer.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert any(line.startswith("train 100%|") and line.endswith("loss=0.25") for line in lines), lines
    assert lines[-1].startswith("cycle  50%|") and " 1/2 " in lines[-1]


def test_a_disabled_bar_writes_nothing():
    log = io.StringIO()
    bar = Progress(5, "pretrain", enabled=False, stream=log)
    bar.update(5)
    bar.close()
    assert log.getvalue() == ""
