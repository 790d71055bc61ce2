"""Every transition of the controller session state machine, in process, on an injected clock (no sleeping)."""

from __future__ import annotations

import base64
import itertools
import json
import random

import pytest

from aiwm_agentd.controller.client import ControllerError, HeartbeatResult
from aiwm_agentd.controller.session import (
    Call,
    Connected,
    ConnectFailed,
    ControllerSession,
    HeartbeatAnswered,
    SessionSettings,
    WorkOffered,
)
from aiwm_agentd.controller.wire import ControllerConfig, parse_connect_response
from aiwm_agentd.metrics import Metrics

SETTINGS = SessionSettings(enabled=True, heartbeat_interval=60.0, reconnect_interval=23 * 3600.0,
                           fallback_retry_interval=300.0, connect_retries=3)
WALL = 1_800_000_000.0


def jwt(claims: dict[str, float]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(dict(claims))}.c2lnbmF0dXJl"


def controller(lifetime: float | None = 3600.0, instruction: str = "Be brief.", token: str = "",
               wall: float = WALL) -> ControllerConfig:
    body: dict[str, object] = {"accessToken": token or jwt({"iat": wall, "exp": wall + (lifetime or 86400)}),
                               "instruction": {"systemPrompt": instruction, "guidelines": []},
                               "agent": {"id": "a" * 24, "name": "Agent"}}
    if lifetime is not None:
        body["expiresIn"] = lifetime
    return parse_connect_response(body, now=wall)


def error(kind: str, status: int | None = None, retry_after: float | None = None, message: str = "") -> ControllerError:
    return ControllerError(kind, message or kind, status=status, correlation_id="cid", retry_after=retry_after)  # type: ignore[arg-type]


class Harness:
    """The loop's side of the contract: ask for the due call, answer it, at chosen times."""

    def __init__(self, settings: SessionSettings = SETTINGS) -> None:
        self.metrics = Metrics()
        self.session = ControllerSession(settings, self.metrics, wall=lambda: WALL + self.now, rng=random.Random(7))
        self.now = 0.0

    def start(self) -> ControllerSession:
        self.session.start(self.now)
        return self.session

    def due_call(self, busy: bool = False) -> Call:
        due = self.session.next_due()
        assert due is not None, f"nothing scheduled in state {self.session.state}"
        self.now = max(self.now, due)
        call = self.session.next_call(self.now, busy)
        assert call is not None
        return call

    def answer(self, call: Call, outcome: object) -> list[object]:
        return list(self.session.complete(call, outcome, self.now))  # type: ignore[arg-type]

    def connect_ok(self, config: ControllerConfig | None = None) -> ControllerConfig:
        call = self.due_call()
        assert call.kind == "connect"
        config = config or controller()
        events = self.answer(call, config)
        assert isinstance(events[0], Connected)
        return config

    def heartbeat(self, outcome: object, busy: bool = False) -> Call:
        call = self.due_call(busy)
        assert call.kind == "heartbeat", call
        self.answer(call, outcome)
        return call

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


def hb_ok() -> HeartbeatResult:
    return HeartbeatResult({}, "cid")


def test_local_mode_makes_no_calls() -> None:
    h = Harness(SessionSettings(False, 60, 3600, 300, 3))
    s = h.start()
    assert s.state == "fallback" and "local mode" in s.last_error
    assert s.next_due() is None and s.next_call(1e9, False) is None


def test_connect_then_heartbeats_on_schedule_and_refresh_from_the_lifetime() -> None:
    h = Harness()
    s = h.start()
    assert s.state == "connecting"
    h.connect_ok(controller(lifetime=3600))
    assert s.state == "connected" and s.token
    first = h.heartbeat(hb_ok())
    assert first.status == "idle" and first.token == s.token
    assert s.last_heartbeat_at == WALL + h.now
    # Jittered, never later than the interval, at most 10 % earlier.
    assert 54 <= (s.next_due() or 0) - h.now <= 60
    busy = h.heartbeat(hb_ok(), busy=True)
    assert busy.status == "busy"
    # The refresh comes lifetime - min(600, lifetime / 10) after the connect: 3240 s.
    while (call := h.due_call()).kind == "heartbeat":
        h.answer(call, hb_ok())
    assert call.kind == "connect" and call.why == "token refresh"
    assert h.now == pytest.approx(3240)
    events = h.answer(call, controller(lifetime=3600, instruction="New."))
    assert isinstance(events[0], Connected) and events[0].previous is not None
    assert s.token_refreshes == 1 and h.counter("aiwm_token_refresh_total") == 1


