"""The AIWM portal's Socket.IO dialects as pure data: where to connect, and which messages to answer.

Controllers moved the socket between versions (spec/aiwm-realtime.md section 1): v4 serves namespace `/ws`,
v5 `/ws/chat`, the v6 gateway `/` on its own path. `socket_target` picks the defaults from the wire version
the connect answer had and lets the operator (or the controller's settings) override each part.
`PortalFilter` applies the spec's answer rules (section 2) so that the channel answers a person once, and
never its own echo, a `skipAgent` message, a non-text message or a duplicate delivery.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SEEN_IDS = 200  # message ids remembered for dedupe (the spec: "keep the last ~200")
TEXT_TYPES = ("message", "text")
DEFAULT_PATH = "/socket.io"


@dataclass(frozen=True)
class SocketTarget:
    """Where and as whom the channel connects. `token` is the agent JWT (never logged)."""

    url: str  # origin: scheme://host:port
    namespace: str
    path: str
    token: str
    agent_id: str
    dialect: str  # "v4" | "v5" | "v6": what the namespace says about the server's events

    def describe(self) -> str:
        return f"{self.url}{self.path} namespace {self.namespace} ({self.dialect})"


def default_namespace(wire_version: str) -> str:
    """v4 (and older controllers, which had no portal socket yet) `/ws`; v5 and later `/ws/chat`."""
    return "/ws" if wire_version in ("v1", "v2", "v3", "v4") else "/ws/chat"


def dialect_of(namespace: str, wire_version: str) -> str:
    if namespace in ("/", ""):
        return "v6"
    if namespace == "/ws":
        return "v4"
    return "v6" if wire_version == "v6" else "v5"


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL; ws(s) is spelled http(s), which is what python-socketio takes."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def socket_target(base_url: str, token: str, agent_id: str, wire_version: str, ws_url: str = "",
                  namespace: str = "", path: str = "") -> SocketTarget:
    """The socket to open: configured parts win, the rest follows the controller's origin and version."""
    ns = namespace or default_namespace(wire_version)
    if not ns.startswith("/"):
        ns = "/" + ns
    socket_path = path or DEFAULT_PATH
    if not socket_path.startswith("/"):
        socket_path = "/" + socket_path
    return SocketTarget(url=origin_of(ws_url or base_url), namespace=ns, path=socket_path, token=token,
                        agent_id=agent_id, dialect=dialect_of(ns, wire_version))


@dataclass(frozen=True)
class PortalMessage:
    """A person's message that the agent should answer."""

    message_id: str
    conversation_id: str
    text: str
    platform: str  # v5+: where the person wrote ('portal', 'discord', ...); "" when not said
    work_id: str


def _agent_of(value: Any) -> str:
    return str(value.get("agentId") or "") if isinstance(value, Mapping) else ""


class PortalFilter:
    """Which `message:new` payloads get an answer (spec section 2). Not thread-safe: the channel's loop only."""

    def __init__(self, agent_id: str, remember: int = SEEN_IDS) -> None:
        self.agent_id = agent_id
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.skipped: dict[str, int] = {}

    def accept(self, payload: Any, local_platforms: frozenset[str] = frozenset()) -> PortalMessage | None:
        """The message to answer, or None (and why is counted in `skipped`).

        `local_platforms`: the bots this daemon runs itself. A v5+ controller relays their messages through
        the socket too; those are answered by the bot, so the person never gets two answers."""
        reason = self._reject_reason(payload)
        if not reason and str(payload.get("platform") or "") in local_platforms:
            reason = "answered_by_bot"
        if reason:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return None
        assert isinstance(payload, Mapping)
        return PortalMessage(
            message_id=str(payload.get("_id") or ""),
            conversation_id=str(payload["conversationId"]),
            text=str(payload.get("content") or ""),
            platform=str(payload.get("platform") or ""),
            work_id=str(payload.get("workId") or ""),
        )

    def _reject_reason(self, payload: Any) -> str:
        if not isinstance(payload, Mapping) or not payload.get("conversationId"):
            return "malformed"
        message_id = str(payload.get("_id") or "")
        if message_id:
            if message_id in self._seen:
                return "duplicate"
            self._seen[message_id] = None
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        if self.agent_id and self.agent_id in (_agent_of(payload.get("owner")), _agent_of(payload.get("createdBy"))):
            return "own_echo"
        if payload.get("role", "user") != "user":
            return "not_user"
        if payload.get("skipAgent") is True:
            return "skip_agent"
        kind = payload.get("type")
        if kind is not None and kind not in TEXT_TYPES:
            return "not_text"
        if not isinstance(payload.get("content"), str) or not payload["content"].strip():
            return "empty"
        return ""
