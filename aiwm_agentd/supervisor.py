"""The supervisor: the main thread's loop.

Each turn of the loop pings the watchdog when due, takes the outcome of a finished controller call to the
session (controller/session.py), acts on the session's events (apply a configuration to the workers),
handles reload and stop requests, starts the next controller call that is due (off this thread:
controller/calls.py), checks the workers (workerset.py), and publishes the status snapshot (status.py). Then
it waits on one Event until the earliest deadline. Signal handlers only set flags and the Event, and no step
blocks on the network, so the watchdog is pinged and a SIGTERM is acted on in milliseconds whatever the
controller does.
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
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from aiwm_agentd import __version__, status
from aiwm_agentd.config import (
    AgentConfig,
    ConfigError,
    DaemonSettings,
    build_agent_config,
    describe_changes,
    format_host_port,
    load_daemon_settings,
    read_env_file,
    read_instruction_file,
    url_without_password,
)
from aiwm_agentd.controller.calls import CallRunner
from aiwm_agentd.controller.client import ControllerClient, ControllerError, proxies_from_env
from aiwm_agentd.controller.session import (
    Call,
    Connected,
    ConnectFailed,
    ControllerSession,
    HeartbeatAnswered,
    SessionSettings,
    WorkOffered,
)
from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.controller.work import parse_offer
from aiwm_agentd.health import HealthServer
from aiwm_agentd.logs import parse_level
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.notify import Notifier
from aiwm_agentd.realtime.bridge import McpRewriter, WorkDispatch, heartbeat_call, mcp_report
from aiwm_agentd.realtime.portal import SocketTarget, socket_target
from aiwm_agentd.sampler import MetricsSampler
from aiwm_agentd.workerset import WorkerFactory, WorkerSet, default_worker_factory

if TYPE_CHECKING:
    from aiwm_agentd.realtime.channel import AiwmChannel

log = logging.getLogger("aiwm_agentd.supervisor")

EXIT_OK = 0
EXIT_FORCED = 130
STARTUP_BUDGET = 10.0  # READY=1 no later than this after start, whatever the controller does
DISCONNECT_BUDGET = 2.0
IDLE_WAIT_CAP = 60.0


def session_settings(settings: DaemonSettings) -> SessionSettings:
    return SessionSettings(settings.enabled, settings.heartbeat_interval, settings.reconnect_interval,
                           settings.fallback_retry_interval, settings.connect_retries,
                           url_without_password(settings.base_url))


def _identity(s: DaemonSettings) -> tuple[object, ...]:
    return (s.base_url, s.agent_id, s.agent_secret, s.ca_bundle, s.request_timeout)


class Supervisor:
    def __init__(self, settings: DaemonSettings, env: Mapping[str, str], env_file: str | None = None,
                 notifier: Notifier | None = None, worker_factory: WorkerFactory = default_worker_factory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.env = dict(env)
        self.env_file = env_file
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self._clock = clock
        self._wake = threading.Event()
        self.session = ControllerSession(session_settings(settings), self.metrics)
        self.calls: CallRunner[Call] = CallRunner(self._wake.set, clock)
        self.workers = WorkerSet(worker_factory, self, self.metrics)
        self.metrics.busy.set_function(lambda: float(self.workers.busy))
        self._client = self._make_client(settings, self.env)
        self._sampler = MetricsSampler()
        self._stop_requested = False
        self._sighup = False
        self._reload_lock = threading.Lock()
        self._reload_futures: list[concurrent.futures.Future[list[str]]] = []
        self._waiting_reloads: list[tuple[concurrent.futures.Future[list[str]], AgentConfig]] = []
        # Inputs from the portal channel's thread, taken to the session by the loop (the session is not
        # thread-safe): tokens the socket refused, operator sleep/wake commands.
        self._socket_inputs: list[tuple[str, str]] = []
        self.work = WorkDispatch(self.session, self.metrics, settings.state_dir, self._wake.set)
        self._mcp = McpRewriter(lambda: self.session.token or (self.session.controller.token
                                                              if self.session.controller else ""), settings.verify,
                                controller_url=settings.base_url)
        self._health: HealthServer | None = None
        self._ready = False
        self._reloading = False  # RELOADING=1 sent; READY=1 follows when the reconnect ends
        self._started = clock()
        self._started_wall = time.time()
        self._watchdog_due: float | None = None
        self._config_updates = 0
        self.config = self._build_config(None)  # a config error here is fatal (exit 78), as it should be
        self._core = self._make_core()
        self._last_status = ""

    # -- what workers and the health server may call (any thread) ------------------------------------

    def snapshot(self) -> status.StatusSnapshot:
        return replace(self._core, workers=tuple(self.workers.health()), busy=self.workers.busy,
                       queue_depth=self.workers.queue_depth())

    def health_snapshot(self) -> dict[str, Any]:
        return status.health_document(self.snapshot(), time.time())

    def status_summary(self) -> dict[str, Any]:
        return status.chat_summary(self.snapshot(), time.time())

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._reload_lock:
            self._reload_futures.append(future)
        self._wake.set()
        return future

    # -- what the AIWM portal channel may call (realtime/channel.py: RealtimeControl) ----------------------

    def socket_target(self) -> SocketTarget | None:
        """Where the portal socket should be open now (None: realtime off, or no usable token)."""
        controller, claude = self.session.controller, self.config.claude
        token = self.session.token
        if not (claude.realtime and controller is not None and token):
            return None
        return socket_target(self.settings.base_url, token, self.settings.agent_id or controller.agent_id,
                             controller.wire_version, claude.ws_url, claude.ws_namespace, claude.ws_path)

    def socket_token_refused(self, token: str) -> None:
        with self._reload_lock:
            self._socket_inputs.append(("refused", token))
        self._wake.set()

    def agent_command(self, command: str, reason: str) -> str:
        with self._reload_lock:
            self._socket_inputs.append((command, reason))
        self._wake.set()
        return "sleep" if command == "sleep" else "idle"

    def _handle_socket_inputs(self, now: float) -> None:
        with self._reload_lock:
            inputs, self._socket_inputs = self._socket_inputs, []
        for kind, value in inputs:
            if kind == "refused":
                self.session.socket_refused(value, now)
            elif kind in ("sleep", "wake"):
                self.session.set_sleep(kind == "sleep", value, now)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self._start_health_server()
            if self.notifier.watchdog_interval:
                self._watchdog_due = self._clock()
            if not self.settings.enabled:
                log.info("AIWM_ENABLED=false: local mode, no controller calls")
            else:
                self.notifier.status(f"connecting to {self.settings.base_url}")
            self.session.start(self._clock())
            while not self._stop_requested:
                self._turn(self._clock())
                if not self._stop_requested:
                    self._wait()
            return self._shutdown("signal")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _turn(self, now: float) -> None:
        self._ping_watchdog(now)
        finished = self.calls.collect(now)
        if finished is not None:
            call, outcome = finished
            self._on_outcome(call, outcome, now)
        self._handle_reloads(now)
        self._handle_socket_inputs(now)
        self.work.drain(now, self._stop_requested)
        if not self._ready:
            self._maybe_ready(now)
        if not self.calls.busy:
            due = self.session.next_call(now, self.workers.busy)
            if due is not None:
                self._start_call(due)
        if self.workers.next_check is not None and now >= self.workers.next_check:
            self.workers.check(now)
        self._publish()

    def _wait(self) -> None:
        now = self._clock()
        dues = [d for d in (self.session.next_due(), self.calls.due, self._watchdog_due, self.workers.next_check,
                            None if self._ready else self._started + STARTUP_BUDGET) if d is not None]
        timeout = min(IDLE_WAIT_CAP, max(0.0, min(dues) - now)) if dues else IDLE_WAIT_CAP
        if self._wake.wait(timeout):
            self._wake.clear()

    def _ping_watchdog(self, now: float) -> None:
        if self._watchdog_due is not None and now >= self._watchdog_due:
            self.notifier.watchdog()
            self._watchdog_due = now + (self.notifier.watchdog_interval or 0.0)

    def _maybe_ready(self, now: float) -> None:
        if self.session.state == "connecting" and now < self._started + STARTUP_BUDGET:
            return
        self.session.startup_expired()
        self._ready = True
        controller = self.session.controller
        # Without a controller configuration the local one built at start (and validated there) stands.
        self._apply(self._build_config(controller) if controller else self.config, "configuration")
        self.work.resume(self.workers.runner, self.config.claude.take_work, now)
        self._publish()
        self.notifier.ready(self._last_status)
        log.info("ready: %s", self._last_status)

    # -- controller calls ----------------------------------------------------------------------------

    def _start_call(self, call: Call) -> None:
        client = self._client
        if call.kind == "connect":
            self.calls.start(call, client, lambda deadline: client.connect(deadline), self.settings.request_timeout)
            return
        if call.kind == "config":
            self.calls.start(call, client, lambda deadline: client.fetch_config(call.token, deadline),
                             self.settings.request_timeout)
            return
        payload = self._sampler.sample(self.workers.active_connections(), call.status == "busy")
        channel = cast("AiwmChannel | None", next((w for w in self.workers.platforms if w.name == "aiwm"), None))
        heartbeat = heartbeat_call(client, call, payload, mcp_report(self.session, self.workers.runner), channel,
                                   self.session, self.workers.busy)
        self.calls.start(call, client, heartbeat, self.settings.request_timeout)

    def _on_outcome(self, call: Call, outcome: Any, now: float) -> None:
        for event in self.session.complete(call, outcome, now):
            if isinstance(event, Connected):
                config = self._build_config(event.controller)
                if event.previous is None or event.previous.fingerprint() != event.controller.fingerprint():
                    for warning in config.warnings:
                        log.warning("controller setting ignored: %s", warning)
                # Applied even when only the token changed: MCP Authorization headers follow the token.
                if self._ready:
                    self._apply(config, f"{event.why}: configuration applied")
                if event.why not in ("heartbeat answer", "config poll"):  # a reload waits for its own reconnect
                    self._finish_reloads()
            elif isinstance(event, ConnectFailed):
                self._finish_reloads()
            elif isinstance(event, WorkOffered):
                self.work.take(event.offer, self.workers.runner, self.config.claude.take_work, now)
            elif (isinstance(event, HeartbeatAnswered) and event.result.notices
                  and parse_offer(event.result.body) is None):  # offers are the session's and the log's above
                notices = {k: str(v)[:200] for k, v in event.result.notices.items()}
                log.info("controller notice with heartbeat: %s", notices)

    # -- configuration ---------------------------------------------------------------------------------

    def _build_config(self, controller: ControllerConfig | None, local: str | None = None) -> AgentConfig:
        if controller is None and local is None:
            local = read_instruction_file(self.settings.instruction_file)
        config = build_agent_config(self.env, controller, self.settings, local)
        return self._mcp.apply(config, controller)

    def _apply(self, config: AgentConfig, reason: str) -> list[str]:
        changes = describe_changes(self.config, config)
        self.config = config
        if changes and self._ready and reason != "configuration":
            self._config_updates += 1
            self.metrics.config_update.inc()
            log.info("%s; changed: %s", reason, "; ".join(changes))
        elif changes:
            log.info("%s: %s", reason, "; ".join(changes))
        self.workers.apply(config, self._clock())
        self.session.set_config_poll(config.claude.config_poll_interval, self._clock())
        return changes

    def _handle_reloads(self, now: float) -> None:
        with self._reload_lock:
            futures, self._reload_futures = self._reload_futures, []
        if not (futures or self._sighup):
            return
        why = "SIGHUP" if self._sighup else "/reload"
        self._sighup = False
        before = self.config
        refused = self._reload(why, now)
        if refused is not None:
            for f in futures:
                f.set_result([refused])
            return
        self._waiting_reloads += [(f, before) for f in futures]

    def _reload(self, why: str, now: float) -> str | None:
        """Re-read and validate the env file, then reconnect. Returns why it was refused, or None."""
        log.info("%s: reloading the env file and reconnecting", why)
        self.notifier.reloading()
        try:
            env = read_env_file(self.env_file)
            settings = load_daemon_settings(env)
            local = read_instruction_file(settings.instruction_file)
            build_agent_config(env, None, settings, local)  # every env value checked, even overridden ones
        except ConfigError as exc:
            log.error("%s: reload refused, keeping the running configuration: %s", why, exc)
            self.notifier.ready(self._last_status)
            return f"reload refused: {exc}"
        if settings.health_addr != self.settings.health_addr:
            log.warning("AIWM_HEALTH_ADDR changed; it takes effect at the next restart")
            settings = replace(settings, health_addr=self.settings.health_addr)
        logging.getLogger().setLevel(parse_level(settings.log_level))
        identity_changed = _identity(settings) != _identity(self.settings)
        self.env, self.settings = env, settings
        if identity_changed:
            self.calls.abandon()
            self._client.close()
            self._client = self._make_client(settings, env)
        elif self.calls.busy:
            self.calls.abandon()
        self.session.reload(session_settings(settings), now, why, identity_changed)
        self._apply(self._build_config(self.session.controller, local), f"{why}: configuration reloaded")
        self._reloading = True
        if not settings.enabled:
            self._finish_reloads()
        return None

    def _finish_reloads(self) -> None:
        """The reconnect that followed a reload ended: answer /reload with what changed, READY again."""
        waiting, self._waiting_reloads = self._waiting_reloads, []
        for future, before in waiting:
            if not future.done():
                future.set_result(describe_changes(before, self.config))
        if self._reloading:
            self._reloading = False
            self._publish()
            self.notifier.ready(self._last_status)

    # -- status ----------------------------------------------------------------------------------------

    def _make_core(self) -> status.StatusSnapshot:
        s, c, runner = self.session, self.config, self.workers.runner
        return status.StatusSnapshot(
            version=__version__, started_at=self._started_wall, state=s.state,
            last_error=s.last_error, agent_id=c.agent_id, agent_name=c.agent_name,
            controller_enabled=self.settings.enabled, controller_url=url_without_password(self.settings.base_url),
            controller_version=s.controller.wire_version if s.controller else "", connected_at=s.connected_at,
            last_heartbeat_at=s.last_heartbeat_at, heartbeat_interval=self.settings.heartbeat_interval,
            heartbeat_failures_in_row=s.heartbeat_failures_in_row, heartbeat_enum=s.heartbeat_enum,
            token_expires_at=s.controller.expires_at if s.controller else None, token_refreshes=s.token_refreshes,
            config_source=c.source, config_updates=self._config_updates, model=c.claude.model,
            warnings=c.warnings, sleep_reason=s.sleep_reason, sleep_since=s.sleep_since,
            work_key=s.work.key if s.work else "", work_title=s.work.title if s.work else "",
            work_since=s.work_since, work_done=s.work_done, mcp_servers=dict(getattr(runner, "mcp_status", None) or {}),
            mcp_tools=len(getattr(runner, "mcp_callable", ()) or ()), work_problem=self._mcp.permission_problem)

    def _publish(self) -> None:
        self._core = self._make_core()
        line = status.status_line(self.snapshot())  # with the workers: STATUS= names what is still connecting
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    # -- shutdown --------------------------------------------------------------------------------------

    def _shutdown(self, why: str) -> int:
        started = self._clock()
        deadline = started + self.settings.shutdown_timeout
        token = self.session.token if self.session.token_valid(started) and self.settings.enabled else ""
        self.session.stop()
        self.calls.abandon()
        self._publish()
        self.notifier.stopping("stopping")
        log.info("stopping (%s)", why)
        # The disconnect's budget is kept back only when there is a session to close (not in local mode).
        self.workers.stop(deadline - (DISCONNECT_BUDGET if token else 0.0))
        if token:
            self._disconnect(token, min(deadline, self._clock() + DISCONNECT_BUDGET))
        self._client.close()
        self._mcp.close()
        if self._health:
            self._health.stop()
        for future, _before in self._waiting_reloads:
            future.cancel()
        self.notifier.close()
        log.info("stopped in %.2f s", self._clock() - started)
        return EXIT_OK

    def _disconnect(self, token: str, until: float) -> None:
        client = self._client
        calls: CallRunner[str] = CallRunner(lambda: None, self._clock)
        calls.start("disconnect", client, lambda deadline: client.disconnect(token, "shutdown",
                                                                             timeout=deadline - self._clock()),
                    max(0.2, until - self._clock()))
        finished = calls.wait(until + 0.1)
        outcome = finished[1] if finished else None
        if isinstance(outcome, ControllerError):
            log.warning("disconnect not acknowledged: %s", outcome.describe())
        else:
            log.info("disconnected from the controller")

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _make_client(settings: DaemonSettings, env: Mapping[str, str]) -> ControllerClient:
        proxies, no_proxy = proxies_from_env(env)
        return ControllerClient(settings.base_url, settings.agent_id, settings.agent_secret,
                                timeout=settings.request_timeout, verify=settings.verify, proxies=proxies,
                                no_proxy=no_proxy)

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
        log.info("health endpoint on http://%s/health", format_host_port(*self._health.address))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._sighup = True
        elif self._stop_requested:
            os.write(2, b"aiwm-agentd: second signal, exiting now\n")
            os._exit(EXIT_FORCED)
        else:
            self._stop_requested = True
        self._wake.set()
