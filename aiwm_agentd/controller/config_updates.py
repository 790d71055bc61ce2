"""Configuration changes that arrive between connects: a polled configuration and a heartbeat's answer.

Both keep the session's token unless the controller sends a new one: a polled configuration
(GET /agents/:id/config) carries none, and a v6 heartbeat answer may carry a new `token` (adopted as if a
reconnect had returned it) and the current `instruction` (a change only when it differs without its
`Datetime:` line). Pure functions: the session decides what to schedule and log from their results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from aiwm_agentd.controller.wire import ControllerConfig, jwt_expiry, jwt_lifetime
from aiwm_agentd.controller.work import without_datetime


def merge_polled(previous: ControllerConfig | None, polled: ControllerConfig) -> ControllerConfig | None:
    """The polled configuration with the session's token kept; None when it did not change (or no session)."""
    if previous is None or polled.fingerprint() == previous.fingerprint():
        return None
    return replace(polled, token=previous.token, lifetime=previous.lifetime, expires_at=previous.expires_at,
                   wire_version=previous.wire_version)


@dataclass(frozen=True)
class AnswerUpdate:
    """What a heartbeat answer changed: the new configuration, and which parts of it."""

    controller: ControllerConfig
    new_token: bool
    token_lifetime: float | None  # of the new token (None: unknown or no new token)
    new_instruction: bool


def answer_update(previous: ControllerConfig, body: Mapping[str, object], wall_now: float) -> AnswerUpdate | None:
    """The configuration after a heartbeat answer `body` (None: it changed nothing)."""
    updated = previous
    new_token, lifetime, new_instruction = False, None, False
    token = body.get("token")
    if isinstance(token, str) and token and token != previous.token:
        lifetime = jwt_lifetime(token, wall_now)
        updated = replace(updated, token=token, lifetime=lifetime or updated.lifetime,
                          expires_at=jwt_expiry(token) or updated.expires_at)
        new_token = True
    instruction = body.get("instruction")
    prompt = instruction.get("systemPrompt") if isinstance(instruction, Mapping) else None
    if isinstance(prompt, str) and without_datetime(prompt) != without_datetime(previous.instruction):
        updated = replace(updated, instruction=prompt)
        new_instruction = True
    if updated is previous:
        return None
    return AnswerUpdate(updated, new_token, lifetime or None, new_instruction)
