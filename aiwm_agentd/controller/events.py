"""The controller session's vocabulary: its settings, the calls it asks the loop to run, the events it
answers with, and the advice logged with each kind of failure (controller/session.py is the state machine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiwm_agentd.controller.client import ControllerError, HeartbeatResult
from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.controller.work import WorkOffer

State = Literal["connecting", "connected", "fallback", "disconnected", "suspended", "deleted", "stopping"]

ADVICE = {
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
}


@dataclass(frozen=True)
class SessionSettings:
    enabled: bool
    heartbeat_interval: float
    reconnect_interval: float
    fallback_retry_interval: float
    connect_retries: int
    url: str = ""  # the controller, for the log (without a password)


@dataclass(frozen=True)
class Call:
    """A controller call the loop must run. `generation` ties its outcome to the settings it was made with."""

    kind: Literal["connect", "heartbeat", "config"]
    why: str
    generation: int
    token: str = ""
    status: str = ""


@dataclass(frozen=True)
class Connected:
    controller: ControllerConfig
    previous: ControllerConfig | None
    why: str


@dataclass(frozen=True)
class ConnectFailed:
    error: ControllerError
    why: str


@dataclass(frozen=True)
class HeartbeatAnswered:
    result: HeartbeatResult


@dataclass(frozen=True)
class WorkOffered:
    """A heartbeat answer offered a task this session has not started: the loop decides to take it
    (`work_started`) or not."""

    offer: WorkOffer


Event = Connected | ConnectFailed | HeartbeatAnswered | WorkOffered
Outcome = ControllerConfig | HeartbeatResult | ControllerError
