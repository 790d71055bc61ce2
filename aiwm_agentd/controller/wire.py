"""Every connect/config response shape (v1-v5) normalised into one immutable `ControllerConfig`.

Pure functions only: no I/O, so each wire version is unit-tested directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class WireError(ValueError):
    """The controller answered something that is not a valid connect/config response."""


@dataclass(frozen=True)
class Channel:
    """A v5 `channels[]` entry: one bot the controller wants this agent to run."""

    platform: str
    enabled: bool
    token: str
    channel_ids: tuple[str, ...]
    require_mentions: bool | None
    bot_id: str
    label: str


@dataclass(frozen=True)
class ControllerConfig:
    """What one successful connect (or GET config) told us, whatever the wire version."""

    wire_version: str
    token: str
    expires_at: float | None  # unix time; None = unknown (display only: the VM's clock may be off)
    instruction: str
    tools: tuple[str, ...] | None  # None = the controller sent no tool list
    allowed_functions: tuple[str, ...]  # v5; empty = all allowed
    settings: Mapping[str, Any]
    mcp_servers: Mapping[str, Any]
    deployment_base_url: str
    channels: tuple[Channel, ...]
    agent_id: str
    agent_name: str
    org_id: str
    raw_keys: tuple[str, ...] = field(default=())
    # Seconds the token is valid from receipt: `expiresIn`, else the JWT's `exp - iat`. Unlike `expires_at`
    # it needs no agreement between the VM's clock and the controller's, so refreshes are scheduled from it.
    lifetime: float | None = None

    def fingerprint(self) -> str:
        """Stable digest of what the workers consume; changes exactly when the configuration does."""
        payload = {
            "instruction": self.instruction,
            "tools": self.tools,
            "allowed": self.allowed_functions,
            "settings": self.settings,
            "mcp": without_auth(self.mcp_servers),
            "deployment": self.deployment_base_url,
            "channels": [c.__dict__ for c in self.channels],
            "name": self.agent_name,
        }
        return json.dumps(payload, sort_keys=True, default=str)


def without_auth(servers: Mapping[str, Any]) -> dict[str, Any]:
    # The Authorization header follows the token, which changes on every reconnect; that alone is
    # not a configuration change.
    result: dict[str, Any] = {}
    for name, spec in servers.items():
        if isinstance(spec, Mapping):
            spec = dict(spec)
            headers = spec.get("headers")
            if isinstance(headers, Mapping):
                spec["headers"] = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        result[name] = spec
    return result


def compose_instruction(value: Any) -> str:
    """The instruction text: v1-v3 send it merged; v4/v5 send `{systemPrompt, guidelines}` to merge."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise WireError(f"instruction: expected a string or an object, got {type(value).__name__}")
    prompt = value.get("systemPrompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise WireError("instruction.systemPrompt: expected a string")
    guidelines = value.get("guidelines") or []
    if not isinstance(guidelines, list) or not all(isinstance(g, str) for g in guidelines):
        raise WireError("instruction.guidelines: expected a list of strings")
    if not guidelines:
        return prompt
    lines = "\n".join(f"{n}. {g}" for n, g in enumerate(guidelines, start=1))
    return f"{prompt}\n\n## Guidelines\n{lines}"


def _jwt_claims(token: str) -> Mapping[str, Any]:
    """A JWT's claims, read without verifying (we are not the audience that checks them)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (unix time), or None."""
    return _number(_jwt_claims(token).get("exp"))


CLOCKS_AGREE = 60.0  # |iat - our clock| under this: the clocks agree, and `exp - now` is trusted too


def jwt_lifetime(token: str, now: float) -> float | None:
    """How long a JWT is valid from now: `exp - iat`, whatever the clocks say, and no more than `exp - now`
    when our clock agrees with the issuer's (iat is whole seconds: up to a second is already gone). None when
    `exp` or `iat` is missing."""
    claims = _jwt_claims(token)
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None or iat is None or exp <= iat:
        return None
    lifetime = exp - iat
    if abs(iat - now) < CLOCKS_AGREE:
        lifetime = min(lifetime, max(0.0, exp - now))
    return lifetime


def _str(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise WireError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _mapping(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WireError(f"{key}: expected an object, got {type(value).__name__}")
    return value


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise WireError(f"{key}: expected a list, got {type(value).__name__}")
    names: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            names.append(item["name"])
        else:
            raise WireError(f"{key}[{i}]: expected a tool name or an object with a string 'name'")
    return tuple(names)


def split_ids(value: Any, key: str) -> tuple[str, ...]:
    """Id lists arrive as arrays or as comma-separated strings; numbers may arrive as numbers."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise WireError(f"{key}: expected a list of ids or a comma-separated string")
    ids: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise WireError(f"{key}: expected ids as strings or integers")
        text = str(item).strip()
        if text:
            ids.append(text)
    return tuple(ids)


def _channels(value: Any) -> tuple[Channel, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WireError("channels: expected a list")
    channels: list[Channel] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise WireError(f"channels[{i}]: expected an object")
        platform = _str(item, "platform").lower()
        if platform not in ("discord", "telegram"):
            raise WireError(f"channels[{i}].platform: expected 'discord' or 'telegram', got {platform!r}")
        require = item.get("requireMentions")
        channels.append(
            Channel(
                platform=platform,
                enabled=item.get("enabled", True) is not False,
                token=_str(item, "token"),
                channel_ids=split_ids(item.get("channelId"), f"channels[{i}].channelId"),
                require_mentions=require if isinstance(require, bool) else None,
                bot_id=str(item.get("botId") or ""),
                label=str(item.get("label") or ""),
            )
        )
    return tuple(channels)


def detect_version(body: Mapping[str, Any]) -> str:
    """Which of the known shapes this is (for /health and logs; parsing does not depend on it)."""
    if "token" in body and "accessToken" not in body:
        return "v1"
    if isinstance(body.get("instruction"), Mapping):
        if "channels" in body or "allowedFunctions" in body or "framework" in body:
            return "v5"
        return "v4"
    if "mcpServers" in body:
        return "v3"
    return "v2"


def parse_connect_response(body: Any, now: float | None = None) -> ControllerConfig:
    """Validate and normalise a connect (or config) response body of any known version."""
    if not isinstance(body, Mapping):
        raise WireError(f"response: expected a JSON object, got {type(body).__name__}")
    now = time.time() if now is None else now
    token = _str(body, "accessToken") or _str(body, "token")
    expires_at: float | None = None
    lifetime: float | None = None
    expires_in = body.get("expiresIn")
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    jwt_life = jwt_lifetime(token, now) if token else None
    if jwt_life is not None and (lifetime is None or jwt_life < lifetime):
        lifetime = jwt_life
    if lifetime is not None:
        expires_at = now + lifetime
    token_exp = jwt_expiry(token) if token else None
    if token_exp is not None and (expires_at is None or token_exp < expires_at):
        expires_at = token_exp

    tools_value = body.get("tools")
    tools = None if tools_value is None else _names(tools_value, "tools")
    allowed_value = body.get("allowedFunctions")
    allowed = () if allowed_value is None else _names(allowed_value, "allowedFunctions")

    agent = _mapping(body, "agent")
    deployment = _mapping(body, "deployment")
    mcp = dict(_mapping(body, "mcpServers"))
    for name, spec in mcp.items():
        if not isinstance(spec, Mapping):
            raise WireError(f"mcpServers.{name}: expected an object")
    endpoint = _str(body, "mcpEndpoint")
    if endpoint and not mcp:
        # v2 names only the endpoint; v3+ send the same server in the SDK's own form.
        mcp = {"Builtin": {"type": "http", "url": endpoint, "headers": {"Authorization": "Bearer"}}}

    return ControllerConfig(
        wire_version=detect_version(body),
        token=token,
        expires_at=expires_at,
        instruction=compose_instruction(body.get("instruction")),
        tools=tools,
        allowed_functions=allowed,
        settings=dict(_mapping(body, "settings")),
        mcp_servers=mcp,
        deployment_base_url=_str(deployment, "baseAPIEndpoint"),
        channels=_channels(body.get("channels")),
        agent_id=_str(body, "id") or _str(agent, "id"),
        agent_name=_str(body, "name") or _str(agent, "name"),
        org_id=_str(agent, "orgId"),
        raw_keys=tuple(sorted(body.keys())),
        lifetime=lifetime,
    )
