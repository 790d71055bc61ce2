"""Exponential backoff with jitter, and Retry-After parsing."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

_RNG = random.Random()


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 300.0, jitter: float = 0.2,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): base * 2**(attempt-1), +/- `jitter` fraction, capped."""
    uniform = (rng or _RNG).uniform
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(0.0, float(delay * (1 + uniform(-jitter, jitter))))


def jittered_interval(interval: float, spread: float = 0.1, rng: random.Random | None = None) -> float:
    """An interval shortened by up to `spread` of itself, so a fleet does not beat in step and a
    heartbeat is never later than its nominal interval."""
    return interval * (1 - (rng or _RNG).uniform(0, spread))


def parse_retry_after(value: str | None, now: float | None = None, cap: float = 3600.0) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(cap, max(0.0, seconds))
