"""What the main loop does for the AIWM realtime features, kept out of supervisor.py.

- `WorkDispatch`: a work offer becomes a Claude turn in a conversation of its own; the task is journaled in the
  state directory before the turn (resumed after a restart), and the end of the turn comes back to the loop's
  thread (`drain`), because the session belongs to the loop.
- `heartbeat_call`: a heartbeat over the v6 portal socket (ack with a timeout), REST when the socket fails.
- `mcp_report`: what v5+ heartbeats say about the model's MCP tools.
- `McpRewriter`: the controller's HTTP MCP servers reached through the loopback proxy (mcp_proxy.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.config.snapshot import is_controller_server
from aiwm_agentd.controller.client import ControllerClient, HeartbeatResult
from aiwm_agentd.controller.events import Call
from aiwm_agentd.controller.session import ControllerSession
from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.controller.work import WorkJournal, WorkOffer
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.status import iso
from aiwm_agentd.workers import ConversationKey, Reply, Runner

if TYPE_CHECKING:
    from aiwm_agentd.realtime.channel import AiwmChannel
    from aiwm_agentd.realtime.mcp_proxy import McpProxy

log = logging.getLogger("aiwm_agentd.supervisor")

SOCKET_HEARTBEAT_TIMEOUT = 5.0  # an ack slower than this: the heartbeat goes over REST instead


class WorkDispatch:
    def __init__(self, session: ControllerSession, metrics: Metrics, state_dir: Path,
                 wake: Callable[[], None]) -> None:
        self._session = session
        self._metrics = metrics
        self._journal = WorkJournal(state_dir)
        self._wake = wake
        self._lock = threading.Lock()
        self._ended: list[tuple[str, bool]] = []  # from the runner's thread, for the loop
        self._declined_logged = False

    def take(self, offer: WorkOffer, runner: Runner | None, take_work: bool, now: float,
             resumed: bool = False) -> None:
        """Run `offer` as a Claude turn in a conversation of its own; `busy` is reported at once."""
        if not take_work or runner is None:
            self._metrics.work_declined.inc()
            if not self._declined_logged:
                self._declined_logged = True
                log.warning("the controller offers work (%s) but this agent does not take work: set "
                            "AIWM_TAKE_WORK=true (and give it a Claude credential) or assign the work elsewhere",
                            offer.title or offer.key)
            return
        self._session.work_started(offer, now)
        self._journal.save(offer)  # before the turn: a stop or crash from here on resumes it
        self._metrics.work_started.labels("true" if resumed else "false").inc()
        self._metrics.work_in_progress.set(1)
        log.info("work %s%s: %s", offer.key, " resumed after a restart" if resumed else " accepted",
                 offer.title or offer.kind)
        key = ConversationKey("work", offer.work_id or offer.kind)
        future = runner.submit(key, offer.prompt)
        future.add_done_callback(lambda f: self._turn_ended(offer.key, f))

    def resume(self, runner: Runner | None, take_work: bool, now: float) -> None:
        offer = self._journal.load()
        if offer is not None:
            self.take(offer, runner, take_work, now, resumed=True)

    def _turn_ended(self, key: str, future: concurrent.futures.Future[Reply]) -> None:
        """On the runner's thread: hand the end of the turn to the loop."""
        ok = not future.cancelled() and future.exception() is None and not future.result().error
        with self._lock:
            self._ended.append((key, ok))
        self._wake()

    def drain(self, now: float, stopping: bool) -> None:
        """On the loop's thread: report the turns that ended (not when interrupted by a stop: the journal keeps
        those for the next start)."""
        with self._lock:
            ended, self._ended = self._ended, []
        if stopping:
            return
        for key, ok in ended:
            if self._session.work_finished(key, now):
                self._journal.clear()
                self._metrics.work_finished.labels("ok" if ok else "error").inc()
                self._metrics.work_in_progress.set(0)
                log.info("work %s: the turn %s; reporting idle", key, "ended" if ok else "failed")


