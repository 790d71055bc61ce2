"""The AIWM session state the supervisor owns, and the heartbeat payload it reports."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from aiwm_agentd.controller.wire import ControllerConfig

# connecting: before the first connect attempt resolved. connected: holding a token.
# fallback: never connected this run; serving the local configuration.
# disconnected: lost the session after having one; serving the last controller configuration.
# deleted: the controller said the agent no longer exists; no more controller calls until reload.
# stopping: shutting down.
STATES = ("connecting", "connected", "fallback", "disconnected", "deleted", "stopping")


@dataclass
class SessionState:
    state: str = "connecting"
    controller: ControllerConfig | None = None
    connected_at: float | None = None  # unix time
    last_heartbeat_at: float | None = None  # unix time of the last successful heartbeat
    heartbeat_failures_in_row: int = 0
    last_error: str = ""
    token_refreshes: int = 0
    config_updates: int = 0
    heartbeat_enum: str = "idle"  # "idle" (idle|busy) or "online" (online|busy)
    started_at: float = field(default_factory=time.time)

    @property
    def token(self) -> str:
        return self.controller.token if self.controller else ""

    @property
    def expires_at(self) -> float | None:
        return self.controller.expires_at if self.controller else None


class OnceLog:
    """Logs a failure the first time it is seen, and again only when it changes or after recovery."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, str] = {}

    def failure(self, topic: str, signature: str, level: int, message: str, *args: Any) -> bool:
        if self._last.get(topic) == signature:
            self._logger.debug(message, *args)
            return False
        self._last[topic] = signature
        self._logger.log(level, message, *args)
        return True

    def recovered(self, topic: str, message: str, *args: Any) -> None:
        if self._last.pop(topic, None) is not None and message:
            self._logger.info(message, *args)


class MetricsSampler:
    """psutil figures for the heartbeat. cpu_percent needs a first call to have a baseline."""

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
