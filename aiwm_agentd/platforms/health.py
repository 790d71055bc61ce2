"""A platform worker's health and restart pacing, as pure functions of what the worker knows.

The session publishes its state (ok / degraded / error ...); `live_health` adds what is read live at every
`/health` request: session and refusal counters and the durable inbox's state (a degraded inbox degrades an
otherwise healthy worker). `restart_delay` is the exponential backoff between failed sessions.
"""

from __future__ import annotations

import random

from aiwm_agentd.inbox import Inbox
from aiwm_agentd.platforms.refusals import RefusalGate
from aiwm_agentd.workers import WorkerHealth


def live_health(published: WorkerHealth, sessions: int, refusals: RefusalGate, inbox: Inbox | None) -> WorkerHealth:
    """`published` with the live counters and the inbox's state added."""
    state, detail = published.state, published.detail
    extra = {"sessions": sessions, "refusals_answered": refusals.answered,
             "refusals_silenced": refusals.silenced, **published.extra}
    if inbox is not None:
        extra["inbox_pending"] = len(inbox.pending())
        if inbox.degraded:
            extra["inbox"] = inbox.degraded
            if state == "ok":
                state, detail = "degraded", f"{detail}; {inbox.degraded}"
    return WorkerHealth(state, detail, alive=published.alive, extra=extra)


def restart_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before restarting a session after `attempt` failures in a row: base * 2**attempt up to `cap`,
    with ±20 % jitter so workers that failed together do not retry together."""
    delay: float = min(cap, base * 2**attempt) * random.uniform(0.8, 1.2)
    return delay
