"""Configuration: the daemon's own settings (env file only) and the agent's immutable snapshot.

`load_daemon_settings(env)` reads what the supervisor needs before it can talk to anyone.
`build_agent_config(env, controller, daemon)` is the one pure function that merges a controller response,
the env file and defaults into an `AgentConfig`, recording where every value came from. Precedence, per
`spec/controller-versions.md`: v5 `channels` > flat settings keys > nested settings keys > env > default.

An invalid env value is fatal (`ConfigError`, exit 78). An invalid controller value is skipped with a
warning naming the key, and the next layer is used: the daemon keeps serving where it safely can.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

from aiwm_agentd import logs
from aiwm_agentd.controller.wire import ControllerConfig, WireError, split_ids

DEFAULT_ENV_FILE = "/etc/aiwm/agent.env"
DEFAULT_STATE_DIR = "/var/lib/aiwm-agentd"
DEFAULT_INSTRUCTION_FILE = "/etc/aiwm/instruction.md"
DEFAULT_INSTRUCTION = "You are a helpful AI assistant."
DEFAULT_MODEL = "claude-haiku-4-5"
PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions", "dontAsk")

EX_CONFIG = 78
DEFAULT_HEALTH_ADDR: tuple[str, int] | None = ("127.0.0.1", 9464)

SECRET_ENV_KEYS = (
    "AIWM_AGENT_SECRET",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "DISCORD_TOKEN",
    "TELEGRAM_BOT_TOKEN",
)

T = TypeVar("T")


class ConfigError(Exception):
    """One clear line: which setting, what was expected, what was found."""

    def __init__(self, key: str, expected: str, got: object = None, secret: bool = False) -> None:
        self.key = key
        self.expected = expected
        shown = "" if got is None else (" (value hidden)" if secret else f", got {got!r}")
        super().__init__(f"{key}: expected {expected}{shown}")


# ---------------------------------------------------------------------------------------------
# Parsers shared by the env and the controller layers. Each raises ValueError(expected-form).


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def parse_seconds(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        raise ValueError("a number of seconds (decimals allowed)") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("a positive number of seconds")
    return number


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a positive whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("a positive whole number") from None
    if number <= 0:
        raise ValueError("a positive whole number")
    return number


def parse_text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("a string")
    return str(value).strip()


def parse_ids(value: Any) -> tuple[str, ...]:
    try:
        return split_ids(value, "ids")
    except WireError:
        raise ValueError("a list of ids or a comma-separated string") from None


def parse_permission_mode(value: Any) -> str:
    text = parse_text(value)
    if text not in PERMISSION_MODES:
        raise ValueError("one of " + ", ".join(PERMISSION_MODES))
    return text


def parse_http_url(value: Any) -> str:
    text = parse_text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL")
    return text


def parse_ws_url(value: Any) -> str:
    text = parse_text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("a ws:// or wss:// URL")
    return text


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# The daemon's own settings: env file only, validated once at start and on SIGHUP.


@dataclass(frozen=True)
class DaemonSettings:
    enabled: bool
    base_url: str
    agent_id: str
    agent_secret: str
    agent_name: str
    heartbeat_interval: float
    reconnect_interval: float
    fallback_retry_interval: float
    request_timeout: float
    connect_retries: int
    shutdown_timeout: float
    ca_bundle: str
    health_addr: tuple[str, int] | None
    state_dir: Path
    instruction_file: str
    log_level: str
    allow_insecure_http: bool
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def verify(self) -> bool | str:
        """What `requests` takes as `verify`: always verify, with a custom CA bundle if given."""
        return self.ca_bundle or True


def read_env_file(path: str | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective environment: the process environment overlaid by the env file.

    The file wins because under systemd the process environment is the copy taken at start, and a
    SIGHUP reload must see the operator's edits. A missing default file is fine (systemd's
    EnvironmentFile may have provided everything); a missing explicit file is a config error.
    """
    merged = dict(os.environ if environ is None else environ)
    if path is None:
        return merged
    file = Path(path)
    if not file.exists():
        if path == DEFAULT_ENV_FILE:
            return merged
        raise ConfigError("--env-file", "an existing env file", path)
    try:
        values = dotenv_values(file, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--env-file", "a readable UTF-8 env file", f"{path}: {exc}") from None
    for key, value in values.items():
        if value is not None:
            merged[key] = value
    for key in SECRET_ENV_KEYS:
        logs.register_secret(merged.get(key))
    return merged


def _env(env: Mapping[str, str], key: str) -> str:
    return (env.get(key) or "").strip()


def _env_parsed(
    env: Mapping[str, str], key: str, parse: Callable[[Any], T], default: T, origins: dict[str, str]
) -> T:
    raw = _env(env, key)
    if not raw:
        origins[key] = "default"
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(key, str(exc), raw, secret=key in SECRET_ENV_KEYS) from None
    origins[key] = "env"
    return value


def parse_health_addr(value: Any) -> tuple[str, int] | None:
    text = parse_text(value)
    if text.lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("HOST:PORT (e.g. 127.0.0.1:9464) or 'off'")
    return host, int(port)


_AGENT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")


def load_daemon_settings(env: Mapping[str, str]) -> DaemonSettings:
    """Validate the supervisor's settings; raises ConfigError naming the first bad key."""
    for key in SECRET_ENV_KEYS:
        logs.register_secret(env.get(key))
    origins: dict[str, str] = {}
    enabled = _env_parsed(env, "AIWM_ENABLED", parse_bool, True, origins)
    allow_insecure = _env_parsed(env, "AIWM_ALLOW_INSECURE_HTTP", parse_bool, False, origins)
    base_url = _env(env, "AIWM_BASE_URL").rstrip("/")
    logs.register_secret(urlsplit(base_url).password)  # https://user:password@host would otherwise show
    agent_id = _env(env, "AIWM_AGENT_ID")
    secret = _env(env, "AIWM_AGENT_SECRET")
    if enabled:
        if not base_url:
            raise ConfigError("AIWM_BASE_URL", "the controller URL (or AIWM_ENABLED=false for local mode)")
        try:
            base_url = parse_http_url(base_url)
        except ValueError as exc:
            raise ConfigError("AIWM_BASE_URL", str(exc), base_url) from None
        parts = urlsplit(base_url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or "") and not allow_insecure:
            raise ConfigError(
                "AIWM_BASE_URL",
                "https:// for a non-loopback controller (set AIWM_ALLOW_INSECURE_HTTP=true to accept http)",
                base_url,
            )
        if not _AGENT_ID_RE.match(agent_id):
            raise ConfigError("AIWM_AGENT_ID", "24 hexadecimal characters (the agent's ObjectId)", agent_id)
        if not secret:
            raise ConfigError("AIWM_AGENT_SECRET", "the agent secret from the controller")
    for key in ("AIWM_BASE_URL", "AIWM_AGENT_ID", "AIWM_AGENT_SECRET", "AGENT_NAME"):
        origins[key] = "env" if _env(env, key) else "default"

    state_default = (env.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR).split(":")[0]
    state_dir = Path(_env(env, "AIWM_STATE_DIR") or state_default)
    origins["AIWM_STATE_DIR"] = "env" if _env(env, "AIWM_STATE_DIR") else "default"
    ca_bundle = _env(env, "AIWM_CA_BUNDLE")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigError("AIWM_CA_BUNDLE", "a readable PEM file", ca_bundle)
    origins["AIWM_CA_BUNDLE"] = "env" if ca_bundle else "default"
    log_level = _env(env, "LOG_LEVEL") or "INFO"
    try:
        logs.parse_level(log_level)
    except ValueError:
        raise ConfigError("LOG_LEVEL", "one of DEBUG, INFO, WARNING, ERROR", log_level) from None
    origins["LOG_LEVEL"] = "env" if _env(env, "LOG_LEVEL") else "default"
    instruction_file = _env(env, "AIWM_INSTRUCTION_FILE")
    origins["AIWM_INSTRUCTION_FILE"] = "env" if instruction_file else "default"

    return DaemonSettings(
        enabled=enabled,
        base_url=base_url,
        agent_id=agent_id,
        agent_secret=secret,
        agent_name=_env(env, "AGENT_NAME"),
        heartbeat_interval=_env_parsed(env, "AIWM_HEARTBEAT_INTERVAL", parse_seconds, 60.0, origins),
        reconnect_interval=_env_parsed(env, "AIWM_RECONNECT_INTERVAL", parse_seconds, 23 * 3600.0, origins),
        fallback_retry_interval=_env_parsed(
            env, "AIWM_FALLBACK_RETRY_INTERVAL", parse_seconds, 300.0, origins
        ),
        request_timeout=_env_parsed(env, "AIWM_REQUEST_TIMEOUT", parse_seconds, 10.0, origins),
        connect_retries=_env_parsed(env, "AIWM_CONNECT_RETRIES", parse_positive_int, 3, origins),
        shutdown_timeout=_env_parsed(env, "AIWM_SHUTDOWN_TIMEOUT", parse_seconds, 10.0, origins),
        ca_bundle=ca_bundle,
        health_addr=_env_parsed(
            env, "AIWM_HEALTH_ADDR", parse_health_addr, DEFAULT_HEALTH_ADDR, origins
        ),
        state_dir=state_dir,
        instruction_file=instruction_file or DEFAULT_INSTRUCTION_FILE,
        log_level=log_level.upper(),
        allow_insecure_http=allow_insecure,
        origins=origins,
    )


# ---------------------------------------------------------------------------------------------
# The agent's configuration snapshot, handed to the workers.


@dataclass(frozen=True)
class Provenance:
    """Where one resolved value came from, for `check-config` and /health."""

    key: str
    shown: str  # display form; secrets masked
    origin: str  # "controller (settings.claude_model)", "env (CLAUDE_MODEL)", "default"


@dataclass(frozen=True)
class ClaudeConfig:
    model: str
    max_turns: int
    permission_mode: str
    resume: bool
    oauth_token: str
    api_key: str
    base_url: str  # deployment.baseAPIEndpoint > ANTHROPIC_BASE_URL > "" (the CLI's default)
    cli_path: str
    tool_names: tuple[str, ...] | None  # the controller's tool whitelist; None = none sent
    allowed_functions: tuple[str, ...]  # v5; empty = all allowed
    mcp_servers: Mapping[str, Any]  # SDK `mcp_servers` form, Authorization = current token
    max_concurrency: int
    idle_timeout: float
    turn_timeout: float
    max_clients: int
    queue_limit: int  # messages waiting or running per conversation; more are refused with a reply


@dataclass(frozen=True)
class PlatformConfig:
    platform: str  # "discord" | "telegram"
    enabled: bool  # a token is configured and the controller did not disable the channel
    token: str
    target_ids: tuple[str, ...]  # Discord channel ids / Telegram group ids
    bot_id: str  # Discord bot id / Telegram bot username
    require_mentions: bool
    allow_direct_messages: bool
    api_base_url: str  # "" = the public API
    gateway_url: str  # Discord only; "" = the public gateway


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    agent_name: str
    instruction: str
    source: str  # "controller" | "local"
    controller_version: str  # "v1".."v5", "" in local mode
    claude: ClaudeConfig
    discord: PlatformConfig
    telegram: PlatformConfig
    state_dir: Path
    provenance: tuple[Provenance, ...]
    warnings: tuple[str, ...]

    def platform(self, name: str) -> PlatformConfig:
        return self.discord if name == "discord" else self.telegram


_SECRET_KEYS = {"claude.oauth_token", "claude.api_key", "discord.token", "telegram.token"}


class _Resolver:
    """Walks the layers for one key at a time and records the winner's provenance."""

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

    def resolve(
        self,
        key: str,
        parse: Callable[[Any], T],
        default: T,
        flat: str = "",
        nested: str = "",
        env: str = "",
        override: tuple[str, Any] | None = None,
    ) -> T:
        candidates: list[tuple[str, Any, bool]] = []
        if override is not None:
            candidates.append((f"controller ({override[0]})", override[1], True))
        if flat:
            found, value = flat in self.settings, self.settings.get(flat)
            if found:
                candidates.append((f"controller (settings.{flat})", value, True))
        if nested:
            found, value = self._nested(nested)
            if found:
                candidates.append((f"controller (settings.{nested})", value, True))
        if env and _env(self.env, env):
            candidates.append((f"env ({env})", _env(self.env, env), False))
        for origin, raw, from_controller in candidates:
            if raw is None or raw == "":
                continue
            try:
                value = parse(raw)
            except ValueError as exc:
                shown = "(value hidden)" if key in _SECRET_KEYS else repr(raw)
                if from_controller:
                    self.warnings.append(f"{origin}: expected {exc}, got {shown}; ignored")
                    continue
                raise ConfigError(env, str(exc), raw, secret=key in _SECRET_KEYS) from None
            self._record(key, value, origin)
            return value
        self._record(key, default, "default")
        return default

    def _record(self, key: str, value: Any, origin: str) -> None:
        if key in _SECRET_KEYS:
            if isinstance(value, str):
                logs.register_secret(value)
            shown = logs.mask_value(value if isinstance(value, str) else "")
        elif isinstance(value, tuple):
            shown = ",".join(value) if value else "(none)"
        else:
            shown = str(value)
        self.provenance.append(Provenance(key, shown, origin))


def _channel_override(
    controller: ControllerConfig | None, platform: str, warnings: list[str]
) -> tuple[bool | None, dict[str, tuple[str, Any]]]:
    """The first v5 channel entry for `platform`: (enabled, overrides by field)."""
    if controller is None:
        return None, {}
    entries = [c for c in controller.channels if c.platform == platform]
    if not entries:
        return None, {}
    chosen = next((c for c in entries if c.enabled), entries[0])
    if len(entries) > 1:
        warnings.append(f"channels: {len(entries)} {platform} entries; using the first enabled one")
    where = f"channels[{controller.channels.index(chosen)}]"
    overrides: dict[str, tuple[str, Any]] = {}
    if chosen.token:
        overrides["token"] = (f"{where}.token", chosen.token)
    if chosen.channel_ids:
        overrides["target_ids"] = (f"{where}.channelId", list(chosen.channel_ids))
    if chosen.require_mentions is not None:
        overrides["require_mentions"] = (f"{where}.requireMentions", chosen.require_mentions)
    if chosen.bot_id:
        overrides["bot_id"] = (f"{where}.botId", chosen.bot_id)
    return chosen.enabled, overrides


def _platform(
    r: _Resolver, controller: ControllerConfig | None, name: str, env_token: str, env_ids: str, env_bot: str,
    flat_bot: str, nested_bot: str,
) -> PlatformConfig:
    upper = name.upper()
    enabled_by_controller, over = _channel_override(controller, name, r.warnings)
    token = r.resolve(
        f"{name}.token", parse_text, "", flat=f"{name}_token", nested=f"{name}.token", env=env_token,
        override=over.get("token"),
    )
    ids_key = "channelIds" if name == "discord" else "groupIds"
    no_ids: tuple[str, ...] = ()
    target_ids = r.resolve(
        f"{name}.target_ids", parse_ids, no_ids, flat=f"{name}_{ids_key}", nested=f"{name}.{ids_key}",
        env=env_ids, override=over.get("target_ids"),
    )
    bot_id = r.resolve(
        f"{name}.bot_id", parse_text, "", flat=flat_bot, nested=nested_bot, env=env_bot,
        override=over.get("bot_id"),
    )
    require_mentions = r.resolve(
        f"{name}.require_mentions", parse_bool, True, flat=f"{name}_requireMentions",
        env=f"{upper}_REQUIRE_MENTION", override=over.get("require_mentions"),
    )
    allow_dms = r.resolve(f"{name}.allow_direct_messages", parse_bool, False, env=f"{upper}_ALLOW_DMS")
    api_base = r.resolve(f"{name}.api_base_url", parse_http_url, "", env=f"{upper}_API_BASE_URL")
    gateway = ""
    if name == "discord":
        gateway = r.resolve("discord.gateway_url", parse_ws_url, "", env="DISCORD_GATEWAY_URL")
    enabled = bool(token) and enabled_by_controller is not False
    return PlatformConfig(
        platform=name, enabled=enabled, token=token, target_ids=target_ids, bot_id=bot_id,
        require_mentions=require_mentions, allow_direct_messages=allow_dms, api_base_url=api_base,
        gateway_url=gateway,
    )


def _mcp_with_token(servers: Mapping[str, Any], token: str) -> dict[str, Any]:
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


def build_agent_config(
    env: Mapping[str, str],
    controller: ControllerConfig | None,
    daemon: DaemonSettings,
    local_instruction: str | None = None,
) -> AgentConfig:
    """Merge controller response > env > defaults into one snapshot. Pure apart from secret registration."""
    settings: Mapping[str, Any] = controller.settings if controller else {}
    r = _Resolver(settings, env)

    if controller is not None:
        instruction = controller.instruction or DEFAULT_INSTRUCTION
        origin = "controller (instruction)"
    elif local_instruction:
        instruction = local_instruction
        origin = f"file ({daemon.instruction_file})"
    else:
        instruction = DEFAULT_INSTRUCTION
        origin = "default"
    r._record("instruction", _preview(instruction), origin)

    model = r.resolve("claude.model", parse_text, DEFAULT_MODEL, flat="claude_model", nested="claudeModel",
                      env="CLAUDE_MODEL")
    max_turns = r.resolve("claude.max_turns", parse_positive_int, 100, flat="claude_maxTurns",
                          nested="maxTurns", env="CLAUDE_MAX_TURNS")
    permission_mode = r.resolve("claude.permission_mode", parse_permission_mode, "default",
                                flat="claude_permissionMode", nested="permissionMode",
                                env="CLAUDE_PERMISSION_MODE")
    resume = r.resolve("claude.resume", parse_bool, True, flat="claude_resume", nested="resume",
                       env="CLAUDE_RESUME")
    oauth = r.resolve("claude.oauth_token", parse_text, "", flat="claude_oauthToken",
                      nested="claudeOAuthToken", env="CLAUDE_CODE_OAUTH_TOKEN")
    api_key = r.resolve("claude.api_key", parse_text, "", env="ANTHROPIC_API_KEY")
    deployment = controller.deployment_base_url if controller else ""
    base_url = r.resolve(
        "claude.base_url", parse_http_url, "", env="ANTHROPIC_BASE_URL",
        override=("deployment.baseAPIEndpoint", deployment) if deployment else None,
    )
    cli_path = r.resolve("claude.cli_path", parse_text, "", env="CLAUDE_CLI_PATH")
    concurrency = r.resolve("claude.max_concurrency", parse_positive_int, 2,
                            flat="assistant_maxConcurrency", env="CLAUDE_MAX_CONCURRENCY")
    idle_ms = settings.get("assistant_idleTimeoutMs") if isinstance(settings, Mapping) else None
    idle_override = None
    if idle_ms not in (None, ""):
        try:
            idle_override = ("settings.assistant_idleTimeoutMs", parse_seconds(idle_ms) / 1000.0)
        except ValueError:
            r.warnings.append(
                f"controller (settings.assistant_idleTimeoutMs): expected a positive number of "
                f"milliseconds, got {idle_ms!r}; ignored"
            )
    idle_timeout = r.resolve("claude.idle_timeout", parse_seconds, 600.0, env="CLAUDE_IDLE_TIMEOUT",
                             override=idle_override)
    turn_timeout = r.resolve("claude.turn_timeout", parse_seconds, 300.0, env="CLAUDE_TURN_TIMEOUT")
    max_clients = r.resolve("claude.max_clients", parse_positive_int, 4, env="CLAUDE_MAX_CLIENTS")
    queue_limit = r.resolve("claude.queue_limit", parse_positive_int, 10, env="CLAUDE_QUEUE_LIMIT")

    token = controller.token if controller else ""
    mcp = _mcp_with_token(controller.mcp_servers, token) if controller else {}
    claude = ClaudeConfig(
        model=model, max_turns=max_turns, permission_mode=permission_mode, resume=resume,
        oauth_token=oauth, api_key=api_key, base_url=base_url, cli_path=cli_path,
        tool_names=controller.tools if controller else None,
        allowed_functions=controller.allowed_functions if controller else (),
        mcp_servers=mcp, max_concurrency=concurrency, idle_timeout=idle_timeout,
        turn_timeout=turn_timeout, max_clients=max_clients, queue_limit=queue_limit,
    )
    discord = _platform(r, controller, "discord", "DISCORD_TOKEN", "DISCORD_CHANNEL_ID", "DISCORD_BOT_ID",
                        "discord_botId", "discord.botId")
    telegram = _platform(r, controller, "telegram", "TELEGRAM_BOT_TOKEN", "TELEGRAM_GROUP_ID",
                         "TELEGRAM_BOT_USERNAME", "telegram_botUsername", "telegram.botUsername")

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


def describe_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Human lines naming what changed between two snapshots (secret values never shown)."""
    before = {p.key: p for p in old.provenance}
    changes: list[str] = []
    for p in new.provenance:
        prev = before.get(p.key)
        if prev is None or prev.shown != p.shown:
            changes.append(f"{p.key}: {prev.shown if prev else '(unset)'} -> {p.shown}")
    secret_fields = {
        "claude.oauth_token": (old.claude.oauth_token, new.claude.oauth_token),
        "claude.api_key": (old.claude.api_key, new.claude.api_key),
        "discord.token": (old.discord.token, new.discord.token),
        "telegram.token": (old.telegram.token, new.telegram.token),
    }
    for key, (a, b) in secret_fields.items():
        if a != b and not any(c.startswith(key + ":") for c in changes):
            changes.append(f"{key}: changed")
    if old.instruction != new.instruction and not any(c.startswith("instruction") for c in changes):
        changes.append("instruction: text changed")
    old_tools = (old.claude.tool_names, old.claude.allowed_functions)
    if old_tools != (new.claude.tool_names, new.claude.allowed_functions):
        changes.append("tools: whitelist changed")
    if _mcp_with_token(old.claude.mcp_servers, "") != _mcp_with_token(new.claude.mcp_servers, ""):
        changes.append("mcp servers changed")
    return changes
