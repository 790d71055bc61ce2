"""The supervisor: the main thread that owns the AIWM session and the workers.

One loop waits on a wake-up Event with a timeout equal to the time until its next job (heartbeat, token
refresh, fallback retry, watchdog ping, worker check). Signals and worker requests only set flags and the
Event, so SIGTERM is acted on in milliseconds, never after a sleep.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol

from aiwm_agentd import __version__
from aiwm_agentd.backoff import backoff_delay, jittered_interval
from aiwm_agentd.config import (
    AgentConfig,
    ConfigError,
    DaemonSettings,
    build_agent_config,
    describe_changes,
    load_daemon_settings,
    read_env_file,
    read_instruction_file,
)
from aiwm_agentd.controller.client import ControllerClient, ControllerError
from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.health import HealthServer
from aiwm_agentd.logs import parse_level
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.notify import Notifier
from aiwm_agentd.session import MetricsSampler, OnceLog, SessionState
from aiwm_agentd.workers import Runner, Worker, WorkerHealth

log = logging.getLogger("aiwm_agentd.supervisor")

EXIT_OK = 0
EXIT_FORCED = 130
REFRESH_MARGIN = 600.0  # reconnect this long before the token expires
WORKER_CHECK_INTERVAL = 2.0
DISCONNECT_BUDGET = 2.0
WORKER_RESTART_CAP = 300.0


class _Interrupted(BaseException):
    """Raised by the signal handler to abandon a blocking controller call when asked to stop."""


class RunnerWorker(Runner, Worker, Protocol):
    """The Claude runner is both: the bots submit to it, the supervisor supervises it."""


WorkerFactory = Callable[[AgentConfig, "Supervisor"], tuple[RunnerWorker, list[Worker]]]


def default_worker_factory(config: AgentConfig, control: Supervisor) -> tuple[RunnerWorker, list[Worker]]:
    """The Claude runner and the platform bots, imported only when a platform is configured, so an
    agent with no bots never pays for the SDK and bot libraries."""
    from aiwm_agentd.platforms import build_platform_workers
    from aiwm_agentd.runner import ClaudeRunner

    runner = ClaudeRunner(config)
    return runner, build_platform_workers(config, runner, control)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


class Supervisor:
    def __init__(
        self,
        settings: DaemonSettings,
        env: Mapping[str, str],
        env_file: str | None = None,
        notifier: Notifier | None = None,
        worker_factory: WorkerFactory = default_worker_factory,
    ) -> None:
        self.settings = settings
        self.env = dict(env)
        self.env_file = env_file
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.metrics.busy.set_function(lambda: float(self._busy()))
        self.session = SessionState()
        self._worker_factory = worker_factory
        self._once = OnceLog(log)
        self._sampler = MetricsSampler()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._in_controller_call = False
        self._reload_futures: list[concurrent.futures.Future[list[str]]] = []
        self._client = self._make_client(settings)
        self.config: AgentConfig = self._build_config(None)
        self.runner: RunnerWorker | None = None
        self.platforms: list[Worker] = []
        self._worker_restarts: dict[str, tuple[int, float]] = {}  # name -> (attempts, next allowed)
        self._health: HealthServer | None = None
        self._last_status = ""
        self._heartbeat_logged = False  # the first heartbeat after each connect is logged at INFO
        self._ready = False  # READY=1 sent: later configuration changes count as updates
        # Job deadlines on the monotonic clock; None = not scheduled.
        self._heartbeat_due: float | None = None
        self._refresh_due: float | None = None
        self._retry_due: float | None = None
        self._retry_attempt = 0
        self._watchdog_due: float | None = None
        self._worker_check_due: float | None = None  # scheduled once there are workers

    @property
    def workers(self) -> list[Worker]:
        """Everything supervised: the runner first, then the platform bots."""
        return ([self.runner] if self.runner else []) + list(self.platforms)

    # -- public: what workers and the health server may call (any thread) -------------------------

    def status_summary(self) -> dict[str, Any]:
        with self._lock:
            runner = self.runner
            return {
                "agent": self.config.agent_name,
                "agent_id": self.config.agent_id,
                "state": self.session.state,
                "controller": self.settings.base_url if self.settings.enabled else "(local mode)",
                "controller_version": self.session.controller.wire_version if self.session.controller else "",
                "last_heartbeat_age_s": self._heartbeat_age(),
                "model": self.config.claude.model,
                "config_source": self.config.source,
                "queue_depth": runner.queue_depth() if runner else 0,
                "busy": self._busy(),
            }

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._lock:
            self._reload_futures.append(future)
        self._wake.set()
        return future

    def health_snapshot(self) -> dict[str, Any]:
        workers = {w.name: self._worker_health(w) for w in list(self.workers)}
        with self._lock:
            s = self.session
            problems: list[str] = []
            degraded: list[str] = []
            if s.state == "deleted":
                problems.append("the controller says this agent no longer exists (404)")
            if s.state in ("fallback", "disconnected"):
                degraded.append(f"controller unreachable or refusing: {s.last_error or 'not connected'}")
            for name, h in workers.items():
                if h.state == "error" or not h.alive:
                    problems.append(f"{name}: {h.detail or h.state}")
                elif h.state == "degraded":
                    degraded.append(f"{name}: {h.detail or 'degraded'}")
            return {
                "healthy": not problems and s.state != "stopping",
                "state": s.state,
                "problems": problems,
                "degraded": degraded,
                "version": __version__,
                "uptime_s": int(time.time() - s.started_at),
                "agent": {"id": self.config.agent_id, "name": self.config.agent_name},
                "controller": {
                    "enabled": self.settings.enabled,
                    "url": self.settings.base_url,
                    "version": s.controller.wire_version if s.controller else "",
                    "connected_at": _iso(s.connected_at),
                    "last_error": s.last_error,
                },
                "heartbeat": {
                    "last": _iso(s.last_heartbeat_at),
                    "age_s": self._heartbeat_age(),
                    "interval_s": self.settings.heartbeat_interval,
                    "failures_in_row": s.heartbeat_failures_in_row,
                    "status_enum": s.heartbeat_enum,
                },
                "token": {"expires_at": _iso(s.expires_at), "refreshes": s.token_refreshes},
                "config": {
                    "source": self.config.source,
                    "updates": s.config_updates,
                    "model": self.config.claude.model,
                    "warnings": list(self.config.warnings),
                },
                "busy": self._busy(),
                "workers": {
                    name: {"state": h.state, "detail": h.detail, "alive": h.alive, **h.extra}
                    for name, h in workers.items()
                },
            }

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            self._start_health_server()
            if self.notifier.watchdog_interval:
                self._watchdog_due = time.monotonic()
            self._initial_connect()
            if self._stop_requested:
                return self._shutdown("signal during start-up")
            self._sync_workers(self.config)
            self.notifier.ready(self._status_line())
            self._ready = True
            log.info("ready: %s", self._status_line())
            while not self._stop_requested:
                self._run_due_jobs()
                if self._stop_requested:
                    break
                self._handle_requests()
                self._wait_for_next_job()
            return self._shutdown("signal")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _wait_for_next_job(self) -> None:
        dues = [d for d in (self._heartbeat_due, self._refresh_due, self._retry_due, self._watchdog_due,
                            self._worker_check_due) if d is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else 1.0
        if self._wake.wait(timeout):
            self._wake.clear()

    def _run_due_jobs(self) -> None:
        # Each job may block on the controller for up to the request timeout: ping between jobs so that
        # several slow calls in one round cannot add up past the watchdog.
        self._ping_watchdog_if_due()
        now = time.monotonic()
        if self._retry_due is not None and now >= self._retry_due:
            self._retry_due = None
            self._attempt_connect("retry")
            self._ping_watchdog_if_due()
        if self._refresh_due is not None and now >= self._refresh_due:
            self._refresh_due = None
            self._attempt_connect("token refresh")
            self._ping_watchdog_if_due()
        if self._heartbeat_due is not None and time.monotonic() >= self._heartbeat_due:
            self._send_heartbeat()
            self._ping_watchdog_if_due()
        if self._worker_check_due is not None and time.monotonic() >= self._worker_check_due:
            self._worker_check_due = time.monotonic() + WORKER_CHECK_INTERVAL
            self._check_workers()
        self._update_status()

    def _handle_requests(self) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self._reload("SIGHUP")
        with self._lock:
            futures, self._reload_futures = self._reload_futures, []
        if futures:
            try:
                changes = self._reload("/reload")
            except Exception as exc:  # a reload must never take the loop down
                log.exception("reload failed")
                for f in futures:
                    f.set_exception(exc)
                return
            for f in futures:
                f.set_result(changes)

    def _ping_watchdog_if_due(self) -> None:
        if self._watchdog_due is not None and time.monotonic() >= self._watchdog_due:
            self._ping_watchdog()

    def _ping_watchdog(self) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval or 0.0
        self._watchdog_due = time.monotonic() + interval if interval else None

    # -- connecting -----------------------------------------------------------------------------

    def _initial_connect(self) -> None:
        if not self.settings.enabled:
            log.info("AIWM_ENABLED=false: local mode, no controller calls")
            self._set_state("fallback", "local mode (AIWM_ENABLED=false)")
            return
        self.notifier.status(f"connecting to {self.settings.base_url}")
        attempt = 0
        while not self._stop_requested:
            result = self._try_connect()
            if result is None:
                return
            if isinstance(result, ControllerConfig):
                self._on_connected(result, "connect")
                return
            attempt += 1
            if result.permanent or attempt > self.settings.connect_retries:
                self._enter_fallback(result)
                return
            delay = _retry_delay(result, attempt)
            self._once.failure("connect", result.signature, logging.WARNING,
                               "connect failed (%s), retry %d/%d in %.1f s [correlation id %s]",
                               result.describe(), attempt, self.settings.connect_retries, delay,
                               result.correlation_id)
            self._sleep(delay)

    def _try_connect(self) -> ControllerConfig | ControllerError | None:
        """One connect attempt; a failure is counted and returned. None: abandoned for a stop request."""
        try:
            controller: ControllerConfig = self._call(self._client.connect)
        except _Interrupted:
            return None
        except ControllerError as exc:
            self.metrics.connection_failure.labels(exc.kind).inc()
            return exc
        return controller

    def _enter_fallback(self, exc: ControllerError) -> None:
        self._once.failure("fallback", exc.signature, logging.ERROR,
                           "cannot connect to the controller: %s [correlation id %s]; %s",
                           exc.describe(), exc.correlation_id, _advice(exc))
        had_session = self.session.controller is not None
        new_state = "disconnected" if had_session else "fallback"
        entering = self.session.state != new_state
        self._set_state(new_state, exc.describe())
        if entering and not had_session:
            log.warning("serving the local configuration (instruction file, env, defaults); retrying the "
                        "controller every %g s", self.settings.fallback_retry_interval)
        self._retry_attempt = 0
        self._retry_due = time.monotonic() + self.settings.fallback_retry_interval

    def _attempt_connect(self, why: str) -> None:
        """One connect outside start-up: token refresh, fallback retry, reconnect after 401."""
        if not self.settings.enabled or self.session.state == "deleted":
            return
        result = self._try_connect()
        if result is None:
            return
        if isinstance(result, ControllerConfig):
            self._on_connected(result, why)
            return
        exc = result
        token_valid = self.session.expires_at is None or self.session.expires_at > time.time() + 30
        if self.session.state == "connected" and token_valid and not exc.permanent:
            # The current token still works: keep heartbeating, retry soon.
            self._retry_attempt += 1
            delay = _retry_delay(exc, self._retry_attempt, cap=self.settings.fallback_retry_interval)
            self._once.failure("connect", exc.signature, logging.WARNING,
                               "%s failed (%s), keeping the current token, retry in %.0f s",
                               why, exc.describe(), delay)
            self._refresh_due = time.monotonic() + delay
            return
        if exc.permanent or self._retry_attempt >= self.settings.connect_retries:
            self._enter_fallback(exc)
            self._heartbeat_due = None
            return
        self._retry_attempt += 1
        delay = _retry_delay(exc, self._retry_attempt)
        self._once.failure("connect", exc.signature, logging.WARNING, "%s failed (%s), retry in %.1f s",
                           why, exc.describe(), delay)
        self._retry_due = time.monotonic() + delay

    def _on_connected(self, controller: ControllerConfig, why: str) -> None:
        previous = self.session.controller
        self.metrics.connection_success.inc()
        if previous is not None:
            self.session.token_refreshes += 1
            self.metrics.token_refresh.inc()
        self._retry_attempt = 0
        self._retry_due = None
        self._once.recovered("fallback", "connected to the controller again")
        self._once.recovered("connect", "")
        with self._lock:
            self.session.controller = controller
            self.session.connected_at = time.time()
            self.session.last_error = ""
        self.metrics.set_controller_version(controller.wire_version)
        self.metrics.token_expiry.set(controller.expires_at or 0)
        log.info("%s: connected to %s as %s (controller %s, token expires %s)", why, self.settings.base_url,
                 controller.agent_name or self.settings.agent_id, controller.wire_version,
                 _iso(controller.expires_at) or "unknown")
        config = self._build_config(controller)
        if previous is None or previous.fingerprint() != controller.fingerprint():
            for warning in config.warnings:
                log.warning("controller setting ignored: %s", warning)
        # Applied even when only the token changed: MCP Authorization headers must follow the token.
        self._apply_config(config, f"{why}: configuration applied")
        self._set_state("connected")
        self._heartbeat_logged = False
        self._heartbeat_due = time.monotonic()
        self._refresh_due = time.monotonic() + self._refresh_delay(controller)

    def _refresh_delay(self, controller: ControllerConfig) -> float:
        delay = self.settings.reconnect_interval
        if controller.expires_at:
            until_expiry = controller.expires_at - time.time()
            delay = min(delay, max(until_expiry - min(REFRESH_MARGIN, until_expiry / 10), 1.0))
        return delay

    # -- heartbeats -----------------------------------------------------------------------------

    def _send_heartbeat(self) -> None:
        s = self.session
        if s.state != "connected" or not s.token:
            self._heartbeat_due = None
            return
        busy = self._busy()
        status = "busy" if busy else s.heartbeat_enum
        metrics = self._sampler.sample(self._active_connections(), busy)
        try:
            result = self._call(lambda: self._client.heartbeat(s.token, status, metrics))
        except _Interrupted:
            return
        except ControllerError as exc:
            self._heartbeat_failed(exc, status)
            return
        with self._lock:
            s.last_heartbeat_at = time.time()
            s.heartbeat_failures_in_row = 0
        self.metrics.heartbeat_success.inc()
        self.metrics.last_heartbeat.set(s.last_heartbeat_at)
        self._once.recovered("heartbeat", "heartbeats are accepted again")
        level = logging.INFO if not self._heartbeat_logged else logging.DEBUG
        log.log(level, "heartbeat %s accepted; next every ~%g s [correlation id %s]", status,
                self.settings.heartbeat_interval, result.correlation_id)
        self._heartbeat_logged = True
        if result.notices:
            notices = {k: str(v)[:200] for k, v in result.notices.items()}
            log.info("controller notice with heartbeat: %s", notices)
        self._heartbeat_due = time.monotonic() + jittered_interval(self.settings.heartbeat_interval)

    def _heartbeat_failed(self, exc: ControllerError, status: str) -> None:
        s = self.session
        self.metrics.heartbeat_failure.labels(exc.kind).inc()
        with self._lock:
            s.heartbeat_failures_in_row += 1
        if exc.kind == "rejected" and status != "busy" and exc.mentions("status"):
            other = "online" if s.heartbeat_enum == "idle" else "idle"
            log.warning("controller rejected heartbeat status %r (%s); using %r from now on",
                        status, exc.describe(), other)
            s.heartbeat_enum = other
            self._heartbeat_due = time.monotonic()
            return
        if exc.kind == "unauthorized":
            log.warning("heartbeat: token refused (%s); reconnecting now", exc.describe())
            self._heartbeat_due = None
            # The token is dead whatever its expiry says: a failed reconnect must not keep "using" it.
            self._set_state("disconnected", "token refused (401)")
            self._attempt_connect("reconnect after 401")
            return
        if exc.kind == "not_found":
            log.critical("heartbeat: the controller says agent %s does not exist (404). Heartbeats stopped; "
                         "the bots keep serving the last configuration. Fix AIWM_AGENT_ID and reload.",
                         self.settings.agent_id)
            self._set_state("deleted", exc.describe())
            self._heartbeat_due = None
            self._refresh_due = None
            return
        self._once.failure("heartbeat", exc.signature, logging.WARNING,
                           "heartbeat failed: %s [correlation id %s]; will retry on schedule",
                           exc.describe(), exc.correlation_id)
        delay = jittered_interval(self.settings.heartbeat_interval)
        if exc.retry_after:
            delay = max(delay, exc.retry_after)
        self._heartbeat_due = time.monotonic() + delay

    # -- configuration and workers --------------------------------------------------------------

    def _build_config(self, controller: ControllerConfig | None) -> AgentConfig:
        local = None
        if controller is None:
            local = read_instruction_file(self.settings.instruction_file)
        return build_agent_config(self.env, controller, self.settings, local)

    def _apply_config(self, config: AgentConfig, reason: str) -> list[str]:
        old = self.config
        changes = describe_changes(old, config)
        with self._lock:
            self.config = config
        if changes and not self._ready:
            log.info("%s: %s", reason or "configuration", "; ".join(changes))
        elif changes:
            self.session.config_updates += 1
            self.metrics.config_update.inc()
            log.info("%s; changed: %s", reason, "; ".join(changes))
        if self.workers or config.discord.enabled or config.telegram.enabled:
            self._sync_workers(config)
        return changes

    def _sync_workers(self, config: AgentConfig) -> None:
        if not self.workers:
            if not (config.discord.enabled or config.telegram.enabled):
                return
            try:
                runner, platforms = self._worker_factory(config, self)
            except Exception:
                log.exception("could not create the workers; serving without them")
                return
            with self._lock:
                self.runner, self.platforms = runner, platforms
            for worker in self.workers:
                self._start_worker(worker)
            self._worker_check_due = time.monotonic() + WORKER_CHECK_INTERVAL
            return
        for worker in self.workers:
            try:
                worker.apply(config)
            except Exception:
                log.exception("worker %s failed to apply the new configuration", worker.name)

    def _start_worker(self, worker: Worker) -> None:
        try:
            worker.start()
        except Exception:
            log.exception("worker %s failed to start", worker.name)

    def _worker_health(self, worker: Worker) -> WorkerHealth:
        try:
            return worker.health()
        except Exception as exc:
            return WorkerHealth("error", f"health check failed: {exc}", alive=False)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            health = self._worker_health(worker)
            self.metrics.worker_up.labels(worker.name).set(1 if health.state in ("ok", "starting") else 0)
            if health.alive:
                continue
            attempts, allowed_at = self._worker_restarts.get(worker.name, (0, 0.0))
            if now < allowed_at:
                continue
            attempts += 1
            delay = backoff_delay(attempts, cap=WORKER_RESTART_CAP)
            self._worker_restarts[worker.name] = (attempts, now + delay)
            log.error("worker %s died (%s); restarting (attempt %d, next no sooner than %.0f s)",
                      worker.name, health.detail, attempts, delay)
            try:
                worker.stop(time.monotonic() + 1.0)
            except Exception:
                log.exception("worker %s failed to stop", worker.name)
            self._start_worker(worker)
        for name, (_attempts, allowed_at) in list(self._worker_restarts.items()):
            if now > allowed_at + WORKER_RESTART_CAP:
                del self._worker_restarts[name]

    def _active_connections(self) -> int:
        return sum(1 for w in self.platforms if self._worker_health(w).state == "ok")

    # -- reload ---------------------------------------------------------------------------------

    def _reload(self, why: str) -> list[str]:
        log.info("%s: reloading the env file and reconnecting", why)
        self.notifier.reloading()
        try:
            env = read_env_file(self.env_file)
            settings = load_daemon_settings(env)
            build_agent_config(env, None, settings)  # every env value checked, even those the controller overrides
        except ConfigError as exc:
            log.error("%s: reload refused, keeping the running configuration: %s", why, exc)
            self.notifier.ready(self._status_line())
            return [f"reload refused: {exc}"]
        if settings.health_addr != self.settings.health_addr:
            log.warning("AIWM_HEALTH_ADDR changed; it takes effect at the next restart")
            settings = replace(settings, health_addr=self.settings.health_addr)
        logging.getLogger().setLevel(parse_level(settings.log_level))
        client_changed = (settings.base_url, settings.agent_id, settings.agent_secret, settings.ca_bundle,
                          settings.request_timeout) != (self.settings.base_url, self.settings.agent_id,
                                                        self.settings.agent_secret, self.settings.ca_bundle,
                                                        self.settings.request_timeout)
        self.env, self.settings = env, settings
        if client_changed:
            self._client.close()
            self._client = self._make_client(settings)
            with self._lock:
                self.session.controller = None if settings.enabled else self.session.controller
            if settings.enabled:
                self._set_state("connecting", "controller settings changed")
        before = self.config
        if self.session.state == "deleted":
            self._set_state("disconnected", "reloaded after 404")
        if settings.enabled:
            self._retry_attempt = 0
            self._attempt_connect(why)
        else:
            self._heartbeat_due = self._refresh_due = self._retry_due = None
            self._set_state("fallback", "local mode (AIWM_ENABLED=false)")
        controller = self.session.controller if settings.enabled else None
        self._apply_config(self._build_config(controller), f"{why}: configuration reloaded")
        # What the reconnect and the env file changed together (each application was counted once).
        changes = describe_changes(before, self.config)
        if not changes:
            log.info("%s: no configuration change", why)
        self.notifier.ready(self._status_line())
        return changes

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown(self, why: str) -> int:
        started = time.monotonic()
        deadline = started + self.settings.shutdown_timeout
        self._set_state("stopping", why)
        self.notifier.stopping("stopping")
        log.info("stopping (%s)", why)

        # Platforms first (stop intake), then the runner (running turns get the rest of the deadline).
        self._stop_workers(self.platforms, deadline - DISCONNECT_BUDGET)
        self._stop_workers([self.runner] if self.runner else [], deadline - DISCONNECT_BUDGET)
        token = self.session.token
        if token and self.settings.enabled:
            budget = min(DISCONNECT_BUDGET, max(0.2, deadline - time.monotonic()))
            try:
                self._client.disconnect(token, "shutdown", timeout=budget)
                log.info("disconnected from the controller")
            except ControllerError as exc:
                log.warning("disconnect not acknowledged: %s", exc.describe())
        self._client.close()
        if self._health:
            self._health.stop()
        self.notifier.close()
        log.info("stopped in %.2f s", time.monotonic() - started)
        return EXIT_OK

    def _stop_workers(self, workers: list[Worker], deadline: float) -> None:
        threads = []
        for worker in workers:
            t = threading.Thread(target=self._stop_one, args=(worker, deadline), name=f"stop-{worker.name}",
                                 daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _stop_one(worker: Worker, deadline: float) -> None:
        try:
            worker.stop(deadline)
        except Exception:
            log.exception("worker %s failed to stop cleanly", worker.name)

    # -- helpers --------------------------------------------------------------------------------

    def _make_client(self, settings: DaemonSettings) -> ControllerClient:
        return ControllerClient(settings.base_url, settings.agent_id, settings.agent_secret,
                                timeout=settings.request_timeout, verify=settings.verify)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking controller call that SIGTERM/SIGINT may abandon."""
        self._in_controller_call = True
        try:
            if self._stop_requested:
                raise _Interrupted()
            return fn()
        except _Interrupted:
            self._client.close()  # its connection was cut mid-request; disconnect uses a fresh one
            self._client = self._make_client(self.settings)
            raise
        finally:
            self._in_controller_call = False

    def _sleep(self, seconds: float) -> None:
        """A backoff wait that still pings the watchdog and ends at once on a stop request."""
        end = time.monotonic() + seconds
        while not self._stop_requested:
            self._ping_watchdog_if_due()
            now = time.monotonic()
            remaining = end - now
            if remaining <= 0:
                return
            step = remaining if self._watchdog_due is None else min(remaining, self._watchdog_due - now)
            if self._wake.wait(max(0.0, step)):
                self._wake.clear()

    def _set_state(self, state: str, error: str = "") -> None:
        with self._lock:
            self.session.state = state
            if error:
                self.session.last_error = error
        self.metrics.connected.set(1 if state == "connected" else 0)
        self.metrics.fallback.set(1 if state == "fallback" else 0)
        self._update_status()

    def _status_line(self) -> str:
        s = self.session
        name = self.config.agent_name
        if s.state == "connected":
            at = s.last_heartbeat_at
            hb = f"; last heartbeat {datetime.fromtimestamp(at).strftime('%H:%M:%S')}" if at else ""
            return f"{name}: connected to AIWM ({s.controller.wire_version if s.controller else ''}){hb}"
        if s.state == "fallback":
            return f"{name}: local configuration ({s.last_error})"
        return f"{name}: {s.state} ({s.last_error})" if s.last_error else f"{name}: {s.state}"

    def _update_status(self) -> None:
        line = self._status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def _busy(self) -> bool:
        runner = self.runner
        return bool(runner and runner.busy)

    def _heartbeat_age(self) -> float | None:
        at = self.session.last_heartbeat_at
        return round(time.time() - at, 1) if at else None

    def _start_health_server(self) -> None:
        addr = self.settings.health_addr
        if addr is None:
            return
        try:
            self._health = HealthServer(addr, self.health_snapshot, self.metrics.render)
        except OSError as exc:
            log.error("AIWM_HEALTH_ADDR %s:%s: cannot listen (%s); running without /health and /metrics",
                      addr[0], addr[1], exc.strerror or exc)
            return
        self._health.start()
        log.info("health endpoint on http://%s:%d/health", *self._health.address)

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
            self._wake.set()
            return
        if self._stop_requested:
            os.write(2, b"aiwm-agentd: second signal, exiting now\n")
            os._exit(EXIT_FORCED)
        self._stop_requested = True
        self._wake.set()
        if self._in_controller_call:
            raise _Interrupted()


def _retry_delay(exc: ControllerError, attempt: int, cap: float = 300.0) -> float:
    """Exponential backoff with jitter, never sooner than the controller's Retry-After."""
    return max(backoff_delay(attempt, cap=cap), exc.retry_after or 0.0)


def _advice(exc: ControllerError) -> str:
    return {
        "invalid_credentials": "check AIWM_AGENT_SECRET (regenerate credentials on the controller if lost)",
        "no_secret": "the controller has no secret for this agent: regenerate its credentials",
        "suspended": "an administrator suspended this agent on the controller",
        "not_found": "check AIWM_AGENT_ID: the controller does not know this agent",
        "rejected": "the controller refused the request; check AIWM_AGENT_SECRET",
        "network": "check AIWM_BASE_URL, DNS, firewall and TLS (AIWM_CA_BUNDLE)",
        "timeout": "the controller is slow or unreachable; check AIWM_BASE_URL and the network",
        "server_error": "the controller is failing; it will be retried",
        "rate_limited": "the controller is rate limiting; it will be retried",
        "invalid_response": "AIWM_BASE_URL may point at something that is not an AIWM controller",
    }.get(exc.kind, "")
