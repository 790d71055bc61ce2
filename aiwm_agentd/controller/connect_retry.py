"""What to do after a failed connect (not a suspension): the session's retry and fallback policy.

Three answers, decided from the failure, how many connects failed in a row and whether the session still
holds a working token:
  keep_token  the current token still works: keep serving and heartbeating, retry the connect later
              (after the fallback interval for a permanent failure, else with backoff capped by it)
  fallback    a permanent failure, or more than `connect_retries` in a row: serve the local or last
              configuration and retry every fallback interval
  retry       try again soon, with exponential backoff
A controller's Retry-After always lengthens the delay. Suspension is handled by the session itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from aiwm_agentd.backoff import backoff_delay
from aiwm_agentd.controller.client import ControllerError


@dataclass(frozen=True)
class ConnectRetry:
    action: Literal["keep_token", "fallback", "retry"]
    delay: float  # seconds until the next connect


def connect_retry(exc: ControllerError, attempt: int, *, keeping_token: bool, fallback_interval: float,
                  connect_retries: int, rng: random.Random | None) -> ConnectRetry:
    """The policy for the `attempt`-th failed connect in a row (counted from 1)."""
    retry_after = exc.retry_after or 0.0
    if keeping_token:
        delay = fallback_interval if exc.permanent else min(fallback_interval, backoff_delay(attempt, rng=rng))
        return ConnectRetry("keep_token", max(delay, retry_after))
    if exc.permanent or attempt > connect_retries:
        return ConnectRetry("fallback", max(fallback_interval, retry_after))
    return ConnectRetry("retry", max(backoff_delay(attempt, rng=rng), retry_after))