def mcp_report(session: ControllerSession, runner: object) -> dict[str, Any]:
    """v5+ heartbeats tell the truth about the model's MCP tools (the controller withholds work the agent
    cannot do); nothing until a Claude client has reported them, and nothing to older controllers."""
    controller = session.controller
    servers = dict(getattr(runner, "mcp_status", None) or {})
    callable_ = tuple(getattr(runner, "mcp_callable", ()) or ())
    if (controller is None or controller.wire_version in ("v1", "v2", "v3", "v4") or not servers
            or "pending" in servers.values()):
        return {}
    return {"mcpConnected": all(s == "connected" for s in servers.values()),
            "availableFunctions": list(callable_)}


def heartbeat_call(client: ControllerClient, call: Call, payload: Mapping[str, Any], extra: Mapping[str, Any],
                   channel: AiwmChannel | None, session: ControllerSession,
                   busy: bool) -> Callable[[float], HeartbeatResult]:
    """The heartbeat for `call`: over the portal socket when its dialect has socket heartbeats (v6), falling
    back to REST when the socket fails or refuses; REST otherwise."""
    def over_rest(deadline: float) -> HeartbeatResult:
        return client.heartbeat(call.token, call.status, payload, deadline, dict(extra))

    if channel is None or not channel.socket_heartbeats:
        return over_rest
    status, body = call.status, {**extra, "metrics": payload}
    if status == "busy" and session.sleeping and session.work is None and not busy:
        status = "sleep"  # the socket dialect (v6) knows it
        body["sleep"] = {"reason": session.sleep_reason, "since": iso(session.sleep_since)}
    body["status"] = status

    def over_socket(deadline: float) -> HeartbeatResult:
        try:
            ack = channel.socket_heartbeat(body, min(SOCKET_HEARTBEAT_TIMEOUT, deadline - time.monotonic()))
            if isinstance(ack, Mapping) and ack.get("success", True) is not False:
                return HeartbeatResult(ack, "socket")
            log.debug("socket heartbeat refused (%s); using REST", str(ack)[:100])
        except Exception as exc:
            log.debug("socket heartbeat failed (%s); using REST", type(exc).__name__)
        return over_rest(deadline)

    return over_socket


class McpRewriter:
    """Points the controller's own HTTP MCP servers (its `Builtin` entry, or its origin) at the loopback
    proxy, which adds the current agent token itself (the JWT never appears in the CLI's configuration).
    Third-party servers keep their own URL and headers: the proxy would send them the JWT. The proxy starts on
    first use."""

    def __init__(self, token: Callable[[], str], verify: bool | str, controller_url: str = "") -> None:
        self._token = token
        self._verify = verify
        self._controller_url = controller_url
        self.proxy: McpProxy | None = None
        self._proxy_token = ""
        self._generation = 0

    def apply(self, config: AgentConfig, controller: ControllerConfig | None) -> AgentConfig:
        servers = config.claude.mcp_servers
        if controller is None or not config.claude.mcp_proxy or not servers:
            return config
        if self.proxy is None:
            from aiwm_agentd.realtime.mcp_proxy import McpProxy

            self.proxy = McpProxy(self._token, verify=self._verify)
            log.info("MCP servers are reached through the loopback proxy %s", self.proxy.url)
        if controller.token != self._proxy_token:
            self._proxy_token, self._generation = controller.token, self._generation + 1
        own = {name: spec for name, spec in servers.items()
               if isinstance(spec, Mapping) and is_controller_server(name, spec, self._controller_url)}
        rewritten = self.proxy.rewrite(own, self._generation) if own else {}
        merged = {name: rewritten.get(name, spec) for name, spec in servers.items()}
        claude = replace(config.claude, mcp_servers=merged)
        return replace(config, claude=claude)

    @property
    def permission_problem(self) -> str:
        return self.proxy.permission_problem if self.proxy else ""

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
