"""When an agent token stops being used and when it is refreshed, from its lifetime (pure arithmetic).

A token with a known lifetime is refreshed (a new connect) `REFRESH_MARGIN` s before its end, or a tenth of
its lifetime before for short tokens, and no longer used for calls `EXPIRY_SLACK` s before its end (a tenth
for short tokens), so a call never carries a token that expires on the way. Neither happens sooner than
`REFRESH_FLOOR` s after the token arrived, whatever the token says. A token of unknown lifetime is used until
the controller refuses it and refreshed every `reconnect_interval`.
"""

from __future__ import annotations

REFRESH_MARGIN = 600.0  # refresh this long before the token's lifetime ends (at most a tenth of it)
REFRESH_FLOOR = 1.0  # never refresh sooner than this after a connect, whatever the token says
EXPIRY_SLACK = 5.0  # a token this close to its end is not used for another call


def usable_until(now: float, lifetime: float) -> float:
    """The monotonic time after which a token received at `now`, valid for `lifetime` s, is not used."""
    return now + max(REFRESH_FLOOR, lifetime - min(EXPIRY_SLACK, lifetime / 10))


def refresh_delay(reconnect_interval: float, lifetime: float | None) -> float:
    """Seconds from receiving a token to the connect that refreshes it (`lifetime` None or 0: unknown)."""
    delay = reconnect_interval
    if lifetime:
        delay = min(delay, max(REFRESH_FLOOR, lifetime - min(REFRESH_MARGIN, lifetime / 10)))
    return delay
