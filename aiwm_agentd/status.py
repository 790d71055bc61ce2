"""One frozen status snapshot and every view of it: /health, chat /status, STATUS= and `aiwm-agentd status`.

The loop builds the snapshot's core (session, configuration) whenever it changes; worker health, busy and
queue depth are read at the moment a view is asked for and frozen into the same snapshot. Every view renders
a snapshot through the functions below, and healthy/problems are derived in one place (`assess`), so the
views cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiwm_agentd.logs import mask_url_credentials
from aiwm_agentd.workers import WorkerHealth


@dataclass(frozen=True)
class StatusSnapshot:
    version: str
    started_at: float  # wall time
    state: str
    last_error: str
    agent_id: str
    agent_name: str
    controller_enabled: bool
    controller_url: str
    controller_version: str
    connected_at: float | None
    last_heartbeat_at: float | None
    heartbeat_interval: float
    heartbeat_failures_in_row: int
    heartbeat_enum: str
    token_expires_at: float | None
    token_refreshes: int
    config_source: str
    config_updates: int
    model: str
    warnings: tuple[str, ...]
    workers: tuple[tuple[str, WorkerHealth], ...] = ()
    busy: bool = False
    queue_depth: int = 0
    sleep_reason: str | None = None  # an operator put the agent to sleep (portal `agent:command sleep`)
    sleep_since: float | None = None
    work_key: str = ""  # the assigned task in progress ("" = none)
    work_title: str = ""
    work_since: float | None = None
    work_done: int = 0
    mcp_servers: Mapping[str, str] = field(default_factory=dict)  # as the CLI reported them; {} = not yet known
    mcp_tools: int = 0  # MCP tools the model can call
    work_problem: str = ""  # the controller refused a work transition (viewer role): a configuration problem


@dataclass(frozen=True)
class Assessment:
    healthy: bool
    problems: tuple[str, ...]
    degraded: tuple[str, ...]


def assess(s: StatusSnapshot) -> Assessment:
    problems: list[str] = []
    degraded: list[str] = []
    if s.state == "deleted":
        problems.append("the controller says this agent no longer exists (404)")
    if s.state in ("fallback", "disconnected", "suspended") and s.controller_enabled:
        degraded.append(f"controller unreachable or refusing: {s.last_error or 'not connected'}")
    elif s.state == "connected" and s.last_error:
        degraded.append(f"controller: {s.last_error}")
    for name, h in s.workers:
        if h.state == "error" or not h.alive:
            problems.append(f"{name}: {h.detail or h.state}")
        elif h.state == "degraded":
            degraded.append(f"{name}: {h.detail or 'degraded'}")
    if s.work_problem:
        degraded.append(f"work: {s.work_problem}")
    for server, state in s.mcp_servers.items():
        if state != "connected":
            degraded.append(f"MCP server {server} is {state}: the model has none of its tools")
    return Assessment(not problems and s.state != "stopping", tuple(problems), tuple(degraded))


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _age(ts: float | None, now: float) -> float | None:
    return round(now - ts, 1) if ts else None


def health_document(s: StatusSnapshot, now: float) -> dict[str, Any]:
    """The /health JSON (`now`: wall time)."""
    a = assess(s)
    return {
        "healthy": a.healthy,
        "state": s.state,
        "problems": list(a.problems),
        "degraded": list(a.degraded),
        "version": s.version,
        "uptime_s": int(now - s.started_at),
        "agent": {"id": s.agent_id, "name": s.agent_name},
        "controller": {
            "enabled": s.controller_enabled,
            "url": s.controller_url,
            "version": s.controller_version,
            "connected_at": iso(s.connected_at),
            "last_error": s.last_error,
        },
        "heartbeat": {
            "last": iso(s.last_heartbeat_at),
            "age_s": _age(s.last_heartbeat_at, now),
            "interval_s": s.heartbeat_interval,
            "failures_in_row": s.heartbeat_failures_in_row,
            "status_enum": s.heartbeat_enum,
        },
        "token": {"expires_at": iso(s.token_expires_at), "refreshes": s.token_refreshes},
        "config": {"source": s.config_source, "updates": s.config_updates, "model": s.model,
                   "warnings": list(s.warnings)},
        "busy": s.busy,
        "queue_depth": s.queue_depth,
        "sleep": None if s.sleep_reason is None else {"reason": s.sleep_reason, "since": iso(s.sleep_since)},
        "mcp": {"servers": dict(s.mcp_servers), "callable_tools": s.mcp_tools},
        "work": {"current": s.work_key or None, "title": s.work_title, "since": iso(s.work_since),
                 "done": s.work_done, "problem": s.work_problem or None},
        "workers": {name: {"state": h.state, "detail": h.detail, "alive": h.alive, **h.extra}
                    for name, h in s.workers},
        "sandbox": sandbox_of(s),
    }


def sandbox_of(s: StatusSnapshot) -> Any:
    """The tool sandbox as the Claude runner reports it ({"separated", "detail", "tools_user"}), or None before
    the runner started: whether the agent's tools run apart from the daemon's keys."""
    return next((dict(h.extra["sandbox"]) for name, h in s.workers if name == "claude" and "sandbox" in h.extra),
                None)


def chat_summary(s: StatusSnapshot, now: float) -> dict[str, Any]:
    """What chat `/status` shows to an admin (see platforms/commands.format_status: others get
    PUBLIC_STATUS_KEYS only). The controller URL never shows its password."""
    return {
        "agent": s.agent_name,
        "agent_id": s.agent_id,
        "state": s.state,
        "healthy": assess(s).healthy,
        "controller": mask_url_credentials(s.controller_url) if s.controller_enabled else "(local mode)",
        "controller_version": s.controller_version,
        "last_heartbeat_age_s": _age(s.last_heartbeat_at, now),
        "model": s.model,
        "config_source": s.config_source,
        "queue_depth": s.queue_depth,
        "busy": s.busy,
        **({"sleeping": s.sleep_reason} if s.sleep_reason is not None else {}),
        **({"work": f"{s.work_title or s.work_key} (since {iso(s.work_since)})"} if s.work_key else {}),
        **({"mcp": ", ".join(f"{k} {v}" for k, v in s.mcp_servers.items())} if s.mcp_servers else {}),
    }


def status_line(s: StatusSnapshot) -> str:
    """systemd's STATUS= (one line; `systemctl status` shows it), naming the workers still starting."""
    return _controller_line(s) + _connecting(s)


