"""The settings table: every configuration key, declared once.

A row says where a value can come from (env name, controller `settings` flat and nested names), how it is
parsed, its default, whether it is secret, what it is for, and which dataclass field it fills. Everything
else derives from these rows: loading the daemon settings, building the agent snapshot with provenance,
secret registration and masking, reload diffs, `check-config`, and the test that `etc/agent.env.example`
documents every key. Adding a key means adding one row here and the field it fills.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from aiwm_agentd import logs
from aiwm_agentd.config import parsers as p

DEFAULT_STATE_DIR = "/var/lib/aiwm-agentd"
DEFAULT_INSTRUCTION_FILE = "/etc/aiwm/instruction.md"
DEFAULT_INSTRUCTION = "You are a helpful AI assistant."
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_HEALTH_ADDR: tuple[str, int] | None = ("127.0.0.1", 9464)

# The automatic memory budget of warm Claude processes: this share of the machine's memory, at least enough for
# one warm CLI (~200-230 MiB measured). Derivation and measurements: the README's "Memory budget" section.
AUTO_MEMORY_BUDGET_FRACTION = 1 / 64
AUTO_MEMORY_BUDGET_FLOOR_MIB = 256


def auto_memory_budget_mib(total_bytes: int | None = None) -> int:
    """1/64 of total memory, never under 256 MiB (24 GiB -> 384 MiB, 8 GiB -> 256 MiB, 64 GiB -> 1024 MiB)."""
    total = psutil.virtual_memory().total if total_bytes is None else total_bytes
    return max(AUTO_MEMORY_BUDGET_FLOOR_MIB, int(total * AUTO_MEMORY_BUDGET_FRACTION) // (1024 * 1024))


DAEMON = "daemon"  # the section of the supervisor's own settings (env only, read before any controller)


@dataclass(frozen=True)
class Setting:
    """One configuration key and everything the code needs to know about it."""

    env: str  # name in the env file
    section: str  # "daemon" (DaemonSettings) or the AgentConfig attribute: "claude", "discord", "telegram"
    field: str  # attribute of DaemonSettings / ClaudeConfig / PlatformConfig that the value fills
    parse: Callable[[Any], Any]  # raises ValueError(expected form)
    default: Any
    doc: str  # one line: what the operator gets by setting it
    flat: str = ""  # controller `settings.<flat>`
    nested: str = ""  # controller `settings.<a.b>` (the integration guide's shape)
    secret: bool = False  # registered for log masking, never shown, diffs say "changed"
    flat_parse: Callable[[Any], Any] | None = None  # when the flat key has other units than the field
    default_from: Callable[[Mapping[str, str]], Any] | None = None  # a default that depends on the env
    show: Callable[[Any], str] | None = None  # display form when str() would not do

    @property
    def key(self) -> str:
        """The name shown in provenance: the env name for daemon keys, `section.field` for the snapshot."""
        return self.env if self.section == DAEMON else f"{self.section}.{self.field}"

    def default_for(self, env: Mapping[str, str]) -> Any:
        return self.default_from(env) if self.default_from else self.default


def _state_dir_default(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory= hands the path over as $STATE_DIRECTORY (colon-separated if several)."""
    return Path((env.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR).split(":")[0])


def _show_health_addr(value: Any) -> str:
    return "off" if value is None else "{}:{}".format(*value)


def _show_ca_bundle(value: Any) -> str:
    return str(value) or "(system CAs)"


def _show_url(value: Any) -> str:
    return p.url_without_password(str(value)) or "(unset)"