def test_clock_skew_does_not_make_the_session_reconnect_every_second() -> None:
    # The VM's clock is two days ahead of the controller's: by the wall clock the token expired long ago.
    h = Harness()
    h.start()
    skewed = controller(lifetime=None, token=jwt({"iat": WALL - 2 * 86400, "exp": WALL - 86400}))
    assert skewed.lifetime == 86400  # exp - iat, not exp - now
    h.connect_ok(skewed)
    connects = 0
    while h.now < 20 * 3600:
        call = h.due_call()
        if call.kind == "connect":
            connects += 1
            h.answer(call, skewed)
        else:
            h.answer(call, hb_ok())
    assert connects == 0  # first refresh at 86400 - 600 s


def test_a_tiny_token_lifetime_still_has_a_refresh_floor() -> None:
    h = Harness()
    h.start()
    h.connect_ok(controller(lifetime=0.5))
    assert h.session.next_due() == pytest.approx(h.now)  # the first heartbeat
    h.heartbeat(hb_ok())
    call = h.due_call()
    assert call.kind == "connect" and h.now >= 1.0


def test_transient_failures_back_off_then_fall_back_and_retry_on_the_fallback_interval() -> None:
    h = Harness()
    s = h.start()
    times = []
    for _ in range(4):  # the first attempt plus connect_retries
        call = h.due_call()
        times.append(h.now)
        events = h.answer(call, error("server_error", 503))
        assert isinstance(events[0], ConnectFailed)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.8 <= gaps[0] <= 1.2 and 1.6 <= gaps[1] <= 2.4 and 3.2 <= gaps[2] <= 4.8
    assert s.state == "fallback"
    assert (s.next_due() or 0) - h.now == pytest.approx(300)
    assert h.counter("aiwm_connection_failure_total", reason="server_error") == 4
    h.connect_ok()
    assert s.state == "connected" and s.last_error == ""


def test_retry_after_is_honoured_at_start_up() -> None:
    h = Harness()
    s = h.start()
    h.answer(h.due_call(), error("rate_limited", 429, retry_after=300))
    assert s.state == "connecting"
    assert (s.next_due() or 0) - h.now == pytest.approx(300)
    s.startup_expired()  # the loop's start-up budget ran out: serve the local configuration meanwhile
    assert s.state == "fallback"
    assert (s.next_due() or 0) - h.now == pytest.approx(300)  # still on the controller's schedule
    h.connect_ok()
    assert s.state == "connected"


def test_permanent_failure_goes_straight_to_fallback() -> None:
    h = Harness()
    s = h.start()
    h.answer(h.due_call(), error("invalid_credentials", 401))
    assert s.state == "fallback"
    assert (s.next_due() or 0) - h.now == pytest.approx(300)


def test_startup_expired_is_a_no_op_once_resolved() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    s.startup_expired()
    assert s.state == "connected"


def test_refresh_failure_keeps_the_valid_token_and_keeps_heartbeating() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok(controller(lifetime=86400))
    while (call := h.due_call()).kind == "heartbeat":
        h.answer(call, hb_ok())
    h.answer(call, error("server_error", 503))
    assert s.state == "connected" and "503" in s.last_error
    while (call := h.due_call()).kind == "connect":  # retried with backoff...
        h.answer(call, error("server_error", 503))
    h.answer(call, hb_ok())  # ...while the token, good for a day, keeps heartbeating
    assert s.state == "connected" and h.now < 86400
    # A permanent refusal (a wrong secret applied by a reload) also keeps it, retried slowly.
    while (call := h.due_call()).kind == "heartbeat":
        h.answer(call, hb_ok())
    refused_at = h.now
    h.answer(call, error("invalid_credentials", 401))
    assert s.state == "connected"
    while (call := h.due_call()).kind == "heartbeat":
        h.answer(call, hb_ok())
    assert h.now - refused_at >= 300  # the fallback interval, not a tight connect loop


