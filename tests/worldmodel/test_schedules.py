import pytest

from worldmodel import schedules


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (5, 0.55), (10, 1.0), (55, 0.5), (100, 0.0), (150, 0.0)],
)
def test_warmup_cosine_by_hand(step, expected):
    assert schedules.warmup_cosine(step, 100, 10, 0.1, 1.0, 0.0) == pytest.approx(expected)


def test_cosine_weight_decay_and_linear_ema_by_hand():
    assert schedules.cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert schedules.cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert schedules.linear(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert schedules.linear(200, 100, 0.996, 1.0) == pytest.approx(1.0)


def test_no_warmup_starts_at_peak():
    assert schedules.warmup_cosine(0, 10, 0, 0.0, 2.0, 0.0) == pytest.approx(2.0)
