"""The workers the supervisor runs: the Claude runner and the platform bots.

Created on the first configuration that enables a platform (an agent without bots never imports the SDK or the
bot libraries), started, given each new snapshot, checked every few seconds, restarted with backoff when a
thread died (and shown unhealthy until the restarted worker is up again), and stopped in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Protocol, cast

from aiwm_agentd.backoff import backoff_delay
from aiwm_agentd.config import AgentConfig
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.workers import DaemonControl, IntakeWorker, Runner, Worker, WorkerHealth

log = logging.getLogger("aiwm_agentd.workers")

# Worker checks: dead-worker detection (restart), the worker_up gauge, and the supervisor's STATUS= refresh.
# Every CHECK_INTERVAL while a worker is starting (so STATUS= stops saying "still connecting" promptly), every
# SETTLED_CHECK_INTERVAL once all are up: /health reads worker health live, so that only bounds how late a dead
# thread is restarted (2 s used to be the idle daemon's most frequent supervisor wake-up).
CHECK_INTERVAL = 0.5
SETTLED_CHECK_INTERVAL = 10.0
RESTART_CAP = 300.0
# Kept back from the stop deadline for the platforms: send the last answers and notices, then close.
PLATFORM_STOP_BUDGET = 2.5


class RunnerWorker(Runner, Worker, Protocol):
    """The Claude runner is both: the bots submit to it, the supervisor supervises it."""


WorkerFactory = Callable[[AgentConfig, DaemonControl], tuple[RunnerWorker, list[Worker]]]


def default_worker_factory(config: AgentConfig, control: DaemonControl) -> tuple[RunnerWorker, list[Worker]]:
    """The Claude runner, the platform bots and the AIWM portal channel (when the control can tell it where
    the socket is), imported only when one of them is configured."""
    from aiwm_agentd.platforms import build_platform_workers
    from aiwm_agentd.runner import ClaudeRunner

    runner = ClaudeRunner(config)
    workers = build_platform_workers(config, runner, control)
    if hasattr(control, "socket_target"):
        from aiwm_agentd.realtime.channel import AiwmChannel, RealtimeControl

        workers.append(AiwmChannel(config, runner, cast(RealtimeControl, control)))
    return runner, workers


def needs_workers(config: AgentConfig) -> bool:
    return (config.discord.enabled or config.telegram.enabled or config.claude.realtime
            or config.claude.take_work)


class WorkerSet:
    def __init__(self, factory: WorkerFactory, control: DaemonControl, metrics: Metrics) -> None:
        self._factory = factory
        self._control = control
        self._metrics = metrics
        self.runner: RunnerWorker | None = None
        self.platforms: list[Worker] = []
        self._restarts: dict[str, tuple[int, float]] = {}  # name -> (attempts, next allowed, monotonic)
        self._recovering: set[str] = set()  # restarted, not up yet
        self.next_check: float | None = None

    @property
    def all(self) -> list[Worker]:
        """The runner first, then the platform bots."""
        return ([self.runner] if self.runner else []) + list(self.platforms)

    def apply(self, config: AgentConfig, now: float) -> None:
        """Give every worker the new snapshot; create and start them when a platform is first enabled."""
        if self.runner is None:
            if not needs_workers(config):
                return
            try:
                self.runner, self.platforms = self._factory(config, self._control)
            except Exception:
                log.exception("could not create the workers; serving without them")
                return
            for worker in self.all:
                _guarded(worker.name, "start", worker.start)
            self.next_check = now + CHECK_INTERVAL
            return
        for worker in self.all:
            _guarded(worker.name, "apply the new configuration", partial(worker.apply, config))

    def health(self) -> list[tuple[str, WorkerHealth]]:
        result = []
        for worker in self.all:
            health = _health(worker)
            if worker.name in self._recovering and health.alive and health.state == "starting":
                health = replace(health, state="error", detail="restarting after its thread died")
            result.append((worker.name, health))
        return result

    def check(self, now: float) -> None:
        """Restart dead workers with backoff; export worker_up; check again sooner while one is starting."""
        starting, next_restart = False, float("inf")
        for worker in self.all:
            health = _health(worker)
            self._metrics.worker_up.labels(worker.name).set(1 if health.healthy else 0)
            starting = starting or (health.alive and health.state == "starting")
            if health.alive:
                if health.state != "starting" and worker.name in self._recovering:
                    self._recovering.discard(worker.name)
                    log.info("worker %s is back (%s)", worker.name, health.state)
                continue
            attempts, allowed_at = self._restarts.get(worker.name, (0, 0.0))
            if now < allowed_at:
                next_restart = min(next_restart, allowed_at)
                continue
            attempts += 1
            delay = backoff_delay(attempts, cap=RESTART_CAP)
            self._restarts[worker.name] = (attempts, now + delay)
            self._recovering.add(worker.name)
            log.error("worker %s died (%s); restarting (attempt %d, next no sooner than %.0f s)",
                      worker.name, health.detail, attempts, delay)
            _guarded(worker.name, "stop", partial(worker.stop, time.monotonic() + 1.0))
            _guarded(worker.name, "start", worker.start)
        for name, (_attempts, allowed_at) in list(self._restarts.items()):
            if now > allowed_at + RESTART_CAP:
                del self._restarts[name]
        interval = CHECK_INTERVAL if starting else SETTLED_CHECK_INTERVAL
        self.next_check = min(now + interval, next_restart) if self.all else None

    @property
    def busy(self) -> bool:
        return bool(self.runner and self.runner.busy)

    def queue_depth(self) -> int:
        return self.runner.queue_depth() if self.runner else 0

    def active_connections(self) -> int:
        return sum(1 for w in self.platforms if _health(w).state == "ok")

    def stop(self, deadline: float) -> None:
        """Nobody's message is dropped: intake closes first, then the runner gets all but the platforms'
        budget for its running turns (a turn it cuts is answered `shutting_down`, which the platforms turn into
        a "restarting" notice, its message kept in the inbox), then the platforms deliver and close."""
        for worker in self.platforms:
            if isinstance(worker, IntakeWorker):
                _guarded(worker.name, "stop its intake", worker.stop_intake)
        runner_deadline = max(time.monotonic(), deadline - PLATFORM_STOP_BUDGET)
        _stop_all([self.runner] if self.runner else [], runner_deadline)
        _stop_all(self.platforms, deadline)


def _health(worker: Worker) -> WorkerHealth:
    try:
        return worker.health()
    except Exception as exc:
        return WorkerHealth("error", f"health check failed: {exc}", alive=False)


def _guarded(name: str, what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:
        log.exception("worker %s failed to %s", name, what)


def _stop_all(workers: list[Worker], deadline: float) -> None:
    threads = []
    for worker in workers:
        t = threading.Thread(target=_guarded, args=(worker.name, "stop cleanly", partial(worker.stop, deadline)),
                             name=f"stop-{worker.name}", daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
