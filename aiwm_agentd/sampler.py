"""psutil figures for the heartbeat payload."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil


class MetricsSampler:
    """cpu_percent needs a first call to have a baseline: the constructor makes it."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)
        self._started = time.monotonic()

    def sample(self, active_connections: int, busy: bool) -> dict[str, Any]:
        return {
            "cpu": round(psutil.cpu_percent(interval=None), 1),
            "memory": round(psutil.virtual_memory().percent, 1),
            "uptime": int(time.monotonic() - self._started),
            "activeConnections": active_connections,
            "daemonRssMiB": round(self._process.memory_info().rss / 1048576, 1),
            "busy": busy,
        }