def test_a_token_that_runs_out_without_a_refresh_means_disconnected() -> None:
    h = Harness(SessionSettings(True, 60, 23 * 3600, 1000, 3))
    s = h.start()
    h.connect_ok(controller(lifetime=3600))
    failures = 0
    while s.state == "connected":
        call = h.session.next_call(h.now, False)
        if call is None:
            h.now = h.session.next_due() or h.now + 1
            continue
        if call.kind == "connect":
            failures += 1
            h.answer(call, error("server_error", 503))
        else:
            h.answer(call, hb_ok())
    assert s.state == "disconnected" and s.token == ""
    assert 3590 <= h.now <= 3600 and failures >= 3
    assert s.controller is not None  # the last controller configuration is still served


def test_heartbeat_401_reconnects_at_once_then_backs_off_if_refused_again() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(error("unauthorized", 401))
    assert s.state == "disconnected" and s.token == ""
    assert s.next_due() == pytest.approx(h.now)  # at once
    call = h.due_call()
    assert call.kind == "connect" and call.why == "reconnect after 401"
    h.answer(call, controller())
    h.heartbeat(error("unauthorized", 401))  # refused right after a fresh connect
    assert (s.next_due() or 0) - h.now >= 0.8  # not a hot loop
    h.connect_ok()
    h.heartbeat(hb_ok())
    assert s.state == "connected"


def test_heartbeat_404_means_deleted_and_silence_until_a_reload() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(error("not_found", 404))
    assert s.state == "deleted"
    assert s.next_due() is None and s.next_call(1e9, False) is None
    s.reload(SETTINGS, h.now, "SIGHUP", identity_changed=True)
    call = h.due_call()
    assert call.kind == "connect" and call.why == "SIGHUP"
    h.answer(call, controller())
    assert s.state == "connected"


def test_suspended_agent_stops_heartbeating_and_retries_slowly() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    s.reload(SETTINGS, h.now, "SIGHUP", identity_changed=False)
    call = h.due_call()
    assert call.kind == "connect"
    h.answer(call, error("suspended", 401, message="Agent is suspended"))
    assert s.state == "suspended" and s.token == ""
    call = h.due_call()
    assert call.kind == "connect" and h.now >= 300


def test_rejected_status_enum_flips_and_is_remembered() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(ControllerError("rejected", "Validation failed", status=400,
                                errors=("status must be one of: online, busy",)))
    assert s.heartbeat_enum == "online"
    assert s.next_due() == pytest.approx(h.now)
    assert h.heartbeat(hb_ok()).status == "online"


def test_transient_heartbeat_failures_are_counted_and_retried_on_schedule() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(error("timeout"))
    h.heartbeat(error("server_error", 503, retry_after=120))
    assert s.heartbeat_failures_in_row == 2 and s.state == "connected"
    assert (s.next_due() or 0) - h.now == pytest.approx(120)
    assert h.counter("aiwm_heartbeat_failure_total", reason="timeout") == 1
    h.heartbeat(hb_ok())
    assert s.heartbeat_failures_in_row == 0


def test_reload_with_a_refused_identity_keeps_the_session() -> None:
    h = Harness()
    s = h.start()
    config = h.connect_ok()
    s.reload(SETTINGS, h.now, "SIGHUP", identity_changed=True)
    call = h.due_call()
    assert call.kind == "connect"
    h.answer(call, error("invalid_credentials", 401, message="Invalid credentials"))
    assert s.state == "connected" and s.controller is config and s.token
    assert "Invalid credentials" in s.last_error
    assert h.due_call().kind == "heartbeat"


def test_reload_to_local_mode_forgets_the_controller() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    s.reload(SessionSettings(False, 60, 3600, 300, 3), h.now, "SIGHUP", identity_changed=True)
    assert s.state == "fallback" and s.controller is None
    assert s.next_due() is None


