"""Building the agent's snapshot: controller response > env file > defaults, with provenance.

`build_agent_config(env, controller, daemon)` is the one pure function (apart from registering secrets
for masking) that the supervisor, `check-config` and `ask` share. Precedence per
`spec/controller-versions.md`: v5 `channels[]` entry > flat settings key > nested settings key > env >
default. A bad controller value is a warning naming the key and the next layer is used, so the daemon keeps
serving where it safely can; a bad env value is fatal (`ConfigError`), since the operator can fix it now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiwm_agentd import logs
from aiwm_agentd.config.daemon import DaemonSettings, env_text
from aiwm_agentd.config.model import AgentConfig, ClaudeConfig, PlatformConfig, Provenance
from aiwm_agentd.config.parsers import ConfigError
from aiwm_agentd.config.table import CLAUDE_SETTINGS, DEFAULT_INSTRUCTION, PLATFORM_SETTINGS, Setting, show_value
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


def mcp_with_token(servers: Mapping[str, Any], token: str) -> dict[str, Any]:
    """Servers whose headers carry an Authorization get the current agent token."""
    result: dict[str, Any] = {}
    for name, spec in servers.items():
        spec = dict(spec)
        headers = spec.get("headers")
        if isinstance(headers, Mapping) and any(k.lower() == "authorization" for k in headers):
            new_headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            new_headers["Authorization"] = f"Bearer {token}"
            spec["headers"] = new_headers
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


def _claude(r: _Resolver, controller: ControllerConfig | None) -> ClaudeConfig:
    """The Claude keys from the table, plus what only the controller response carries (tools, MCP)."""
    overrides: dict[str, Override] = {}
    if controller is not None and controller.deployment_base_url:
        overrides["base_url"] = ("deployment.baseAPIEndpoint", controller.deployment_base_url)
    values = r.resolve_all(CLAUDE_SETTINGS, overrides)
    return ClaudeConfig(
        tool_names=controller.tools if controller else None,
        allowed_functions=controller.allowed_functions if controller else (),
        mcp_servers=mcp_with_token(controller.mcp_servers, controller.token) if controller else {},
        **values,
    )


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
    claude = _claude(r, controller)
    discord = _platform(r, controller, "discord")
    telegram = _platform(r, controller, "telegram")
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
