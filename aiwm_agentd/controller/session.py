"""The AIWM controller session as a state machine without I/O.

The loop asks `next_call(now, busy)` for the call that is due, runs it off the main thread, and hands the
outcome back with `complete(call, outcome, now)`; the session answers with events for the loop (a controller
configuration to apply, a heartbeat answer, a failed connect). `now` is always passed in (time.monotonic()) and
wall-clock timestamps come from an injected function, so every transition is unit-tested without sleeping.

States:
  connecting    start-up, before the first connect resolved
  connected     holding a token the controller accepts; heartbeats run
  fallback      never connected this run (or local mode): the local configuration is served
  disconnected  lost the session after having one: the last controller configuration is served
  suspended     an administrator suspended the agent: no heartbeats, a connect every fallback interval
  deleted       the controller says the agent does not exist (heartbeat 404): no calls until a reload
  stopping      shutting down
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from aiwm_agentd.backoff import backoff_delay, jittered_interval
from aiwm_agentd.controller.client import ControllerError, HeartbeatResult
from aiwm_agentd.controller.config_updates import answer_update, merge_polled
from aiwm_agentd.controller.connect_retry import connect_retry
from aiwm_agentd.controller.events import (
    ADVICE,
    Call,
    Connected,
    ConnectFailed,
    Event,
    HeartbeatAnswered,
    Outcome,
    SessionSettings,
    State,
    WorkOffered,
)
from aiwm_agentd.controller.token_schedule import refresh_delay, usable_until
from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.controller.work import WorkOffer, ignored_task, parse_offer
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.oncelog import OnceLog

log = logging.getLogger("aiwm_agentd.controller.session")

__all__ = ["ADVICE", "Call", "ConnectFailed", "Connected", "ControllerSession", "Event", "HeartbeatAnswered",
           "Outcome", "SessionSettings", "State", "WorkOffered"]

DONE_KEYS = 200  # finished task keys remembered, so an offer repeated after the turn is not started again


class ControllerSession:
    """The controller session's state and schedule: which call is due, and what each outcome changes.

    Pure policy lives beside it: token_schedule.py (token expiry and refresh times), connect_retry.py (retry,
    keep the token or fall back after a failed connect), config_updates.py (configuration changes from a
    config poll or a heartbeat answer)."""

    def __init__(self, settings: SessionSettings, metrics: Metrics | None = None,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._wall = wall
        self._rng = rng
        self._once = OnceLog(log)
        self.state: State = "connecting"
        self.controller: ControllerConfig | None = None
        self.last_error = ""
        self.connected_at: float | None = None  # wall time
        self.last_heartbeat_at: float | None = None  # wall time of the last accepted heartbeat
        self.heartbeat_failures_in_row = 0
        self.token_refreshes = 0
        self.heartbeat_enum = "idle"  # "idle" (idle|busy) or "online" (online|busy): what the controller takes
        self._generation = 0
        self._token_usable = False
        self._token_until: float | None = None  # monotonic; None = valid until the controller refuses it
        self._connect_due: float | None = None
        self._connect_why = "connect"
        self._heartbeat_due: float | None = None
        self._attempt = 0  # failed connects in a row since the last success or fallback
        self._refused_in_row = 0  # 401s since the last accepted heartbeat
        self._in_flight: Call | None = None
        self._heartbeat_logged = False
        # An operator's `sleep` (portal agent:command): take no work; the controller is told at once.
        self.sleep_reason: str | None = None
        self.sleep_since: float | None = None  # wall time
        # Assigned work: the task in progress (reported `busy` until it ends) and the keys already done.
        self.work: WorkOffer | None = None
        self.work_since: float | None = None  # wall time
        self.work_done = 0
        self._done_keys: OrderedDict[str, None] = OrderedDict()
        self._report_soon = False  # a status change waits for the heartbeat in flight, then goes at once
        # GET /agents/:id/config every `config_poll_interval` s while connected (0 = never): instruction and
        # tool changes made in the portal arrive without an operator, on controllers that push nothing.
        self.config_poll_interval = 0.0
        self._config_due: float | None = None

    # -- what the loop asks ----------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.controller.token if self.controller and self._token_usable else ""

    def token_valid(self, now: float) -> bool:
        return bool(self.token) and (self._token_until is None or now < self._token_until)

    @property
    def busy_calling(self) -> bool:
        return self._in_flight is not None

    def next_due(self) -> float | None:
        """When `next_call` will have something (None: nothing scheduled, or a call is in flight)."""
        if self._in_flight is not None or self.state == "stopping":
            return None
        expiry = self._token_until if self.state == "connected" else None
        config_due = self._config_due if self.state == "connected" else None
        dues = [d for d in (self._connect_due, self._heartbeat_due, expiry, config_due) if d is not None]
        return min(dues) if dues else None

    def next_call(self, now: float, busy: bool) -> Call | None:
        if self._in_flight is not None or self.state == "stopping":
            return None
        if self.state == "connected" and not self.token_valid(now):
            self._token_lost("the token expired before it could be refreshed", now)
        call: Call | None = None
        if self._connect_due is not None and now >= self._connect_due:
            self._connect_due = None
            call = Call("connect", self._connect_why, self._generation)
        elif self._heartbeat_due is not None and now >= self._heartbeat_due and self.state == "connected":
            self._heartbeat_due = None
            # REST controllers know no `sleep` status: a sleeping agent reports `busy`, so no work is offered.
            status = "busy" if busy or self.sleeping or self.work is not None else self.heartbeat_enum
            call = Call("heartbeat", "heartbeat", self._generation, token=self.token, status=status)
        elif self._config_due is not None and now >= self._config_due and self.state == "connected":
            self._config_due = None
            call = Call("config", "config poll", self._generation, token=self.token)
        self._in_flight = call
        return call

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        if not self.settings.enabled:
            self._set_state("fallback", "local mode (AIWM_ENABLED=false)")
            return
        self._schedule_connect(now, "connect")

    def startup_expired(self) -> None:
        """Start-up may not wait for the controller any longer: serve the local configuration meanwhile."""
        if self.state == "connecting":
            log.warning("the controller has not answered yet (%s); serving the local configuration "
                        "(instruction file, env, defaults) while connecting", self.last_error or "no answer")
            self._set_state("fallback", self.last_error or "controller not answering yet")

    def reload(self, settings: SessionSettings, now: float, why: str, identity_changed: bool) -> None:
        """New settings (SIGHUP, /reload): connect again now. A session whose token still works keeps it
        (and keeps heartbeating) until the new connect succeeds, even if the new identity is refused."""
        self.settings = settings
        self._generation += 1  # outcomes of calls made before the reload are ignored
        self._in_flight = None
        if not settings.enabled:
            self.controller, self._token_usable = None, False
            self._connect_due = self._heartbeat_due = None
            self._set_state("fallback", "local mode (AIWM_ENABLED=false)")
            return
        if identity_changed and self.state != "connected":
            self.controller = None  # another agent or controller: the old configuration is not ours
        self._attempt = 0
        if self.state == "connected" and self._heartbeat_due is None:
            self._heartbeat_due = now
        self._schedule_connect(now, why)

    @property
    def sleeping(self) -> bool:
        return self.sleep_reason is not None

    def set_config_poll(self, interval: float, now: float) -> None:
        """Poll the configuration every `interval` s while connected (0 = off)."""
        if interval == self.config_poll_interval:
            return
        self.config_poll_interval = interval
        self._config_due = now + interval if interval > 0 and self.state == "connected" else None

    def set_sleep(self, sleeping: bool, reason: str, now: float) -> bool:
        """An operator's `sleep` / `wake`. Returns whether anything changed; a change is reported by a
        heartbeat at once (not at the next interval), so the controller stops or resumes offering work now."""
        if sleeping == self.sleeping:
            return False
        self.sleep_reason = (reason or "operator request") if sleeping else None
        self.sleep_since = self._wall() if sleeping else None
        log.info("%s by an operator%s", "sleeping" if sleeping else "awake again",
                 f" ({reason[:100]})" if reason else "")
        self._report_now(now)
        return True

    def work_started(self, offer: WorkOffer, now: float) -> None:
        """The loop took `offer` (or resumed it after a restart): `busy` goes to the controller at once."""
        self.work = offer
        self.work_since = self._wall()
        self._report_now(now)

    def work_finished(self, key: str, now: float) -> bool:
        """The turn of task `key` ended: never start it again, and report `idle` at once."""
        if self.work is None or self.work.key != key:
            return False
        self.work, self.work_since = None, None
        self.work_done += 1
        self._remember_done(key)
        self._report_now(now)
        return True

    def _remember_done(self, key: str) -> None:
        self._done_keys[key] = None
        while len(self._done_keys) > DONE_KEYS:
            self._done_keys.popitem(last=False)

    def _report_now(self, now: float) -> None:
        """A heartbeat now (status changed), or right after the one in flight."""
        if self._in_flight is not None and self._in_flight.kind == "heartbeat":
            self._report_soon = True
        elif self.state == "connected":
            self._heartbeat_due = now

    def socket_refused(self, token: str, now: float) -> bool:
        """The portal socket refused `token` (accepted, then disconnected at once): like a heartbeat 401,
        reconnect for a fresh token, but only when `token` is still the current one (one reconnect per
        refused token, never a loop)."""
        if self.state != "connected" or not token or token != self.token:
            return False
        log.warning("the portal socket refused the agent token; reconnecting to the controller")
        self._token_lost("portal socket refused the token (401)", now)
        return True

    def stop(self) -> None:
        self._set_state("stopping")
        self._connect_due = self._heartbeat_due = None

    # -- outcomes --------------------------------------------------------------------------------

    def complete(self, call: Call, outcome: Outcome, now: float) -> list[Event]:
        if call is self._in_flight:
            self._in_flight = None
        if call.generation != self._generation or self.state == "stopping":
            return []  # made before a reload, or too late to matter
        if call.kind == "connect":
            if isinstance(outcome, ControllerConfig):
                return self._connected(outcome, call.why, now)
            if isinstance(outcome, ControllerError):
                return self._connect_failed(outcome, call.why, now)
        elif call.kind == "config":
            if isinstance(outcome, (ControllerConfig, ControllerError)):
                return self._config_polled(outcome, now)
        else:
            if isinstance(outcome, HeartbeatResult):
                return self._heartbeat_accepted(outcome, call.status, now)
            if isinstance(outcome, ControllerError):
                self._heartbeat_failed(outcome, call.status, now)
                if self._report_soon and self._heartbeat_due is not None:
                    self._report_soon = False
                    self._heartbeat_due = min(self._heartbeat_due, now)
                return []
        raise TypeError(f"a {call.kind} call cannot end with {type(outcome).__name__}")

    def _connected(self, controller: ControllerConfig, why: str, now: float) -> list[Event]:
        previous = self.controller
        self.metrics.connection_success.inc()
        if previous is not None:
            self.token_refreshes += 1
            self.metrics.token_refresh.inc()
        self.controller = controller
        self.connected_at = self._wall()
        self.last_error = ""
        self._attempt = 0
        self._token_usable = True
        self._token_until = None
        if controller.lifetime:  # stop using it a little before its end, but not before a refresh could run
            self._token_until = usable_until(now, controller.lifetime)
        self._schedule_connect(now + self._refresh_delay(controller), "token refresh")
        self._heartbeat_due = now
        self._config_due = now + self.config_poll_interval if self.config_poll_interval > 0 else None
        self._heartbeat_logged = False
        self._once.recovered("fallback", "connected to the controller again")
        self._once.recovered("connect", "")
        self.metrics.set_controller_version(controller.wire_version)
        self.metrics.token_expiry.set(controller.expires_at or 0)
        validity = f"valid for {controller.lifetime:.0f} s" if controller.lifetime else "lifetime unknown"
        log.info("%s: connected as %s (controller %s at %s, token %s)", why,
                 controller.agent_name or "this agent", controller.wire_version, self.settings.url or "?", validity)
        self._set_state("connected")
        return [Connected(controller, previous, why)]

    def _refresh_delay(self, controller: ControllerConfig) -> float:
        return refresh_delay(self.settings.reconnect_interval, controller.lifetime)

    def _connect_failed(self, exc: ControllerError, why: str, now: float) -> list[Event]:
        self.metrics.connection_failure.labels(exc.kind).inc()
        self.last_error = exc.describe()
        events: list[Event] = [ConnectFailed(exc, why)]
        fallback = self.settings.fallback_retry_interval
        if exc.kind == "suspended":
            self._once.failure("fallback", exc.signature, logging.ERROR, "the controller refused to connect: %s "
                               "[correlation id %s]; %s; heartbeats stop, retrying every %g s", exc.describe(),
                               exc.correlation_id, ADVICE["suspended"], fallback)
            self._token_usable, self._heartbeat_due, self._attempt = False, None, 0
            self._set_state("suspended", exc.describe())
            self._schedule_connect(now + max(fallback, exc.retry_after or 0.0), "retry")
            return events
        self._attempt += 1
        retry = connect_retry(exc, self._attempt, keeping_token=self.state == "connected" and self.token_valid(now),
                              fallback_interval=fallback, connect_retries=self.settings.connect_retries,
                              rng=self._rng)
        if retry.action == "keep_token":
            # The current token still works: keep serving and heartbeating with it, retry the connect.
            self._once.failure("connect", exc.signature, logging.WARNING,
                               "%s failed (%s) [correlation id %s]; %s; keeping the current token, retry in "
                               "%.0f s", why, exc.describe(), exc.correlation_id, ADVICE.get(exc.kind, ""),
                               retry.delay)
        elif retry.action == "fallback":
            self._enter_fallback(exc, now)
            return events
        else:
            self._once.failure("connect", exc.signature, logging.WARNING,
                               "%s failed (%s), retry %d/%d in %.1f s [correlation id %s]", why, exc.describe(),
                               self._attempt, self.settings.connect_retries, retry.delay, exc.correlation_id)
        self._schedule_connect(now + retry.delay, why)
        return events

    def _enter_fallback(self, exc: ControllerError, now: float) -> None:
        self._once.failure("fallback", exc.signature, logging.ERROR,
                           "cannot connect to the controller: %s [correlation id %s]; %s", exc.describe(),
                           exc.correlation_id, ADVICE.get(exc.kind, ""))
        had_session = self.controller is not None
        new_state: State = "disconnected" if had_session else "fallback"
        if self.state != new_state and not had_session:
            log.warning("serving the local configuration (instruction file, env, defaults); retrying the "
                        "controller every %g s", self.settings.fallback_retry_interval)
        self._attempt = 0
        self._token_usable, self._heartbeat_due = False, None
        self._set_state(new_state, exc.describe())
        self._schedule_connect(now + max(self.settings.fallback_retry_interval, exc.retry_after or 0.0), "retry")

    def _heartbeat_accepted(self, result: HeartbeatResult, status: str, now: float) -> list[Event]:
        self.last_heartbeat_at = self._wall()
        self.heartbeat_failures_in_row = 0
        self._refused_in_row = 0
        self.metrics.heartbeat_success.inc()
        self.metrics.last_heartbeat.set(self.last_heartbeat_at)
        self._once.recovered("heartbeat", "heartbeats are accepted again")
        log.log(logging.DEBUG if self._heartbeat_logged else logging.INFO,
                "heartbeat %s accepted; next every ~%g s [correlation id %s]", status,
                self.settings.heartbeat_interval, result.correlation_id)
        self._heartbeat_logged = True
        self._heartbeat_due = now + jittered_interval(self.settings.heartbeat_interval, rng=self._rng)
        if self._report_soon:
            self._report_soon = False
            self._heartbeat_due = now
        events: list[Event] = [HeartbeatAnswered(result)]
        updated = self._updates_from_answer(result.body, now)
        if updated is not None:
            events.append(updated)
        offer = parse_offer(result.body)
        if offer is not None and self.work is None and not self.sleeping and offer.key not in self._done_keys:
            events.append(WorkOffered(offer))
        elif offer is not None:
            log.debug("work offer %s not taken (in progress, done or sleeping)", offer.key)
        elif ignored_task(result.body):
            self._once.failure("task", ignored_task(result.body), logging.INFO,
                               "the controller sent a %r system task; nothing handles it yet (ignored)",
                               ignored_task(result.body))
        return events

    def _config_polled(self, outcome: ControllerConfig | ControllerError, now: float) -> list[Event]:
        """A polled configuration: applied when it differs (the token is the session's, the answer has none)."""
        if self.config_poll_interval > 0:
            self._config_due = now + self.config_poll_interval
        previous = self.controller
        if isinstance(outcome, ControllerError):
            if outcome.kind == "unauthorized":
                self._token_lost("token refused (401)", now)
            elif outcome.kind == "not_found":  # a controller without the endpoint (v1): stop asking
                log.info("config poll: the controller has no GET /agents/:id/config (%s); not polling",
                         outcome.describe())
                self._config_due = None
            else:
                self._once.failure("config", outcome.signature, logging.WARNING,
                                   "config poll failed: %s; will retry in %g s", outcome.describe(),
                                   self.config_poll_interval)
            return []
        self._once.recovered("config", "config poll works again")
        updated = merge_polled(previous, outcome)
        if updated is None:
            return []
        self.controller = updated
        log.info("config poll: the controller's configuration changed")
        return [Connected(updated, previous, "config poll")]

    def _updates_from_answer(self, body: Mapping[str, object], now: float) -> Connected | None:
        """v6 answers may carry a new `token` (adopted as if a reconnect had returned it) and the current
        `instruction` (applied when it changed, compared without its `Datetime:` line)."""
        previous = self.controller
        if previous is None:
            return None
        update = answer_update(previous, body, self._wall())
        if update is None:
            return None
        if update.new_token:
            self._token_until = None
            if update.token_lifetime:
                self._token_until = usable_until(now, update.token_lifetime)
                self._schedule_connect(now + self._refresh_delay(update.controller), "token refresh")
            self.token_refreshes += 1
            self.metrics.token_refresh.inc()
            log.info("heartbeat answer: adopted a new agent token from the controller")
        if update.new_instruction:
            log.info("heartbeat answer: the controller changed the instruction")
        self.controller = update.controller
        return Connected(update.controller, previous, "heartbeat answer")

    def _heartbeat_failed(self, exc: ControllerError, status: str, now: float) -> None:
        self.metrics.heartbeat_failure.labels(exc.kind).inc()
        self.heartbeat_failures_in_row += 1
        if exc.kind == "rejected" and status != "busy" and exc.mentions("status"):
            other = "online" if self.heartbeat_enum == "idle" else "idle"
            log.warning("controller rejected heartbeat status %r (%s); using %r from now on",
                        status, exc.describe(), other)
            self.heartbeat_enum = other
            self._heartbeat_due = now
        elif exc.kind == "unauthorized":
            self._refused_in_row += 1
            log.warning("heartbeat: token refused (%s); reconnecting now", exc.describe())
            self._token_lost("token refused (401)", now)
            if self._refused_in_row > 1:  # refused again right after a fresh connect: do not hammer
                self._schedule_connect(now + backoff_delay(self._refused_in_row - 1, rng=self._rng,
                                                           cap=self.settings.fallback_retry_interval),
                                       "reconnect after 401")
        elif exc.kind == "not_found":
            log.critical("heartbeat: the controller says this agent does not exist (404). Heartbeats stopped; "
                         "the bots keep serving the last configuration. Fix AIWM_AGENT_ID and reload.")
            self._token_usable = False
            self._connect_due = self._heartbeat_due = None
            self._set_state("deleted", exc.describe())
        else:
            self._once.failure("heartbeat", exc.signature, logging.WARNING,
                               "heartbeat failed: %s [correlation id %s]; will retry on schedule",
                               exc.describe(), exc.correlation_id)
            delay = jittered_interval(self.settings.heartbeat_interval, rng=self._rng)
            self._heartbeat_due = now + max(delay, exc.retry_after or 0.0)

    # -- helpers ---------------------------------------------------------------------------------

    def _token_lost(self, why: str, now: float) -> None:
        """The token is dead whatever its expiry says: serve the last configuration and reconnect now."""
        self._token_usable, self._heartbeat_due, self._attempt = False, None, 0
        self._set_state("disconnected", why)
        self._schedule_connect(now, "reconnect after 401" if "401" in why else "reconnect")

    def _schedule_connect(self, when: float, why: str) -> None:
        self._connect_due, self._connect_why = when, why

    def _set_state(self, state: State, error: str = "") -> None:
        self.state = state
        if error:
            self.last_error = error
        self.metrics.connected.set(1 if state == "connected" else 0)
        self.metrics.fallback.set(1 if state == "fallback" else 0)