def _daemon(env: str, field: str, parse: Callable[[Any], Any], default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(env=env, section=DAEMON, field=field, parse=parse, default=default, doc=doc, **kw)


DAEMON_SETTINGS: tuple[Setting, ...] = (
    _daemon("AIWM_ENABLED", "enabled", p.parse_bool, True, "false = local mode: no controller calls"),
    _daemon("AIWM_BASE_URL", "base_url", p.parse_url_text, "", "the controller URL (https unless loopback)",
            show=_show_url),
    _daemon("AIWM_AGENT_ID", "agent_id", p.parse_text, "", "the agent's 24-hex-character id"),
    _daemon("AIWM_AGENT_SECRET", "agent_secret", p.parse_text, "", "the agent's secret", secret=True),
    _daemon("AGENT_NAME", "agent_name", p.parse_text, "", "display name until the controller provides one"),
    _daemon("AIWM_ALLOW_INSECURE_HTTP", "allow_insecure_http", p.parse_bool, False,
            "accept plain http to a non-loopback controller"),
    _daemon("AIWM_CA_BUNDLE", "ca_bundle", p.parse_pem_file, "", "extra CA bundle (PEM) for the controller",
            show=_show_ca_bundle),
    _daemon("AIWM_HEARTBEAT_INTERVAL", "heartbeat_interval", p.parse_seconds, 60.0, "seconds between heartbeats"),
    _daemon("AIWM_RECONNECT_INTERVAL", "reconnect_interval", p.parse_seconds, 23 * 3600.0,
            "seconds between token refreshes (earlier when the token expires sooner)"),
    _daemon("AIWM_FALLBACK_RETRY_INTERVAL", "fallback_retry_interval", p.parse_seconds, 300.0,
            "seconds between attempts while the controller is unreachable or refusing"),
    _daemon("AIWM_REQUEST_TIMEOUT", "request_timeout", p.parse_seconds, 10.0, "seconds per controller request"),
    _daemon("AIWM_CONNECT_RETRIES", "connect_retries", p.parse_positive_int, 3,
            "connect attempts at start-up before the local configuration is used"),
    _daemon("AIWM_SHUTDOWN_TIMEOUT", "shutdown_timeout", p.parse_seconds, 15.0, "seconds for a graceful stop"),
    _daemon("AIWM_HEALTH_ADDR", "health_addr", p.parse_health_addr, DEFAULT_HEALTH_ADDR,
            "HOST:PORT of /health and /metrics, or off", show=_show_health_addr),
    _daemon("AIWM_STATE_DIR", "state_dir", p.parse_path, Path(DEFAULT_STATE_DIR),
            "sessions and the Claude config dir ($STATE_DIRECTORY by default)", default_from=_state_dir_default),
    _daemon("AIWM_INSTRUCTION_FILE", "instruction_file", p.parse_text, DEFAULT_INSTRUCTION_FILE,
            "instruction used without a controller"),
    _daemon("LOG_LEVEL", "log_level", p.parse_log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
)


def _claude(env: str, field: str, parse: Callable[[Any], Any], default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(env=env, section="claude", field=field, parse=parse, default=default, doc=doc, **kw)


CLAUDE_SETTINGS: tuple[Setting, ...] = (
    _claude("CLAUDE_MODEL", "model", p.parse_text, DEFAULT_MODEL, "the Claude model",
            flat="claude_model", nested="claudeModel"),
    _claude("CLAUDE_MAX_TURNS", "max_turns", p.parse_positive_int, 100, "agentic turns per message",
            flat="claude_maxTurns", nested="maxTurns"),
    _claude("CLAUDE_PERMISSION_MODE", "permission_mode", p.parse_permission_mode, "default",
            "the SDK's permission mode", flat="claude_permissionMode", nested="permissionMode"),
    _claude("CLAUDE_RESUME", "resume", p.parse_bool, True, "resume each conversation's session",
            flat="claude_resume", nested="resume"),
    _claude("CLAUDE_CODE_OAUTH_TOKEN", "oauth_token", p.parse_text, "", "Claude subscription token",
            flat="claude_oauthToken", nested="claudeOAuthToken", secret=True),
    _claude("ANTHROPIC_API_KEY", "api_key", p.parse_text, "", "Anthropic API key", secret=True),
    _claude("ANTHROPIC_BASE_URL", "base_url", p.parse_http_url, "",
            "an inference proxy (the controller's deployment.baseAPIEndpoint wins)", show=_show_url),
    _claude("CLAUDE_CLI_PATH", "cli_path", p.parse_text, "", "a system-wide Claude Code CLI"),
    _claude("CLAUDE_MAX_CONCURRENCY", "max_concurrency", p.parse_positive_int, 2, "turns running at once",
            flat="assistant_maxConcurrency"),
    _claude("CLAUDE_IDLE_TIMEOUT", "idle_timeout", p.parse_seconds, 90.0,
            "idle seconds before a kept-warm CLI process is closed",
            flat="assistant_idleTimeoutMs", flat_parse=p.parse_milliseconds),
    _claude("CLAUDE_TURN_TIMEOUT", "turn_timeout", p.parse_seconds, 300.0, "seconds a turn may take"),
    _claude("CLAUDE_MAX_CLIENTS", "max_clients", p.parse_positive_int, 4, "CLI processes kept warm"),
    _claude("CLAUDE_QUEUE_LIMIT", "queue_limit", p.parse_positive_int, 10,
            "messages waiting or running per conversation"),
    _claude("CLAUDE_MEMORY_BUDGET_MIB", "memory_budget_mib", p.parse_positive_int, auto_memory_budget_mib(),
            "MiB of measured RSS the kept-warm CLI processes may hold (default: 1/64 of memory, >= 256)"),
    # The AIWM portal socket (read with the agent's snapshot, so the controller's settings can set it too).
    _claude("AIWM_REALTIME", "realtime", p.parse_bool, False,
            "open the AIWM portal socket: portal chat and operator commands", flat="realtime_enabled"),
    _claude("AIWM_WS_URL", "ws_url", p.parse_http_url, "",
            "the socket server's http(s) origin (default: the controller's)",
            flat="realtime_wsUrl"),
    _claude("AIWM_WS_NAMESPACE", "ws_namespace", p.parse_text, "",
            "the socket namespace (default by controller version: /ws for v4, /ws/chat for v5+, / for v6)",
            flat="realtime_wsNamespace"),
    _claude("AIWM_WS_PATH", "ws_path", p.parse_text, "", "the Socket.IO path (default /socket.io)",
            flat="realtime_wsPath"),
    _claude("AIWM_TAKE_WORK", "take_work", p.parse_bool, False,
            "carry out work items the controller assigns (a Claude turn each, with its MCP tools)",
            flat="realtime_takeWork"),
    _claude("AIWM_CONFIG_POLL_INTERVAL", "config_poll_interval", p.parse_seconds, 300.0,
            "seconds between GET /agents/:id/config while connected, so portal changes arrive",
            flat="realtime_configPollInterval"),
    _claude("AIWM_MCP_PROXY", "mcp_proxy", p.parse_bool, True,
            "reach the controller's MCP servers through a loopback proxy (absorbs controller quirks)",
            flat="realtime_mcpProxy"),
    _claude("CLAUDE_ALLOWED_TOOLS", "local_tools", p.parse_ids, (),
            "tools the agent may use without a controller (exact names: Read,Grep,Bash); empty = none"),
    _claude("CLAUDE_TOOLS_SOCKET", "tools_socket", p.parse_text, "/run/aiwm-agentd-tools.sock",
            "the tools spawner's socket (aiwm-agentd-tools.socket): the CLI and its tools run in that unit, as "
            "its user; empty = never use a spawner"),
    _claude("CLAUDE_TOOLS_USER", "tools_user", p.parse_text, "aiwm-agentd-tools",
            "without a spawner: the user a daemon running as root switches the CLI to (empty = never)"),
    _claude("CLAUDE_TOOLS_DIR", "tools_dir", p.parse_text, "/var/lib/aiwm-agentd-tools",
            "the tools user's workspace (HOME, config, cwd of the CLI), one subdirectory per instance"),
)


def platform_settings(name: str, *, token_env: str, ids_env: str, ids_key: str, ids_doc: str, bot_env: str,
                      bot_key: str, bot_doc: str) -> tuple[Setting, ...]:
    """Discord and Telegram share one shape; only their names differ (and Discord has a gateway URL)."""
    upper = name.upper()

    def row(env: str, field: str, parse: Callable[[Any], Any], default: Any, doc: str, **kw: Any) -> Setting:
        return Setting(env=env, section=name, field=field, parse=parse, default=default, doc=doc, **kw)

    rows = [
        row(token_env, "token", p.parse_text, "", "bot token", flat=f"{name}_token", nested=f"{name}.token",
            secret=True),
        row(ids_env, "target_ids", p.parse_ids, (), ids_doc, flat=f"{name}_{ids_key}", nested=f"{name}.{ids_key}"),
        row(bot_env, "bot_id", p.parse_text, "", bot_doc, flat=f"{name}_{bot_key}", nested=f"{name}.{bot_key}"),
        row(f"{upper}_REQUIRE_MENTION", "require_mentions", p.parse_bool, True,
            "answer in groups only when mentioned or replied to", flat=f"{name}_requireMentions"),
        row(f"{upper}_ALLOW_DMS", "allow_direct_messages", p.parse_bool, False, "also answer direct messages"),
        row(f"{upper}_API_BASE_URL", "api_base_url", p.parse_http_url, "", "self-hosted or proxied API",
            show=_show_url),
    ]
    if name == "discord":
        rows.append(row("DISCORD_GATEWAY_URL", "gateway_url", p.parse_ws_url, "", "self-hosted gateway",
                        show=_show_url))
    rows.append(row(f"{upper}_CATCHUP_WINDOW", "catchup_window", p.parse_seconds, 3 * 3600.0,
                    "messages sent while the agent was down are answered up to this many seconds back "
                    "(Discord reads this much channel history)"))
    rows.append(row(f"{upper}_ALLOWED_USER_IDS", "allowed_user_ids", p.parse_ids, (),
                    "user ids who may talk to the agent (empty: everyone in the allowed groups, no direct "
                    "messages)", flat=f"{name}_allowedUserIds", nested=f"{name}.allowedUserIds"))
    rows.append(row(f"{upper}_ADMIN_USER_IDS", "admin_user_ids", p.parse_ids, (),
                    "user ids who may /reload, /stop others' turns and see /status details (empty: nobody)",
                    flat=f"{name}_adminUserIds", nested=f"{name}.adminUserIds"))
    return tuple(rows)


DISCORD_SETTINGS = platform_settings(
    "discord", token_env="DISCORD_TOKEN", ids_env="DISCORD_CHANNEL_ID", ids_key="channelIds",
    ids_doc="channel ids the bot answers in", bot_env="DISCORD_BOT_ID", bot_key="botId", bot_doc="the bot's id",
)
TELEGRAM_SETTINGS = platform_settings(
    "telegram", token_env="TELEGRAM_BOT_TOKEN", ids_env="TELEGRAM_GROUP_ID", ids_key="groupIds",
    ids_doc="group ids the bot answers in", bot_env="TELEGRAM_BOT_USERNAME", bot_key="botUsername",
    bot_doc="the bot's username",
)
PLATFORM_SETTINGS: Mapping[str, tuple[Setting, ...]] = {"discord": DISCORD_SETTINGS, "telegram": TELEGRAM_SETTINGS}
AGENT_SETTINGS: tuple[Setting, ...] = CLAUDE_SETTINGS + DISCORD_SETTINGS + TELEGRAM_SETTINGS
SETTINGS: tuple[Setting, ...] = DAEMON_SETTINGS + AGENT_SETTINGS

SECRET_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.secret)
SECRET_ENV_KEYS: tuple[str, ...] = tuple(s.env for s in SECRET_SETTINGS)


def show_value(setting: Setting, value: Any) -> str:
    """The display form of a resolved value (check-config, provenance, reload diffs): secrets masked."""
    if setting.secret:
        return logs.mask_value(value if isinstance(value, str) else "")
    if setting.show is not None:
        shown = setting.show(value)
    elif isinstance(value, tuple):
        shown = ",".join(value) if value else "(none)"
    else:
        shown = str(value) if value != "" else "(unset)"
    return logs.mask(shown)  # a URL's password, or a secret pasted into the wrong key, is never shown
