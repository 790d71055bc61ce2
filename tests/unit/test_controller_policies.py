"""The controller session's pure policies (token schedule, connect retry, configuration updates), directly."""

from __future__ import annotations

import base64
import json
import random

from aiwm_agentd.controller.client import ControllerError
from aiwm_agentd.controller.config_updates import answer_update, merge_polled
from aiwm_agentd.controller.connect_retry import connect_retry
from aiwm_agentd.controller.token_schedule import REFRESH_FLOOR, refresh_delay, usable_until
from aiwm_agentd.controller.wire import ControllerConfig, parse_connect_response

WALL = 1_800_000_000.0


def jwt(claims: dict[str, float]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(dict(claims))}.c2lnbmF0dXJl"


def config(instruction: str = "Be brief.", lifetime: float = 3600.0) -> ControllerConfig:
    return parse_connect_response({"accessToken": jwt({"iat": WALL, "exp": WALL + lifetime}), "expiresIn": lifetime,
                                   "instruction": {"systemPrompt": instruction, "guidelines": []},
                                   "agent": {"id": "a" * 24, "name": "Agent"}}, now=WALL)


def failure(kind: str, retry_after: float | None = None) -> ControllerError:
    return ControllerError(kind, kind, correlation_id="cid", retry_after=retry_after)  # type: ignore[arg-type]


def test_a_token_is_used_until_slack_before_its_end_and_refreshed_a_margin_or_a_tenth_before() -> None:
    assert usable_until(100.0, 3600.0) == 100.0 + 3595.0
    assert refresh_delay(10**6, 86400.0) == 86400.0 - 600.0  # the margin
    assert refresh_delay(10**6, 3600.0) == 3600.0 - 360.0  # a tenth, when shorter than the margin
    assert refresh_delay(23 * 3600.0, None) == 23 * 3600.0  # unknown lifetime: the reconnect interval
    assert refresh_delay(600.0, 3600.0) == 600.0  # a shorter reconnect interval wins


def test_a_short_token_keeps_a_tenth_and_never_goes_below_the_floor() -> None:
    assert usable_until(0.0, 20.0) == 18.0 and refresh_delay(3600.0, 20.0) == 18.0
    assert usable_until(0.0, 0.5) == REFRESH_FLOOR and refresh_delay(3600.0, 0.5) == REFRESH_FLOOR


def test_a_working_token_is_kept_and_the_connect_retried_within_the_fallback_interval() -> None:
    retry = connect_retry(failure("network"), 1, keeping_token=True, fallback_interval=300.0, connect_retries=3,
                          rng=random.Random(1))
    assert retry.action == "keep_token" and 0 < retry.delay < 300.0
    permanent = connect_retry(failure("invalid_credentials"), 1, keeping_token=True, fallback_interval=300.0,
                              connect_retries=3, rng=None)
    assert permanent.action == "keep_token" and permanent.delay == 300.0


def test_without_a_token_transient_failures_back_off_then_fall_back() -> None:
    retries = [connect_retry(failure("timeout"), n, keeping_token=False, fallback_interval=300.0,
                             connect_retries=3, rng=random.Random(1)) for n in (1, 2, 3, 4)]
    assert [r.action for r in retries] == ["retry", "retry", "retry", "fallback"]
    assert retries[0].delay < retries[2].delay and retries[3].delay == 300.0
    assert connect_retry(failure("invalid_credentials"), 1, keeping_token=False, fallback_interval=300.0,
                         connect_retries=3, rng=None).action == "fallback"


def test_retry_after_always_lengthens_the_delay() -> None:
    for keeping in (True, False):
        retry = connect_retry(failure("rate_limited", retry_after=900.0), 1, keeping_token=keeping,
                              fallback_interval=300.0, connect_retries=3, rng=random.Random(1))
        assert retry.delay == 900.0


def test_a_polled_configuration_keeps_the_session_token_and_is_none_when_unchanged() -> None:
    current, polled = config(), config("Be verbose.", lifetime=60.0)
    assert merge_polled(current, config()) is None
    assert merge_polled(None, polled) is None
    merged = merge_polled(current, polled)
    assert merged is not None and merged.instruction == "Be verbose."
    assert (merged.token, merged.lifetime) == (current.token, current.lifetime)


def test_a_heartbeat_answer_adopts_a_new_token_and_a_changed_instruction() -> None:
    current = config()
    new_token = jwt({"iat": WALL + 10, "exp": WALL + 10 + 7200})
    update = answer_update(current, {"token": new_token}, WALL + 10)
    assert update is not None and update.new_token and not update.new_instruction
    assert update.controller.token == new_token and update.token_lifetime == 7200.0
    changed = answer_update(current, {"instruction": {"systemPrompt": "Be verbose."}}, WALL)
    assert changed is not None and changed.new_instruction and not changed.new_token
    assert changed.controller.instruction == "Be verbose." and changed.controller.token == current.token


def test_a_heartbeat_answer_with_nothing_new_changes_nothing() -> None:
    current = config("Datetime: 2026-01-01\nBe brief.")
    body = {"token": current.token, "instruction": {"systemPrompt": "Datetime: 2027-02-02\nBe brief."}}
    assert answer_update(current, body, WALL) is None
    assert answer_update(current, {}, WALL) is None
