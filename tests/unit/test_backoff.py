"""Exponential backoff with jitter, and Retry-After parsing."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from aiwm_agentd.backoff import backoff_delay, jittered_interval, parse_retry_after


class Fixed(random.Random):
    """An rng whose uniform() always returns one end of the range."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


@pytest.mark.parametrize(("attempt", "expected"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (20, 300.0)])
def test_backoff_without_jitter(attempt, expected):
    assert backoff_delay(attempt, jitter=0.0) == expected


def test_backoff_base_and_cap():
    assert backoff_delay(3, base=0.5, jitter=0.0) == 2.0
    assert backoff_delay(10, base=1.0, cap=30.0, jitter=0.0) == 30.0


def test_backoff_jitter_bounds():
    assert backoff_delay(3, jitter=0.2, rng=Fixed("low")) == pytest.approx(3.2)
    assert backoff_delay(3, jitter=0.2, rng=Fixed("high")) == pytest.approx(4.8)
    rng = random.Random(1)
    delays = [backoff_delay(4, jitter=0.2, rng=rng) for _ in range(200)]
    assert all(6.4 <= d <= 9.6 for d in delays)
    assert len(set(delays)) > 100  # actually jittered


def test_backoff_never_negative():
    assert backoff_delay(1, jitter=2.0, rng=Fixed("low")) == 0.0


def test_jittered_interval_never_late():
    assert jittered_interval(60.0, rng=Fixed("low")) == 60.0
    assert jittered_interval(60.0, rng=Fixed("high")) == pytest.approx(54.0)
    rng = random.Random(2)
    values = [jittered_interval(60.0, rng=rng) for _ in range(200)]
    assert all(54.0 <= v <= 60.0 for v in values)
    assert len(set(values)) > 100


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0),
    (" 5 ", 5.0),
    ("0", 0.0),
    ("1.5", 1.5),
    ("-3", 0.0),
    ("99999", 3600.0),
    ("inf", 3600.0),
    ("nan", None),
    ("", None),
    (None, None),
    ("soon", None),
    ("Mon, 99 Foo 2026 25:61:00 GMT", None),
])
def test_retry_after_seconds_and_invalid(header, expected):
    assert parse_retry_after(header) == expected


def test_retry_after_http_date():
    now = 1_780_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after(formatdate(now + 90000, usegmt=True), now=now) == 3600.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now, cap=60.0) == 60.0


def test_retry_after_http_date_against_clock():
    value = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert value is not None and 28.0 <= value <= 30.0
