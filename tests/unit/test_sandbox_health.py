"""/health shows whether the agent's tools run apart from the daemon's keys (the runner's `sandbox`)."""

from __future__ import annotations

from aiwm_agentd import status
from aiwm_agentd.workers import WorkerHealth


def _snapshot(**workers: WorkerHealth) -> status.StatusSnapshot:
    return status.StatusSnapshot(
        version="0", started_at=0.0, state="fallback", last_error="", agent_id="", agent_name="bot",
        controller_enabled=False, controller_url="", controller_version="", connected_at=None,
        last_heartbeat_at=None, heartbeat_interval=60.0, heartbeat_failures_in_row=0, heartbeat_enum="",
        token_expires_at=None, token_refreshes=0, config_source="local", config_updates=0, model="m",
        warnings=(), workers=tuple(workers.items()))


def test_health_has_the_sandbox_of_the_claude_runner() -> None:
    off = {"separated": False, "detail": "off: the daemon lacks CAP_SETUID/CAP_SETGID"}
    document = status.health_document(_snapshot(claude=WorkerHealth("ok", "", extra={"sandbox": off})), 0.0)
    assert document["sandbox"] == off


def test_health_sandbox_is_null_before_the_runner_reports() -> None:
    assert status.health_document(_snapshot(telegram=WorkerHealth("ok", "")), 0.0)["sandbox"] is None
