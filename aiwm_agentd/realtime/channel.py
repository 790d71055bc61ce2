"""The AIWM portal channel: people chat with the agent from the AIWM portal over Socket.IO.

A `PlatformWorker` like the Discord and Telegram bots, so a portal message gets the same runner FIFO,
sessions, typing and commands (`/new` `/status` `/stop` `/reload`). What it relies on from `PlatformWorker`:
`handle_message`, `send_text`, `_monitor`, `_set_health`, `_spawn`, `_wake_up`, and the `_config` /
`_restart_requested` pair that `_main` reads (the channel fills `_config` with a synthetic `PlatformConfig`
whose `token`/`api_base_url`/`gateway_url` are the socket's JWT, origin and namespace+path, so a new token
or socket address restarts the session exactly like a new bot token restarts a bot).

The worker never calls the controller: where to connect and with which token come from the supervisor
(`RealtimeControl.socket_target()`), re-read on every `apply()` (the supervisor applies after every connect,
token refreshes included, so the socket is reopened with each new JWT). A server that accepts and then at
once disconnects us ("io server disconnect") refused the token: the channel tells the supervisor once per
token (`socket_token_refused`), which reconnects to the controller, and the new token reopens the socket.
Any other loss ends the session and PlatformWorker restarts it with backoff: a visible degradation in
`/health`, never a crash, and the REST heartbeats and the bots go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig, PlatformConfig
from aiwm_agentd.platforms.base import ConfigurationError, PlatformWorker
from aiwm_agentd.platforms.commands import parse_command
from aiwm_agentd.realtime.portal import PortalFilter, SocketTarget
from aiwm_agentd.workers import ConversationKey, DaemonControl, HealthState, Runner

if TYPE_CHECKING:
    import socketio

CONNECT_TIMEOUT = 10.0
ACK_TIMEOUT = 10.0
PERMISSION_HINT = ("give the agent the organization.editor role on the controller (the default viewer role "
                   "cannot send messages)")


class RealtimeControl(DaemonControl, Protocol):
    """What the channel needs from the supervisor beyond DaemonControl."""

    def socket_target(self) -> SocketTarget | None:
        """Where to connect now, or None while the channel should stay closed (no token, disabled)."""

    def socket_token_refused(self, token: str) -> None:
        """The socket server refused `token`: connect to the controller again for a fresh one."""

    def agent_command(self, command: str, reason: str) -> str:
        """`sleep` / `wake` from an operator: returns what the agent now reports."""

    def health_snapshot(self) -> dict[str, Any]:
        """The /health document (no secrets), for `inspect`."""


class TokenRefused(Exception):
    """The socket server accepted the connection and dropped it at once: our JWT is not accepted."""


class _PortalResponder:
    """Answers in the portal conversation the message came from."""

    def __init__(self, channel: AiwmChannel, client: socketio.AsyncClient, namespace: str,
                 conversation_id: str, work_id: str = "") -> None:
        self._channel = channel
        self._client = client
        self._namespace = namespace
        self._conversation_id = conversation_id
        self._work_id = work_id

    async def send(self, text: str, kind: str = "message") -> None:
        payload: dict[str, Any] = {"conversationId": self._conversation_id, "role": "assistant",
                                   "content": text, "type": kind}
        if self._work_id:
            payload["workId"] = self._work_id
        ack = await self._client.call("message:send", payload, namespace=self._namespace, timeout=ACK_TIMEOUT)
        self._channel.sent += 1
        # The answer ends the typing shown for it (the typing loop may run on another message's responder).
        await self._emit_typing(False)
        self._channel.check_ack(ack)

    async def typing(self) -> None:
        await self._emit_typing(True)

    async def _emit_typing(self, on: bool) -> None:
        await self._client.emit("message:typing", {"conversationId": self._conversation_id, "isTyping": on},
                                namespace=self._namespace)


class AiwmChannel(PlatformWorker):
    """The `aiwm` worker: the portal's Socket.IO chat and operator commands."""

    name = "aiwm"
    message_limit = 16000  # the portal has no small limit; long answers are still split sanely
    typing_interval = 4.0
    backoff_cap = 30.0

    def __init__(self, config: AgentConfig, runner: Runner, control: RealtimeControl) -> None:
        super().__init__(config, runner, control)
        self._rt_control = control
        self._target: SocketTarget | None = None
        self._config = self._channel_config(config)
        self._filter = PortalFilter(self._target.agent_id if self._target else config.agent_id)
        self._refused_token = ""
        self._permission_logged = False
        self.received = 0
        self.answered = 0
        self.sent = 0
        self.last_error = ""
        self._open: tuple[Any, str] | None = None  # (client, namespace) while the socket is open

    def _is_admin(self, author_id: str) -> bool:
        """Portal users are signed in to the controller, which decides what each may do with this agent (its
        own roles); the daemon does not second-guess that with a list of its own."""
        return True

    # -- configuration --------------------------------------------------------------------------------

    def _channel_config(self, config: AgentConfig) -> PlatformConfig:
        """A PlatformConfig standing for the socket: connection fields change exactly when we must reopen."""
        target = self._rt_control.socket_target() if config.source == "controller" else None
        self._target = target
        if target is not None:
            logs.register_secret(target.token)
        return PlatformConfig(
            platform=self.name, enabled=target is not None, token=target.token if target else "",
            target_ids=(), bot_id=target.agent_id if target else "", require_mentions=False,
            allow_direct_messages=False, api_base_url=target.url if target else "",
            gateway_url=f"{target.namespace} {target.path}" if target else "")

    def apply(self, config: AgentConfig) -> None:
        old = self._config
        self._agent = config
        self._config = self._channel_config(config)
        if self._target is not None:
            self._filter.agent_id = self._target.agent_id or config.agent_id
        if (old.enabled, old.token, old.api_base_url, old.gateway_url) != (
                self._config.enabled, self._config.token, self._config.api_base_url, self._config.gateway_url):
            if self._config.enabled and old.enabled:
                self.log.info("aiwm: socket token or address changed: reopening the portal socket")
            self._restart_requested = True
            self._wake_up()

    def _local_platforms(self) -> frozenset[str]:
        return frozenset(p for p in ("discord", "telegram") if self._agent.platform(p).enabled)

    # -- the session --------------------------------------------------------------------------------------

    async def _session(self, config: PlatformConfig) -> None:
        import socketio

        target = self._target
        if target is None:
            raise ConfigurationError("no socket target")
        client = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False,
                                      handle_sigint=False)
        ns = target.namespace
        dropped: list[str] = []
        connected_at = [0.0]

        async def on_message(payload: Any) -> None:
            self._on_message(client, ns, payload)

        async def on_command(payload: Any) -> Any:
            return await self._on_command(client, ns, payload)

        async def on_disconnect(reason: Any = None) -> None:
            dropped.append(str(reason or "disconnected"))

        async def on_error(payload: Any) -> None:
            self.check_ack({"success": False, "error": payload.get("error") if isinstance(payload, Mapping)
                            else payload})

        client.on("message:new", on_message, namespace=ns)
        client.on("agent:command", on_command, namespace=ns)
        client.on("message:error", on_error, namespace=ns)
        client.on("disconnect", on_disconnect, namespace=ns)
        self.log.info("aiwm: opening the portal socket %s", target.describe())
        try:
            await client.connect(target.url, auth={"token": target.token}, namespaces=[ns],
                                 socketio_path=target.path, transports=["websocket"],
                                 wait_timeout=CONNECT_TIMEOUT)
            connected_at[0] = time.monotonic()
            self._open = (client, ns)
            self.log.info("aiwm: portal socket open (%s)", target.dialect)

            def probe() -> tuple[HealthState, str]:
                if dropped or not client.connected:
                    reason = dropped[0] if dropped else "connection lost"
                    if reason == client.reason.SERVER_DISCONNECT and time.monotonic() - connected_at[0] < 5.0:
                        raise TokenRefused("the socket server accepted and at once disconnected us")
                    raise ConnectionError(f"portal socket closed ({reason})")
                return "ok", f"portal socket open ({target.describe()})"

            await self._monitor(probe)
        except TokenRefused:
            if self._refused_token != target.token:
                self._refused_token = target.token
                self.log.warning("aiwm: the socket server refused the agent token; reconnecting to the "
                                 "controller for a fresh one")
                self._rt_control.socket_token_refused(target.token)
            raise
        finally:
            self._open = None
            await self._bounded("closing the portal socket", client.disconnect())

    # -- heartbeats over the socket (v6) ------------------------------------------------------------------

    @property
    def socket_heartbeats(self) -> bool:
        """Whether heartbeats can go over the socket now (a v6 gateway with the socket open)."""
        return self._open is not None and self._target is not None and self._target.dialect == "v6"

    def socket_heartbeat(self, body: Mapping[str, Any], timeout: float) -> Any:
        """`agent:heartbeat` with an ack (blocking; from the supervisor's call thread). Raises when the socket
        is not open or the ack does not come within `timeout`: the caller falls back to REST."""
        opened = self._open
        if opened is None:
            raise ConnectionError("the portal socket is not open")
        client, ns = opened
        future = self._loop_thread.submit(client.call("agent:heartbeat", dict(body), namespace=ns,
                                                      timeout=max(0.1, timeout)))
        return future.result(timeout + 0.5)

    # -- inbound ------------------------------------------------------------------------------------------

    def _on_message(self, client: socketio.AsyncClient, ns: str, payload: Any) -> None:
        self.received += 1
        message = self._filter.accept(payload, self._local_platforms())
        if message is None:
            return
        self.answered += 1
        key = ConversationKey("aiwm", message.conversation_id)
        responder = _PortalResponder(self, client, ns, message.conversation_id, message.work_id)
        command = parse_command(message.text)
        self.handle_message(key, message.text, command, responder)

    async def _on_command(self, client: socketio.AsyncClient, ns: str, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, Mapping):
            return {"success": False, "error": "expected an object"}
        kind = str(payload.get("type") or "")
        conversation = str(payload.get("conversationId") or "")
        reason = str(payload.get("reason") or "")
        self.log.info("aiwm: operator command %r%s", kind, f" ({reason[:100]})" if reason else "")
        if kind == "inspect":
            state = json.dumps(self._rt_control.health_snapshot(), default=str, sort_keys=True)
            if conversation:
                responder = _PortalResponder(self, client, ns, conversation)
                self._spawn(responder.send(logs.mask(state), kind="system"))
            return {"success": True}
        if kind == "reload":
            self._rt_control.request_reload()
            return {"success": True}
        if kind in ("sleep", "wake"):
            return {"success": True, "status": self._rt_control.agent_command(kind, reason)}
        if kind == "stop":
            stopped = bool(conversation) and self._runner.interrupt(ConversationKey("aiwm", conversation))
            return {"success": True, "stopped": stopped}
        return {"success": False, "error": f"unknown command {kind!r}"}

    # -- acks ---------------------------------------------------------------------------------------------

    def check_ack(self, ack: Any) -> None:
        """A refused `message:send` (viewer role): reported once as a configuration problem, not retried."""
        if not isinstance(ack, Mapping) or ack.get("success", True) is not False:
            return
        error = str(ack.get("error") or ack.get("message") or "refused")[:200]
        self.last_error = error
        if "permission" in error.lower():
            if not self._permission_logged:
                self._permission_logged = True
                self.log.error("aiwm: the controller refused the agent's portal message (%s): %s",
                               error, PERMISSION_HINT)
        else:
            self.log.warning("aiwm: the controller refused a portal message: %s", error)

    def _set_health(self, state: HealthState, detail: str, **extra: Any) -> None:
        target = self._target
        extra.update(received=self.received, answered=self.answered, sent=self.sent,
                     skipped=dict(self._filter.skipped) if hasattr(self, "_filter") else {},
                     dialect=target.dialect if target else "", namespace=target.namespace if target else "")
        if getattr(self, "_permission_logged", False):
            extra["problem"] = f"{self.last_error}: {PERMISSION_HINT}"
        super()._set_health(state, detail, **extra)
