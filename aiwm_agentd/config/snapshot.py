"""Building the agent's snapshot: controller response > env file > defaults, with provenance.

`build_agent_config(env, controller, daemon)` is the one function that the supervisor, `check-config` and
`ask` share; it is pure apart from registering secrets for masking and from the tool store
(`toolstore.py`: the controller's tool list is kept in the state directory, and read back when there is no
controller). Precedence per
`spec/controller-versions.md`: v5 `channels[]` entry > flat settings key > nested settings key > env >
default. A bad controller value is a warning naming the key and the next layer is used, so the daemon keeps
serving where it safely can; a bad env value is fatal (`ConfigError`), since the operator can fix it now.

Access rules decided here (docs-access.md):
- The tool whitelist fails closed (`_tools`): the controller's list when connected; without a controller the
  last list it sent (kept on disk) when the controller is enabled, else `CLAUDE_ALLOWED_TOOLS`; else none.
- The agent JWT goes only to the controller's own MCP servers (`mcp_with_token`).
- `deployment.baseAPIEndpoint` is used only over https (loopback excepted) and only with a credential the
  controller gave (`_deployment`); the locally configured API key is never sent there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiwm_agentd import logs
from aiwm_agentd.config.daemon import DaemonSettings, env_text
from aiwm_agentd.config.model import AgentConfig, ClaudeConfig, PlatformConfig, Provenance
from aiwm_agentd.config.parsers import ConfigError, is_loopback_host, parse_http_url, url_without_password
from aiwm_agentd.config.table import CLAUDE_SETTINGS, DEFAULT_INSTRUCTION, PLATFORM_SETTINGS, Setting, show_value
from aiwm_agentd.config.toolstore import load_tools, save_tools, store_path
from aiwm_agentd.controller.wire import ControllerConfig

Override = tuple[str, Any]  # (where in the controller response, raw value)
Candidate = tuple[str, Any, Callable[[Any], Any], bool]  # (origin, raw value, parser, from the controller)


class _Resolver:
    """Walks the layers for one setting at a time and records the winner's provenance."""

    def __init__(self, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.provenance: list[Provenance] = []
        self.warnings: list[str] = []

    def _nested(self, path: str) -> tuple[bool, Any]:
        node: Any = self.settings
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def _candidates(self, s: Setting, override: Override | None) -> list[Candidate]:
        """Every layer that has the key, highest precedence first."""
        found: list[Candidate] = []
        if override is not None:
            found.append((f"controller ({override[0]})", override[1], s.parse, True))
        if s.flat and s.flat in self.settings:
            found.append((f"controller (settings.{s.flat})", self.settings[s.flat], s.flat_parse or s.parse, True))
        if s.nested:
            present, raw = self._nested(s.nested)
            if present:
                found.append((f"controller (settings.{s.nested})", raw, s.parse, True))
        if env_text(self.env, s.env):
            found.append((f"env ({s.env})", env_text(self.env, s.env), s.parse, False))
        return found

    def resolve(self, s: Setting, override: Override | None = None) -> Any:
        for origin, raw, parse, from_controller in self._candidates(s, override):
            if raw is None or raw == "":
                continue
            try:
                value = parse(raw)
            except ValueError as exc:
                if not from_controller:
                    raise ConfigError(s.env, str(exc), raw, secret=s.secret) from None
                shown = "(value hidden)" if s.secret else repr(raw)
                self.warnings.append(f"{origin}: expected {exc}, got {shown}; ignored")
                continue
            self._record(s, value, origin)
            return value
        self._record(s, s.default, "default")
        return s.default

    def resolve_all(self, settings: Sequence[Setting], overrides: Mapping[str, Override]) -> dict[str, Any]:
        """Field name -> value for every row of one section, in table order."""
        return {s.field: self.resolve(s, overrides.get(s.field)) for s in settings}

    def _record(self, s: Setting, value: Any, origin: str) -> None:
        if s.secret and isinstance(value, str):
            logs.register_secret(value)
        self.provenance.append(Provenance(s.key, show_value(s, value), origin))


def _channel_override(
    controller: ControllerConfig | None, platform: str, warnings: list[str]
) -> tuple[bool | None, dict[str, Override]]:
    """The first enabled v5 channel entry for `platform`: (enabled, overrides by PlatformConfig field)."""
    if controller is None:
        return None, {}
    entries = [c for c in controller.channels if c.platform == platform]
    if not entries:
        return None, {}
    chosen = next((c for c in entries if c.enabled), entries[0])
    if len(entries) > 1:
        warnings.append(f"channels: {len(entries)} {platform} entries; using the first enabled one")
    where = f"channels[{controller.channels.index(chosen)}]"
    overrides: dict[str, Override] = {}
    if chosen.token:
        overrides["token"] = (f"{where}.token", chosen.token)
    if chosen.channel_ids:
        overrides["target_ids"] = (f"{where}.channelId", list(chosen.channel_ids))
    if chosen.require_mentions is not None:
        overrides["require_mentions"] = (f"{where}.requireMentions", chosen.require_mentions)
    if chosen.bot_id:
        overrides["bot_id"] = (f"{where}.botId", chosen.bot_id)
    return chosen.enabled, overrides


def _platform(r: _Resolver, controller: ControllerConfig | None, name: str) -> PlatformConfig:
    enabled_by_controller, overrides = _channel_override(controller, name, r.warnings)
    values = r.resolve_all(PLATFORM_SETTINGS[name], overrides)
    enabled = bool(values["token"]) and enabled_by_controller is not False
    return PlatformConfig(platform=name, enabled=enabled, **values)


# What controllers put where the agent's token belongs: "Bearer", "Bearer <USER_ACCESS_TOKEN>", "<token>".
_PLACEHOLDER_RE = re.compile(r"(?i)^\s*(bearer)?\s*(<[^<>]*>)?\s*$")
# Header names whose values are credentials of a third-party server (registered for masking).
_CREDENTIAL_HEADER_RE = re.compile(r"(?i)auth|token|key|secret|cookie")
BUILTIN_SERVER = "Builtin"


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or {"http": 80, "https": 443}.get(scheme, 0)


def is_controller_server(name: str, spec: Mapping[str, Any], controller_url: str) -> bool:
    """The controller's own MCP server: its `Builtin` entry, or a URL with the controller's origin."""
    if name == BUILTIN_SERVER:
        return True
    url = spec.get("url")
    own = _origin(controller_url) if controller_url else None
    return own is not None and isinstance(url, str) and _origin(url) == own


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and _PLACEHOLDER_RE.match(value) is not None


def mcp_with_token(servers: Mapping[str, Any], token: str, controller_url: str = "",
                   warnings: list[str] | None = None) -> dict[str, Any]:
    """The controller's own servers get `Authorization: Bearer <agent JWT>`; the others keep their headers.

    A third-party server never sees the JWT: a placeholder Authorization the controller put there (it meant
    "the agent's token") is dropped with a warning; a real credential stays and is registered for masking.
    """
    result: dict[str, Any] = {}
    for name, spec in servers.items():
        spec = dict(spec)
        raw_headers = spec.get("headers")
        headers = dict(raw_headers) if isinstance(raw_headers, Mapping) else {}
        auth_keys = [k for k in headers if str(k).lower() == "authorization"]
        if is_controller_server(name, spec, controller_url):
            for key in auth_keys:
                del headers[key]
            headers["Authorization"] = f"Bearer {token}"
            spec["headers"] = headers
        elif auth_keys:
            for key in auth_keys:
                if is_placeholder(headers[key]):
                    del headers[key]
                    if warnings is not None:
                        warnings.append(f"mcpServers.{name}: not the controller's server, so it does not get "
                                        "the agent token; its placeholder Authorization header was dropped")
            spec["headers"] = headers
        for key, value in headers.items():
            if name != BUILTIN_SERVER and isinstance(value, str) and _CREDENTIAL_HEADER_RE.search(str(key)):
                logs.register_secret(value.split(None, 1)[-1] if value.lower().startswith("bearer ") else value)
        result[name] = spec
    return result


def read_instruction_file(path: str) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("AIWM_INSTRUCTION_FILE", "a readable UTF-8 text file", f"{path}: {exc}") from None
    return text or None


def _preview(text: str, limit: int = 48) -> str:
    """One line: the start of a long text and its length."""
    line = " ".join(text.split())
    return f"{line[:limit]}... ({len(text)} chars)" if len(line) > limit else line


def _instruction(
    controller: ControllerConfig | None, daemon: DaemonSettings, local: str | None
) -> tuple[str, str]:
    """(text, origin): the controller's when connected, else the instruction file, else the default."""
    if controller is not None:
        return controller.instruction or DEFAULT_INSTRUCTION, "controller (instruction)"
    if local:
        return local, f"file ({daemon.instruction_file})"
    return DEFAULT_INSTRUCTION, "default"


def _controller_credential(settings: Mapping[str, Any]) -> bool:
    """Whether the controller's own settings carry the OAuth token (flat or nested key)."""
    nested = settings.get("claudeOAuthToken")
    flat = settings.get("claude_oauthToken")
    return any(isinstance(v, str) and v.strip() for v in (flat, nested))


def _deployment(controller: ControllerConfig | None, r: _Resolver) -> str:
    """`deployment.baseAPIEndpoint` when it may be used ("" otherwise, with a warning naming it)."""
    if controller is None or not controller.deployment_base_url:
        return ""
    raw = controller.deployment_base_url
    shown = url_without_password(raw)
    try:
        url = parse_http_url(raw)
    except ValueError:
        r.warnings.append(f"deployment.baseAPIEndpoint {shown!r} is not an http(s) URL; ignored")
        return ""
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        r.warnings.append(f"deployment.baseAPIEndpoint {shown} is not https; ignored (the API credential "
                          "would travel in clear text)")
        return ""
    if not _controller_credential(controller.settings):
        r.warnings.append(f"deployment.baseAPIEndpoint {shown} ignored: the controller gave no credential for it "
                          "(settings.claude_oauthToken), and the local API key is never sent there")
        return ""
    return url


def _tools(controller: ControllerConfig | None, daemon: DaemonSettings, local: tuple[str, ...]
           ) -> tuple[tuple[str, ...] | None, tuple[str, ...], str]:
    """(tool names, allowed functions, origin): the whitelist fails closed.

    Connected: the controller's lists (kept on disk for later). Controller enabled but not connected: the
    last kept lists. Otherwise (local mode, or nothing kept): CLAUDE_ALLOWED_TOOLS, which may be empty.
    """
    if controller is not None:
        save_tools(daemon.state_dir, controller.tools, controller.allowed_functions)
        return controller.tools, controller.allowed_functions, "controller (tools, allowedFunctions)"
    if daemon.enabled:
        stored = load_tools(daemon.state_dir)
        if stored is not None:
            return (stored.tools or (), stored.allowed_functions,
                    f"last controller list ({store_path(daemon.state_dir)})")
    return local, (), "env (CLAUDE_ALLOWED_TOOLS)" if local else "default (no tools)"


def _claude(r: _Resolver, controller: ControllerConfig | None, daemon: DaemonSettings) -> ClaudeConfig:
    """The Claude keys from the table, plus what only the controller response carries (tools, MCP)."""
    overrides: dict[str, Override] = {}
    deployment = _deployment(controller, r)
    if deployment:
        overrides["base_url"] = ("deployment.baseAPIEndpoint", deployment)
    values = r.resolve_all(CLAUDE_SETTINGS, overrides)
    if deployment and values["api_key"]:
        # The endpoint gets the controller's credential only: the local key would override it in the CLI.
        values["api_key"] = ""
        r.provenance[:] = [Provenance(p.key, logs.mask_value(""), "not sent to deployment.baseAPIEndpoint")
                           if p.key == "claude.api_key" else p for p in r.provenance]
    tools, allowed, _origin_of_tools = _tools(controller, daemon, values["local_tools"])
    mcp: dict[str, Any] = {}
    if controller is not None:
        mcp = mcp_with_token(controller.mcp_servers, controller.token, daemon.base_url, r.warnings)
    return ClaudeConfig(tool_names=tools, allowed_functions=allowed, mcp_servers=mcp, **values)


def _access_warnings(platform: PlatformConfig, claude: ClaudeConfig, warnings: list[str]) -> None:
    """Say when the access settings do something the operator may not expect."""
    if not platform.enabled:
        return
    upper = platform.platform.upper()
    if platform.allow_direct_messages and not (platform.allowed_user_ids or platform.admin_user_ids):
        warnings.append(f"{upper}_ALLOW_DMS is on but {upper}_ALLOWED_USER_IDS is empty: direct messages are "
                        "answered only from listed users, so none are")
    granted = [t for t in (claude.tool_names or ()) if t in _OPERATOR_RISK_TOOLS]
    if granted and platform.target_ids and not platform.allowed_user_ids:
        warnings.append(f"{platform.platform}: every member of the allowed groups may make the agent use "
                        f"{', '.join(granted)}; list who may in {upper}_ALLOWED_USER_IDS")


# Built-ins that act on the machine: granting one to a whole group deserves a warning.
_OPERATOR_RISK_TOOLS = frozenset({"Bash", "Write", "Edit", "MultiEdit", "NotebookEdit", "Read", "WebFetch"})


def build_agent_config(
    env: Mapping[str, str],
    controller: ControllerConfig | None,
    daemon: DaemonSettings,
    local_instruction: str | None = None,
) -> AgentConfig:
    """Merge controller response > env > defaults into one snapshot. Pure apart from secret registration."""
    r = _Resolver(controller.settings if controller else {}, env)
    instruction, origin = _instruction(controller, daemon, local_instruction)
    r.provenance.append(Provenance("instruction", _preview(instruction), origin))
    claude = _claude(r, controller, daemon)
    discord = _platform(r, controller, "discord")
    telegram = _platform(r, controller, "telegram")
    for platform in (discord, telegram):
        _access_warnings(platform, claude, r.warnings)
    agent_name = (controller.agent_name if controller else "") or daemon.agent_name or "aiwm-agent"
    return AgentConfig(
        agent_id=daemon.agent_id or (controller.agent_id if controller else ""),
        agent_name=agent_name,
        instruction=instruction,
        source="controller" if controller else "local",
        controller_version=controller.wire_version if controller else "",
        claude=claude,
        discord=discord,
        telegram=telegram,
        state_dir=daemon.state_dir,
        provenance=tuple(r.provenance),
        warnings=tuple(r.warnings),
    )
