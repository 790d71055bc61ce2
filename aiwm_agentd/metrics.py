"""Prometheus metrics: the guide's six counters plus gauges, in the daemon's own registry.

Every counter has a sample from the first scrape: a labelled counter shows nothing until a child exists, so
the failure counters get one child per failure kind at 0 up front. Otherwise `rate(...)`/`increase(...)`
alerts see no series until the first failure, and two of the guide's six counters look missing.
"""

from __future__ import annotations

import typing

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client.process_collector import ProcessCollector

from aiwm_agentd import __version__
from aiwm_agentd.controller.client import FailureKind

FAILURE_REASONS: tuple[str, ...] = typing.get_args(FailureKind)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # prometheus-client appends `_total` to counters: these export exactly the guide's names.
        self.connection_success = Counter("aiwm_connection_success", "Successful AIWM connects", registry=r)
        self.connection_failure = Counter("aiwm_connection_failure", "Failed AIWM connect attempts",
                                          ["reason"], registry=r)
        self.heartbeat_success = Counter("aiwm_heartbeat_success", "Successful heartbeats", registry=r)
        self.heartbeat_failure = Counter("aiwm_heartbeat_failure", "Failed heartbeats", ["reason"], registry=r)
        for reason in FAILURE_REASONS:
            self.connection_failure.labels(reason)
            self.heartbeat_failure.labels(reason)
        self.token_refresh = Counter("aiwm_token_refresh", "Token refreshes (reconnects)", registry=r)
        self.config_update = Counter("aiwm_config_update", "Configuration changes applied", registry=r)
        self.connected = Gauge("aiwm_connected", "1 while a controller session is held", registry=r)
        self.fallback = Gauge("aiwm_fallback", "1 while serving the local fallback configuration", registry=r)
        self.last_heartbeat = Gauge("aiwm_last_heartbeat_timestamp_seconds",
                                    "Unix time of the last successful heartbeat", registry=r)
        self.token_expiry = Gauge("aiwm_token_expiry_timestamp_seconds", "Unix time the token expires",
                                  registry=r)
        self.busy = Gauge("aiwm_agent_busy", "1 while any Claude turn runs", registry=r)
        self.worker_up = Gauge("aiwm_worker_up", "1 when the worker is healthy", ["worker"], registry=r)
        # Assigned work (controller/work.py): every outcome has a 0 sample from the first scrape.
        self.work_started = Counter("aiwm_work_started", "Work items and reminders started as a Claude turn",
                                    ["resumed"], registry=r)
        self.work_finished = Counter("aiwm_work_finished", "Work turns that ended", ["outcome"], registry=r)
        self.work_declined = Counter("aiwm_work_declined", "Work offers not taken (AIWM_TAKE_WORK off, no runner)",
                                     registry=r)
        self.work_in_progress = Gauge("aiwm_work_in_progress", "1 while an assigned task runs", registry=r)
        for resumed in ("false", "true"):
            self.work_started.labels(resumed)
        for outcome in ("ok", "error"):
            self.work_finished.labels(outcome)
        self.info = Info("aiwm_agentd", "Build and controller information", registry=r)
        self.info.info({"version": __version__, "controller_version": ""})
        ProcessCollector(registry=r)

    def set_controller_version(self, version: str) -> None:
        self.info.info({"version": __version__, "controller_version": version})

    def render(self) -> bytes:
        return generate_latest(self.registry)
