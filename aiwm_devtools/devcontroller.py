"""An embedded, in-memory, AIWM-compatible controller for development and tests (loopback only).

It speaks every wire version in `/work/shared/spec/controller-versions.md` (v1 = the integration guide,
v2-v5 = what controllers in the field send), with their status codes, error bodies and check order:

* connect: body validation (400) -> id format (500) -> unknown (404) -> suspended (401, before the
  secret) -> no secret configured (401) -> bcrypt mismatch (401 "Invalid credentials");
* heartbeat/disconnect/config: bearer token (401) -> body validation (400) -> id format (500) ->
  unknown (404) -> v5 only: suspended (400).

Validation comes first because real controllers are NestJS apps: the global ValidationPipe runs before the
route handler that looks the agent up. Only the bcrypt hash of the secret is used for verification; the
plaintext is kept in `secret` solely so that the CLI can print the env lines an agent needs.

Tokens are HS256 JWTs (`sub`, `iat`, `exp`) signed with a per-instance key; `revoke_tokens()` rotates that
key, which invalidates every token issued before. Like the real thing, two connects in the same second get
the same token.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import bcrypt

from aiwm_devtools.workqueue import WorkQueue, tool_definitions

LOG = logging.getLogger("aiwm_agentd.devcontroller")

WIRE_VERSIONS = ("v1", "v2", "v3", "v4", "v5")
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BCRYPT_ROUNDS = 10
NO_INSTRUCTION = "No instruction configured for this agent."
RUN_DIR = Path("./.run")
SPAWN_HEALTH_ADDR = "127.0.0.1:9464"

REGENERATE = ["credentials", "regenerate"]
_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
_CORRELATION_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def _new_object_id() -> str:
    return secrets.token_hex(12)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _check_loopback(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"dev controller binds to loopback IP addresses only, got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"dev controller binds to loopback addresses only, got {host!r}")


@dataclass(frozen=True)
class InjectedResponse:
    """What a `fault_hook` wants answered instead of the real handler (see tests/fakes)."""

    status: int | None  # None: no fake answer, only `delay`, then the real handler runs
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


# Called with (method, path, correlation id) before routing; None = no fault for this request.
FaultHook = Callable[[str, str, str], InjectedResponse | None]


class _ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class _Agent:
    agent_id: str
    name: str
    org_id: str
    secret_hash: bytes | None
    suspended: bool = False
    deleted: bool = False
    instruction_id: str = ""
    system_prompt: str | None = None
    guidelines: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    tools: list[Any] = field(default_factory=list)
    allowed_functions: list[str] = field(default_factory=list)
    channels: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    framework: str = "claude-agent-sdk"
    mcp: bool = True


class DevController:
    """The controller. Every admin method and observation is thread-safe."""

    def __init__(
        self,
        version: str = "v5",
        agent_id: str | None = None,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl: float = 86400,
        agent_name: str = "Dev Agent",
        *,
        bcrypt_rounds: int = DEFAULT_BCRYPT_ROUNDS,
        admin_token: str | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        _check_loopback(host)
        if version not in WIRE_VERSIONS:
            raise ValueError(f"unknown wire version {version!r}; expected one of {', '.join(WIRE_VERSIONS)}")
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        # bcrypt_rounds: 10 like the real controller; tests pass 4 (bcrypt's minimum) so that each connect
        # costs ~1 ms instead of ~70 ms. Verification cost follows the rounds stored in the hash.
        if not 4 <= bcrypt_rounds <= 31:
            raise ValueError("bcrypt_rounds must be between 4 and 31")
        self._lock = threading.RLock()
        self._host = host
        self._port = port
        self._token_ttl = float(token_ttl)
        self._bcrypt_rounds = bcrypt_rounds
        self._version = version
        self._signing_key = secrets.token_bytes(32)
        self.admin_token: str = admin_token or secrets.token_hex(24)
        self.fault_hook: FaultHook | None = fault_hook
        plain = secret if secret is not None else secrets.token_hex(32)
        self._secret = plain
        self._agent = _Agent(
            agent_id=agent_id if agent_id is not None else _new_object_id(),
            name=agent_name,
            org_id=_new_object_id(),
            secret_hash=self._hash(plain),
        )
        self._heartbeat_replies: list[dict[str, Any]] = []
        self._heartbeats: list[dict[str, Any]] = []
        self._connects = 0
        self._disconnects: list[str] = []
        self._requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.work = WorkQueue()  # assigned work: offered to idle v5 heartbeats, moved by the MCP tools
        self.portal: Any = None  # a portal.PortalServer when the portal socket runs (admin routes reach it)
        # The live upstream controller (hydra-services HEAD) answers MCP notifications with HTTP 400 "id should
        # not be empty", which makes the Claude CLI mark the server failed: True plays that controller.
        self.mcp_rejects_notifications = False

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> DevController:
        """Bind (to the same port again after a `stop()`) and serve in a daemon thread."""
        with self._lock:
            if self._server is not None:
                return self
            self._stopping = threading.Event()
            server_class = _Server6 if ":" in self._host else _Server
            server = server_class((self._host, self._port), _Handler)
            server.controller = self
            server.stopping = self._stopping
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="devcontroller", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (new connections are refused); in-memory state is kept."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._stopping.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> DevController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._server is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    @property
    def agent_name(self) -> str:
        with self._lock:
            return self._agent.name

    @property
    def secret(self) -> str:
        """The plaintext of the current secret ("" after `clear_secret()`); never used to verify."""
        with self._lock:
            return self._secret

    @property
    def version(self) -> str:
        with self._lock:
            return self._version

    @property
    def signing_key(self) -> bytes:
        with self._lock:
            return self._signing_key

    @property
    def token_ttl(self) -> float:
        return self._token_ttl

    def env_lines(self) -> list[str]:
        """What an agent needs in its env file to connect to this controller."""
        return [
            "AIWM_ENABLED=true",
            f"AIWM_BASE_URL={self.url}",
            f"AIWM_AGENT_ID={self.agent_id}",
            f"AIWM_AGENT_SECRET={self.secret}",
            f"AGENT_NAME={self.agent_name}",
        ]

    # -------------------------------------------------------------------------------------- admin state

    def suspend(self) -> None:
        with self._lock:
            self._agent.suspended = True

    def unsuspend(self) -> None:
        with self._lock:
            self._agent.suspended = False

    def delete(self) -> None:
        """The agent becomes unknown: connect, heartbeat, config and disconnect answer 404."""
        with self._lock:
            self._agent.deleted = True

    def undelete(self) -> None:
        with self._lock:
            self._agent.deleted = False

    def clear_secret(self) -> None:
        with self._lock:
            self._agent.secret_hash = None
            self._secret = ""

    def regenerate_secret(self) -> str:
        """A new random 32-byte hex secret; the old one stops working. Issued tokens stay valid."""
        plain = secrets.token_hex(32)
        hashed = self._hash(plain)
        with self._lock:
            self._agent.secret_hash = hashed
            self._secret = plain
        return plain

    def revoke_tokens(self) -> None:
        """Every token issued so far becomes invalid (heartbeat -> 401)."""
        with self._lock:
            self._signing_key = secrets.token_bytes(32)

    def set_instruction(self, system_prompt: str | None, guidelines: list[str] | None = None) -> None:
        """None = no instruction configured (v4+ then send the "No instruction configured" object)."""
        with self._lock:
            self._agent.system_prompt = system_prompt
            self._agent.guidelines = list(guidelines or [])
            self._agent.instruction_id = _new_object_id() if system_prompt is not None else ""

    def set_settings(self, settings: Mapping[str, Any]) -> None:
        with self._lock:
            self._agent.settings = copy.deepcopy(dict(settings))

    def set_tools(self, tools: list[Any]) -> None:
        """Tool names (expanded into the guide's tool objects) or ready-made tool objects."""
        with self._lock:
            self._agent.tools = copy.deepcopy(list(tools))

    def set_allowed_functions(self, names: list[str]) -> None:
        """v5 `allowedFunctions`, e.g. `mcp__Builtin__SearchMemory`; empty means all allowed."""
        with self._lock:
            self._agent.allowed_functions = list(names)

    def set_channels(self, channels: list[Mapping[str, Any]]) -> None:
        with self._lock:
            self._agent.channels = [copy.deepcopy(dict(c)) for c in channels]

    def set_mcp(self, enabled: bool) -> None:
        """Whether connect answers name the Builtin MCP server (v2 `mcpEndpoint`, v3+ `mcpServers`)."""
        with self._lock:
            self._agent.mcp = enabled

    def set_deployment(self, deployment: Mapping[str, Any] | None) -> None:
        with self._lock:
            self._agent.deployment = copy.deepcopy(dict(deployment)) if deployment is not None else None

    def set_framework(self, framework: str) -> None:
        with self._lock:
            self._agent.framework = framework

    def set_agent_name(self, name: str) -> None:
        with self._lock:
            self._agent.name = name

    def set_version(self, version: str) -> None:
        if version not in WIRE_VERSIONS:
            raise ValueError(f"unknown wire version {version!r}")
        with self._lock:
            self._version = version

    def push_heartbeat_reply(self, fields: Mapping[str, Any]) -> None:
        """v5: extra fields (`work`, `systemMessage`, `systemTask`) for the next accepted idle heartbeat."""
        with self._lock:
            self._heartbeat_replies.append(copy.deepcopy(dict(fields)))

    # ------------------------------------------------------------------------------------- observations

    @property
    def heartbeats(self) -> list[dict[str, Any]]:
        """Accepted heartbeats: {status, metrics, time, correlation_id, path}."""
        with self._lock:
            return copy.deepcopy(self._heartbeats)

    @property
    def connects(self) -> int:
        with self._lock:
            return self._connects

    @property
    def disconnects(self) -> list[str]:
        with self._lock:
            return list(self._disconnects)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request answered: {method, path, status, correlation_id, time, injected}."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def suspended(self) -> bool:
        with self._lock:
            return self._agent.suspended

    # ------------------------------------------------------------------------------------------- tokens

    def issue_token(self, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"sub": self.agent_id, "iat": iat, "exp": _number(iat + self._token_ttl)}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = hmac.new(self.signing_key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def verify_token(self, token: str, now: float | None = None) -> dict[str, Any] | None:
        """The claims of a valid, unexpired token signed with the current key; None otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = hmac.new(self.signing_key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256)
        try:
            signature = _b64url_decode(parts[2])
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(signature, expected.digest()):
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return None
        if (time.time() if now is None else now) >= exp:
            return None
        return claims

    # ------------------------------------------------------------------------------------------ helpers

    def _hash(self, plain: str) -> bytes:
        return bcrypt.hashpw(plain.encode("utf-8"), bcrypt.gensalt(self._bcrypt_rounds))

    def _record_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def _tool_objects(self, tools: list[Any]) -> list[Any]:
        result: list[Any] = []
        for tool in tools:
            if isinstance(tool, str):
                result.append(
                    {
                        "_id": hashlib.sha256(tool.encode()).hexdigest()[:24],
                        "name": tool,
                        "type": "builtin",
                        "description": f"{tool} (dev controller)",
                        "category": "productivity",
                        "status": "active",
                        "schema": {"inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}},
                    }
                )
            else:
                result.append(copy.deepcopy(tool))
        return result

    def _merged_instruction(self, agent: _Agent) -> str:
        if agent.system_prompt is None:
            return NO_INSTRUCTION
        if not agent.guidelines:
            return agent.system_prompt
        lines = "\n".join(f"{n}. {g}" for n, g in enumerate(agent.guidelines, start=1))
        return f"{agent.system_prompt}\n\n## Guidelines\n{lines}"

    def _config_body(self, token: str, expires_in: float) -> dict[str, Any]:
        """The connect (or GET config) answer in the selected wire version's exact shape."""
        with self._lock:
            version = self._version
            agent = copy.deepcopy(self._agent)
        tools = self._tool_objects(agent.tools)
        if version == "v1":
            return {
                "token": token,
                "instruction": self._merged_instruction(agent),
                "tools": tools,
                "agent": {"id": agent.agent_id, "name": agent.name, "orgId": agent.org_id},
                "settings": agent.settings,
            }
        body: dict[str, Any] = {
            "accessToken": token,
            "expiresIn": _number(expires_in),
            "refreshToken": None,
            "refreshExpiresIn": 0,
            "tokenType": "bearer",
        }
        mcp_url = f"{self.url}/mcp"
        if version == "v2":
            if agent.mcp:
                body["mcpEndpoint"] = mcp_url
            body["instruction"] = self._merged_instruction(agent)
            body["tools"] = tools
            body["settings"] = agent.settings
            return body
        if agent.mcp:
            body["mcpServers"] = {
                "Builtin": {"type": "http", "url": mcp_url, "headers": {"Authorization": f"Bearer {token}"}}
            }
        if version == "v3":
            body["instruction"] = self._merged_instruction(agent)
        elif version == "v4":
            if agent.system_prompt is None:
                body["instruction"] = {"id": "", "systemPrompt": NO_INSTRUCTION, "guidelines": []}
            else:
                body["instruction"] = {
                    "id": agent.instruction_id,
                    "systemPrompt": agent.system_prompt,
                    "guidelines": list(agent.guidelines),
                }
        else:
            body["instruction"] = {
                "id": agent.instruction_id,
                "systemPrompt": NO_INSTRUCTION if agent.system_prompt is None else agent.system_prompt,
            }
        body["settings"] = agent.settings
        if agent.deployment is not None:
            body["deployment"] = agent.deployment
        if version == "v5":
            body["id"] = agent.agent_id
            body["name"] = agent.name
            body["tools"] = tools
            body["allowedFunctions"] = list(agent.allowed_functions)
            body["framework"] = agent.framework
            body["channels"] = agent.channels
        return body

    def _env_config(self, secret: str) -> str:
        with self._lock:
            settings = copy.deepcopy(self._agent.settings)
        lines = [
            "# ===== AIWM Integration =====",
            "AIWM_ENABLED=true",
            f"AIWM_BASE_URL={self.url}",
            f"AIWM_AGENT_ID={self.agent_id}",
            f"AIWM_AGENT_SECRET={secret}",
            "",
            "# Agent info",
            f"AGENT_NAME={self.agent_name}",
        ]
        mapping = [
            ("CLAUDE_MODEL", "claudeModel"),
            ("CLAUDE_MAX_TURNS", "maxTurns"),
            ("CLAUDE_PERMISSION_MODE", "permissionMode"),
            ("CLAUDE_RESUME", "resume"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "claudeOAuthToken"),
        ]
        extra = [f"{env}={_env_value(settings[key])}" for env, key in mapping if key in settings]
        for platform, env_token, env_ids, ids_key in (
            ("discord", "DISCORD_TOKEN", "DISCORD_CHANNEL_ID", "channelIds"),
            ("telegram", "TELEGRAM_BOT_TOKEN", "TELEGRAM_GROUP_ID", "groupIds"),
        ):
            nested = settings.get(platform)
            if isinstance(nested, dict):
                if nested.get("token"):
                    extra.append(f"{env_token}={nested['token']}")
                if nested.get(ids_key):
                    extra.append(f"{env_ids}={_env_value(nested[ids_key])}")
        if extra:
            lines += ["", "# From agent settings", *extra]
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------------------------------- handlers

    def _check_id(self, agent_id: str) -> _Agent:
        """Id format (500, a cast error on real controllers) then existence (404)."""
        if not _HEX24.match(agent_id):
            raise _ApiError(500, "Internal server error")
        with self._lock:
            agent = self._agent
            if agent.deleted or agent.agent_id != agent_id:
                raise _ApiError(404, f"Agent with ID {agent_id} not found")
            return agent

    def _authenticate(self, authorization: str | None) -> str:
        """The token's `sub`, or 401."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise _ApiError(401, "Unauthorized")
        claims = self.verify_token(authorization[7:].strip())
        if claims is None or not isinstance(claims.get("sub"), str):
            raise _ApiError(401, "Unauthorized")
        sub: str = claims["sub"]
        return sub

    def handle_connect(self, agent_id: str, body: Any) -> tuple[int, Any]:
        secret = body.get("secret") if isinstance(body, dict) else None
        if not isinstance(secret, str):
            errors = ["secret must be a string"]
            if secret is None:
                errors.insert(0, "secret should not be empty")
            raise _ApiError(400, "Validation failed", errors)
        if secret == "":
            raise _ApiError(400, "Validation failed", ["secret should not be empty"])
        agent = self._check_id(agent_id)
        with self._lock:
            suspended, secret_hash = agent.suspended, agent.secret_hash
        if suspended:
            raise _ApiError(401, "Agent is suspended")
        if secret_hash is None:
            raise _ApiError(401, "Agent has no secret configured")
        if not bcrypt.checkpw(secret.encode("utf-8"), secret_hash):
            raise _ApiError(401, "Invalid credentials")
        token = self.issue_token()
        with self._lock:
            self._connects += 1
        return self._post_status(), self._config_body(token, self._token_ttl)

    def handle_heartbeat(
        self, agent_id: str | None, body: Any, authorization: str | None, correlation_id: str, path: str
    ) -> tuple[int, Any]:
        sub = self._authenticate(authorization)
        version = self.version
        if agent_id is None:  # v5 token-identified heartbeat
            agent_id = sub
        elif agent_id != sub:
            raise _ApiError(401, "Unauthorized")
        if not isinstance(body, dict):
            body = {}
        allowed = ("idle", "busy") if version == "v5" else ("online", "busy", "idle")
        errors: list[str] = []
        status = body.get("status")
        if status not in allowed:
            errors.append(f"status must be one of the following values: {', '.join(allowed)}")
        metrics = body.get("metrics")
        if metrics is not None and not isinstance(metrics, dict):
            errors.append("metrics must be an object")
        if errors:
            raise _ApiError(400, "Validation failed", errors)
        agent = self._check_id(agent_id)
        reply: dict[str, Any] = {"success": True}
        with self._lock:
            if version == "v5" and agent.suspended:
                raise _ApiError(400, "Agent is suspended. Heartbeat rejected.")
            self._heartbeats.append(
                {
                    "status": status,
                    "metrics": copy.deepcopy(metrics) if metrics is not None else None,
                    "time": time.time(),
                    "correlation_id": correlation_id,
                    "path": path,
                    "mcpConnected": body.get("mcpConnected"),
                    "availableFunctions": copy.deepcopy(body.get("availableFunctions")),
                }
            )
            if version == "v5" and status == "idle" and self._heartbeat_replies:
                reply.update(self._heartbeat_replies.pop(0))
            elif version == "v5" and status == "idle" and self.work.agent_can_work(body):
                reply.update(self.work.next_offer() or {})
        return self._post_status(), reply

    def handle_disconnect(self, agent_id: str, body: Any, authorization: str | None) -> tuple[int, Any]:
        sub = self._authenticate(authorization)
        if sub != agent_id:
            raise _ApiError(401, "Unauthorized")
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and not isinstance(reason, str):
            raise _ApiError(400, "Validation failed", ["reason must be a string"])
        self._check_id(agent_id)
        with self._lock:
            self._disconnects.append(reason or "")
        return self._post_status(), {"success": True}

    def handle_config(self, agent_id: str, authorization: str | None) -> tuple[int, Any]:
        sub = self._authenticate(authorization)
        if sub != agent_id:
            raise _ApiError(401, "Unauthorized")
        self._check_id(agent_id)
        return 200, self._config_body("", 0)

    def handle_regenerate(self, agent_id: str, authorization: str | None) -> tuple[int, Any]:
        given = ""
        if authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            raise _ApiError(401, "Unauthorized")
        self._check_id(agent_id)
        plain = self.regenerate_secret()
        return self._post_status(), {
            "agentId": agent_id,
            "secret": plain,
            "envConfig": self._env_config(plain),
            "installScript": (
                "#!/bin/bash\n# Installation script (placeholder)\nset -euo pipefail\n"
                "install -d -m 0750 /etc/aiwm-agentd\n"
                "echo 'Write the envConfig above to /etc/aiwm-agentd/agent.env (mode 0600), then:'\n"
                "echo 'systemctl enable --now aiwm-agentd'\n"
            ),
        }

    def handle_mcp(self, body: Any, authorization: str | None) -> tuple[int, Any]:
        """A minimal MCP (streamable HTTP, JSON answers) Builtin server with no tools, so that clients
        given `mcpServers.Builtin` find something there. Requires a valid agent token."""
        agent_id = self._authenticate(authorization)
        if isinstance(body, list) or not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            return 400, {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "Invalid Request"},
            }
        if "id" not in body:
            if self.mcp_rejects_notifications:
                return 400, {"statusCode": 400, "message": ["id should not be empty"], "error": "Bad Request"}
            return 202, None  # a notification
        method, request_id = body.get("method"), body.get("id")
        raw_params = body.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        result: dict[str, Any]
        if method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion") or "2025-03-26",
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "Builtin (aiwm dev controller)", "version": "0.0.0"},
            }
        elif method == "tools/list":
            result = {"tools": tool_definitions()}
        elif method == "tools/call":
            ok, text = self.work.call_tool(str(params.get("name") or ""), params.get("arguments"), agent_id)
            result = {"content": [{"type": "text", "text": text}], "isError": not ok}
        elif method == "ping":
            result = {}
        else:
            error = {"code": -32601, "message": f"Method not found: {method}"}
            return 200, {"jsonrpc": "2.0", "id": request_id, "error": error}
        return 200, {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _check_admin(self, authorization: str | None) -> None:
        given = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            raise _ApiError(401, "Unauthorized")

    def handle_dev_work(self, body: Any, authorization: str | None) -> tuple[int, Any]:
        """Admin: `POST /dev/work {title, priorityLevel?}` assigns a work item (offered to the next idle
        heartbeat of a v5 agent)."""
        self._check_admin(authorization)
        if not isinstance(body, dict) or not isinstance(body.get("title"), str) or not body["title"].strip():
            raise _ApiError(400, "Validation failed", ["title must be a non-empty string"])
        priority = body.get("priorityLevel", 2)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 5:
            raise _ApiError(400, "Validation failed", ["priorityLevel must be an integer from 1 to 5"])
        return 201, {"success": True, "workId": self.work.assign(body["title"].strip(), priority)}

    def handle_dev_portal(self, action: str, body: Any, authorization: str | None) -> tuple[int, Any]:
        """Admin: `POST /dev/portal/message {content, conversationId?}` types a portal message;
        `POST /dev/portal/command {type, conversationId?, reason?}` sends an operator command."""
        self._check_admin(authorization)
        portal = self.portal
        if portal is None:
            raise _ApiError(404, "the portal socket is not running")
        body = body if isinstance(body, dict) else {}
        try:
            if action == "message" and isinstance(body.get("content"), str):
                conversation = body.get("conversationId") or None
                return 201, {"success": True, "messageId": portal.post(body["content"], conversation)}
            if action == "command" and isinstance(body.get("type"), str):
                ack = portal.command(body["type"], str(body.get("conversationId") or ""),
                                     str(body.get("reason") or ""))
                return 201, {"success": True, "ack": ack}
        except (RuntimeError, TimeoutError) as exc:
            raise _ApiError(409, str(exc) or "the agent did not answer") from None
        raise _ApiError(400, "Validation failed", ["message needs content; command needs type"])

    def _post_status(self) -> int:
        return 200 if self.version == "v1" else 201

    def error_body(
        self, status: int, message: str, path: str, correlation_id: str, errors: list[str] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"statusCode": status, "message": message}
        if self.version == "v1":
            body["error"] = _reason(status)
        else:
            body["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            body["path"] = path
            body["correlationId"] = correlation_id
        if errors is not None:
            body["errors"] = errors
        return body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    controller: DevController
    stopping: threading.Event


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "aiwm-devcontroller"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged by `_finish`, without headers or bodies

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        controller = self.server.controller
        path = urlsplit(self.path).path
        sent = self.headers.get("x-correlation-id")
        correlation_id = sent if sent and _CORRELATION_RE.match(sent) else str(uuid.uuid4())
        hook = controller.fault_hook
        if hook is not None:
            injected = hook(method, path, correlation_id)
            if injected is not None:
                if injected.delay > 0 and self.server.stopping.wait(injected.delay):
                    self.close_connection = True
                    return  # the controller went down while this request hung
                if injected.status is not None:
                    self._drain_body()
                    # Recorded before answering, so a client that got the answer also sees the record.
                    self._finish(method, path, injected.status, correlation_id, injected=True)
                    self._send(injected.status, injected.body, dict(injected.headers), correlation_id)
                    return
        try:
            status, payload = self._route(controller, method, path, correlation_id)
        except _ApiError as exc:
            status = exc.status
            payload = controller.error_body(exc.status, exc.message, path, correlation_id, exc.errors)
        except Exception:  # pragma: no cover - a bug here must still answer like a controller
            LOG.exception("dev controller handler failed")
            status = 500
            payload = controller.error_body(500, "Internal server error", path, correlation_id, None)
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self._finish(method, path, status, correlation_id, injected=False)
        self._send(status, data, {"Content-Type": "application/json; charset=utf-8"}, correlation_id)

    def _route(self, controller: DevController, method: str, path: str, correlation_id: str) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        auth = self.headers.get("authorization")
        version = controller.version
        if method == "POST" and len(parts) == 3 and parts[0] == "agents":
            agent_id, action = parts[1], parts[2]
            if action == "connect":
                return controller.handle_connect(agent_id, self._json_body())
            if action == "heartbeat":
                body = self._json_body()
                return controller.handle_heartbeat(agent_id, body, auth, correlation_id, path)
            if action == "disconnect":
                return controller.handle_disconnect(agent_id, self._json_body(), auth)
        if method == "POST" and parts == ["agents", "heartbeat"] and version == "v5":
            body = self._json_body()
            return controller.handle_heartbeat(None, body, auth, correlation_id, path)
        if method == "POST" and len(parts) == 4 and parts[0] == "agents" and parts[2:] == REGENERATE:
            self._json_body(optional=True)
            return controller.handle_regenerate(parts[1], auth)
        if method == "GET" and len(parts) == 3 and parts[0] == "agents" and parts[2] == "config" and version != "v1":
            return controller.handle_config(parts[1], auth)
        if method == "POST" and parts == ["dev", "work"]:
            return controller.handle_dev_work(self._json_body(), auth)
        if method == "POST" and parts[:2] == ["dev", "portal"] and len(parts) == 3:
            return controller.handle_dev_portal(parts[2], self._json_body(), auth)
        if parts == ["mcp"] and method == "POST":
            return controller.handle_mcp(self._json_body(), auth)
        if parts == ["mcp"] and method == "GET":
            # Streamable HTTP: a server without a server-initiated SSE stream answers GET with 405.
            controller._authenticate(auth)
            self._drain_body()
            raise _ApiError(405, "Method Not Allowed")
        self._drain_body()
        raise _ApiError(404, f"Cannot {method} {path}")

    def _read_body(self) -> bytes:
        length_text = self.headers.get("content-length")
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self.close_connection = True
            raise _ApiError(400, "Chunked request bodies are not supported")
        try:
            length = int(length_text) if length_text else 0
        except ValueError:
            self.close_connection = True
            raise _ApiError(400, "Invalid Content-Length") from None
        if length < 0:
            self.close_connection = True
            raise _ApiError(400, "Invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # do not read a body we refuse
            raise _ApiError(413, "request entity too large")
        return self.rfile.read(length) if length else b""

    def _drain_body(self) -> None:
        with contextlib.suppress(_ApiError):
            self._read_body()

    def _json_body(self, optional: bool = False) -> Any:
        raw = self._read_body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if optional:
                return {}
            raise _ApiError(400, "Invalid JSON body") from None

    def _send(self, status: int, body: bytes, headers: dict[str, str], correlation_id: str) -> None:
        try:
            self.send_response(status)
            lowered = {k.lower() for k in headers}
            if "content-type" not in lowered and body:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            if "x-correlation-id" not in lowered:
                self.send_header("x-correlation-id", correlation_id)
            if "content-length" not in lowered:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _finish(self, method: str, path: str, status: int, correlation_id: str, injected: bool) -> None:
        entry = {
            "method": method,
            "path": path,
            "status": status,
            "correlation_id": correlation_id,
            "time": time.time(),
            "injected": injected,
        }
        self.server.controller._record_request(entry)
        LOG.info(
            "%s %s -> %d correlation_id=%s%s",
            method,
            path,
            status,
            correlation_id,
            " (injected)" if injected else "",
        )


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3305, help="port to listen on (default 3305)")
    parser.add_argument(
        "--wire-version", choices=WIRE_VERSIONS, default="v5", help="connect response shape (default v5)"
    )
    parser.add_argument("--agent-id", help="24-hex agent id (default: random)")
    parser.add_argument("--secret", help="agent secret (default: random 32-byte hex)")
    parser.add_argument("--token-ttl", type=float, default=86400.0, help="JWT lifetime in seconds (default 86400)")
    parser.add_argument("--agent-name", default="Dev Agent", help="agent name (default 'Dev Agent')")
    parser.add_argument(
        "--portal", choices=("off", "v4", "v5", "v6"), default=None,
        help="portal socket dialect (default: v4 for a v4 controller, v5 for v5, off for older)",
    )
    parser.add_argument("--env-out", metavar="PATH", help="also write the agent env lines to PATH (mode 0600)")
    parser.add_argument(
        "--spawn-agent",
        action="store_true",
        help=f"also run the daemon against this controller (env in {RUN_DIR}/agent.env)",
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _setup_cli_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dev-controller: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def main(args: argparse.Namespace) -> int:
    _setup_cli_logging()
    try:
        controller = DevController(
            version=args.wire_version,
            agent_id=args.agent_id,
            secret=args.secret,
            host=args.host,
            port=args.port,
            token_ttl=args.token_ttl,
            agent_name=args.agent_name,
        )
        if args.agent_id is not None and not _HEX24.match(args.agent_id):
            LOG.warning(
                "agent id %r is not 24 hex characters: connects will get 500, as on a real controller",
                args.agent_id,
            )
        controller.start()
    except (ValueError, OSError) as exc:
        print(f"dev-controller: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    child: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        lines = controller.env_lines()
        portal_dialect = args.portal or {"v4": "v4", "v5": "v5"}.get(controller.version, "off")
        try:
            from aiwm_devtools.portal import PortalServer
        except ImportError as exc:  # python-socketio is a dev dependency: a bare python3 runs without a portal
            if args.portal not in (None, "off"):
                raise
            LOG.info("no portal socket (%s): install python-socketio for it", exc)
            portal_dialect = "off"
        if portal_dialect != "off":
            controller.portal = PortalServer(controller, portal_dialect, host=args.host).start()
            lines += controller.portal.env_lines()
            base = f"curl -s -H 'Authorization: Bearer {controller.admin_token}' {controller.url}/dev/portal"
            LOG.info("portal socket (%s) on %s%s namespace %s", portal_dialect, controller.portal.url,
                     controller.portal.path, controller.portal.namespace)
            LOG.info("post a portal message:  %s/message -d '{\"content\": \"hello\"}'", base)
            LOG.info("operator command:       %s/command -d '{\"type\": \"inspect\"}'", base)
        if controller.version == "v5":
            LOG.info("assign a work item:     curl -s -H 'Authorization: Bearer %s' %s/dev/work "
                     "-d '{\"title\": \"Write a haiku\"}'", controller.admin_token, controller.url)
        print("\n".join(lines), flush=True)
        LOG.info(
            "AIWM %s controller listening on %s (agent %s)",
            controller.version,
            controller.url,
            controller.agent_id,
        )
        LOG.info(
            "admin token for POST /agents/%s/credentials/regenerate: %s",
            controller.agent_id,
            controller.admin_token,
        )
        if args.env_out:
            _write_private(Path(args.env_out), "\n".join(lines) + "\n")
            LOG.info("env lines written to %s", args.env_out)
        if args.spawn_agent:
            child = _spawn_agent(lines)
            print(
                f"Agent started (pid {child.pid}). Try: curl http://{SPAWN_HEALTH_ADDR}/health"
                " -- press Ctrl-C to stop.",
                flush=True,
            )
        while not stop.wait(0.2):
            if child is not None and child.poll() is not None:
                LOG.info("agent exited with code %s; stopping", child.returncode)
                code = child.returncode if child.returncode > 0 else (1 if child.returncode < 0 else 0)
                break
    finally:
        if child is not None and child.poll() is None:
            _terminate(child)
        if controller.portal is not None:
            controller.portal.stop()
        controller.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _spawn_agent(lines: list[str]) -> subprocess.Popen[bytes]:
    RUN_DIR.mkdir(mode=0o700, exist_ok=True)
    (RUN_DIR / "state").mkdir(mode=0o700, exist_ok=True)
    env_file = RUN_DIR / "agent.env"
    extra = [
        "AIWM_HEARTBEAT_INTERVAL=5",
        "AIWM_STATE_DIR=./.run/state",
        f"AIWM_HEALTH_ADDR={SPAWN_HEALTH_ADDR}",
    ]
    _write_private(env_file, "\n".join([*lines, *extra]) + "\n")
    LOG.info("agent env written to %s", env_file)
    # A session of its own: Ctrl-C reaches only us, and we stop the agent with exactly one SIGTERM.
    return subprocess.Popen(
        [sys.executable, "-m", "aiwm_agentd", "run", "--env-file", "./.run/agent.env"],
        start_new_session=True,
    )


def _terminate(child: subprocess.Popen[bytes]) -> None:
    LOG.info("stopping agent (pid %d)", child.pid)
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=10)
        LOG.info("agent exited with code %s", child.returncode)
    except subprocess.TimeoutExpired:
        LOG.warning("agent did not exit within 10 s; killing it")
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def free_loopback_port() -> int:
    """A port that was free a moment ago (for tests that need to know the port before starting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