def _controller_line(s: StatusSnapshot) -> str:
    name = s.agent_name
    if s.state == "connected":
        at = s.last_heartbeat_at
        hb = f"; last heartbeat {datetime.fromtimestamp(at).strftime('%H:%M:%S')}" if at else ""
        return f"{name}: connected to AIWM ({s.controller_version}){hb}"
    if s.state == "fallback":
        return f"{name}: local configuration ({s.last_error})"
    return f"{name}: {s.state} ({s.last_error})" if s.last_error else f"{name}: {s.state}"


def _connecting(s: StatusSnapshot) -> str:
    """'; still connecting: telegram, claude': the bots connect while the SDK imports, and
    READY comes before either, so the operator can see what is not up yet."""
    starting = [name for name, h in s.workers if h.alive and h.state == "starting"]
    return f"; still connecting: {', '.join(starting)}" if starting else ""


def format_health_text(data: dict[str, Any]) -> str:
    """`aiwm-agentd status`: the /health document (as fetched from the daemon) for a person."""
    agent = data.get("agent", {})
    ctl = data.get("controller", {})
    hb = data.get("heartbeat", {})
    token = data.get("token", {})
    cfg = data.get("config", {})
    lines = [
        f"aiwm-agentd {data.get('version', '?')}: {'healthy' if data.get('healthy') else 'UNHEALTHY'}, "
        f"state {data.get('state')}, up {data.get('uptime_s', 0)} s",
        f"agent:      {agent.get('name')} ({agent.get('id') or 'no id'})",
        f"controller: {ctl.get('url') or '(local mode)'} {ctl.get('version') or ''}".rstrip()
        + (f"; last error: {ctl['last_error']}" if ctl.get("last_error") else ""),
        f"heartbeat:  last {hb.get('last') or 'never'}"
        + (f" ({hb['age_s']} s ago)" if hb.get("age_s") is not None else "")
        + f", every {hb.get('interval_s')} s, {hb.get('failures_in_row', 0)} failures in a row",
        f"token:      expires {token.get('expires_at') or 'n/a'}, refreshed {token.get('refreshes', 0)} times",
        f"config:     from {cfg.get('source')}, model {cfg.get('model')}, {cfg.get('updates', 0)} updates",
    ]
    for name, w in (data.get("workers") or {}).items():
        lines.append(f"worker {name}: {w.get('state')}" + (f" - {w['detail']}" if w.get("detail") else ""))
    for problem in data.get("problems", []):
        lines.append(f"PROBLEM: {problem}")
    for item in data.get("degraded", []):
        lines.append(f"degraded: {item}")
    return "\n".join(lines)