def test_an_outcome_from_before_a_reload_is_ignored() -> None:
    h = Harness()
    s = h.start()
    old = h.due_call()
    s.reload(SETTINGS, h.now, "SIGHUP", identity_changed=True)
    assert h.answer(old, controller()) == []
    assert s.state == "connecting"
    h.connect_ok()


def test_one_call_at_a_time_and_nothing_after_stop() -> None:
    h = Harness()
    s = h.start()
    call = h.due_call()
    assert s.next_call(h.now + 100, False) is None and s.next_due() is None  # in flight
    events = h.answer(call, controller())
    assert [type(e) for e in events] == [Connected]
    call = h.due_call()
    assert isinstance(h.answer(call, hb_ok())[0], HeartbeatAnswered)
    s.stop()
    assert s.state == "stopping" and s.next_call(1e9, False) is None


# -- realtime: assigned work, sleep/wake, the portal socket's token refusal --------------------------------

WORK_ANSWER = {"success": True, "systemMessage": "Call mcp__Builtin__StartWork first.",
               "work": {"id": "w1", "title": "Fix the build", "type": "task", "status": "todo", "priorityLevel": 2}}


def offered(events: list[object]) -> list[WorkOffered]:
    return [e for e in events if isinstance(e, WorkOffered)]


def test_work_offer_is_reported_busy_at_once_and_idle_at_once_after_and_never_started_twice() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    call = h.due_call()
    events = h.answer(call, HeartbeatResult(WORK_ANSWER, "cid"))
    assert [e.offer.key for e in offered(events)] == ["work:w1:todo"]
    s.work_started(offered(events)[0].offer, h.now)
    assert s.next_due() == h.now  # busy goes out now, not at the next interval
    busy = h.due_call()
    assert busy.status == "busy"
    # The same offer repeated while it runs (an answer to an earlier idle heartbeat) is not taken again.
    assert offered(h.answer(busy, HeartbeatResult(WORK_ANSWER, "cid"))) == []
    h.now += 5
    assert s.work_finished("work:w1:todo", h.now)
    assert s.work is None and s.work_done == 1 and s.next_due() == h.now
    idle = h.due_call()
    assert idle.status == "idle"
    # Offered again after it ended (the model did not move it): not started twice.
    assert offered(h.answer(idle, HeartbeatResult(WORK_ANSWER, "cid"))) == []
    # The same task back in another state (review) is a new task.
    review = {**WORK_ANSWER, "work": {**WORK_ANSWER["work"], "status": "review"}}  # type: ignore[dict-item]
    assert [e.offer.key for e in offered(h.answer(h.due_call(), HeartbeatResult(review, "cid")))] == \
        ["work:w1:review"]


def test_status_change_during_a_heartbeat_in_flight_goes_right_after_it() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    in_flight = h.due_call()
    assert in_flight.status == "idle"
    s.set_sleep(True, "maintenance", h.now)  # while the idle heartbeat is in flight
    assert s.next_due() is None
    h.now += 0.2
    h.answer(in_flight, hb_ok())
    assert s.next_due() == h.now  # not the full interval later
    assert h.due_call().status == "busy"  # REST knows no `sleep`: busy keeps work away


def test_sleep_declines_offers_and_wake_reports_idle_at_once() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(hb_ok())
    assert s.set_sleep(True, "night", h.now) and s.sleeping and s.sleep_reason == "night"
    assert s.sleep_since == WALL + h.now
    assert not s.set_sleep(True, "again", h.now)  # no change, nothing to report
    call = h.due_call()
    assert call.status == "busy"
    assert offered(h.answer(call, HeartbeatResult(WORK_ANSWER, "cid"))) == []
    assert s.set_sleep(False, "", h.now) and s.sleep_since is None
    assert s.next_due() == h.now and h.due_call().status == "idle"


def test_socket_refusal_reconnects_once_per_token() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(hb_ok())
    old = s.token
    assert not s.socket_refused("some-other-token", h.now)  # a stale refusal changes nothing
    assert s.socket_refused(old, h.now)
    assert s.state == "disconnected" and s.token == ""
    call = h.due_call()
    assert call.kind == "connect" and call.why == "reconnect after 401"
    h.answer(call, controller(token=jwt({"iat": WALL + 1, "exp": WALL + 3601})))
    assert s.state == "connected" and s.token != old
    assert not s.socket_refused(old, h.now)  # the old token's refusal arrives late: no second reconnect


def test_reserved_system_tasks_are_ignored() -> None:
    h = Harness()
    h.start()
    h.connect_ok()
    events = h.answer(h.due_call(), HeartbeatResult({"success": True, "systemTask": {"type": "inbox"}}, "cid"))
    assert offered(events) == [] and isinstance(events[0], HeartbeatAnswered)


def test_instruction_in_an_answer_is_applied_only_when_it_changed_beyond_its_datetime_line() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok(controller(instruction="Be brief.\n<runtime>\nDatetime: 2026-01-01 10:00\n</runtime>"))
    same = {"instruction": {"id": "i", "systemPrompt": "Be brief.\n<runtime>\nDatetime: 2026-01-01 10:01\n</runtime>"}}
    events = h.answer(h.due_call(), HeartbeatResult(same, "cid"))
    assert [e for e in events if isinstance(e, Connected)] == []
    changed = {"instruction": {"id": "i", "systemPrompt": "Be thorough.\nDatetime: 2026-01-01 10:02"}}
    events = h.answer(h.due_call(), HeartbeatResult(changed, "cid"))
    updates = [e for e in events if isinstance(e, Connected)]
    assert len(updates) == 1 and updates[0].why == "heartbeat answer"
    assert s.controller is not None and s.controller.instruction.startswith("Be thorough.")


def test_token_in_an_answer_is_adopted_like_a_reconnect() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok(controller(lifetime=3600))
    fresh = jwt({"iat": WALL + h.now, "exp": WALL + h.now + 7200})
    events = h.answer(h.due_call(), HeartbeatResult({"success": True, "token": fresh}, "cid"))
    updates = [e for e in events if isinstance(e, Connected)]
    assert len(updates) == 1 and updates[0].controller.token == fresh
    assert s.token == fresh and s.token_refreshes == 1
    assert h.heartbeat(hb_ok()).token == fresh  # the next heartbeat uses it
    # The refresh follows the new token's lifetime: 7200 - 600 s after it arrived, not the old schedule.
    while (call := h.due_call()).kind == "heartbeat":
        h.answer(call, hb_ok())
    assert call.why == "token refresh" and h.now == pytest.approx(6600, abs=1)


def test_config_poll_applies_a_changed_configuration_and_keeps_the_token() -> None:
    h = Harness()
    s = h.start()
    s.set_config_poll(30.0, h.now)
    original = h.connect_ok(controller(instruction="Be brief."))
    h.heartbeat(hb_ok())
    call = h.due_call()
    assert call.kind == "config" and h.now == pytest.approx(30) and call.token == original.token
    assert h.answer(call, controller(instruction="Be brief.", token="")) == []  # unchanged: nothing to apply
    call = h.due_call()
    while call.kind != "config":
        h.answer(call, hb_ok())
        call = h.due_call()
    assert h.now == pytest.approx(60)
    events = h.answer(call, parse_connect_response(
        {"accessToken": "", "expiresIn": 0, "instruction": {"systemPrompt": "Be thorough.", "guidelines": []}},
        now=WALL))
    assert len(events) == 1 and isinstance(events[0], Connected) and events[0].why == "config poll"
    assert s.controller is not None and s.controller.instruction == "Be thorough."
    assert s.token == original.token  # the config endpoint carries no token: ours is kept


def test_config_poll_off_by_default_and_a_401_reconnects() -> None:
    h = Harness()
    s = h.start()
    h.connect_ok()
    h.heartbeat(hb_ok())
    assert (s.next_due() or 0) - h.now > 50  # only the next heartbeat: no poll
    s.set_config_poll(10.0, h.now)
    call = h.due_call()
    assert call.kind == "config"
    h.answer(call, error("unauthorized", 401))
    assert s.state == "disconnected" and h.due_call().kind == "connect"
