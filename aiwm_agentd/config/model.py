"""The agent's immutable configuration snapshot, handed to the workers, and the provenance of its values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    tool_names: tuple[str, ...] | None  # the tool whitelist (see snapshot._tools); None = the controller sent none
    allowed_functions: tuple[str, ...]  # v5; empty = all allowed
    mcp_servers: Mapping[str, Any]  # SDK `mcp_servers` form, Authorization = current token
    max_concurrency: int
    idle_timeout: float
    turn_timeout: float
    max_clients: int
    queue_limit: int  # messages waiting or running per conversation; more are refused with a reply
    memory_budget_mib: int = 0  # measured RSS of the warm CLI trees; idle LRU ones close beyond it. 0 = none
    # The AIWM portal socket (realtime/): off by default; "" = derive from the controller URL and version.
    realtime: bool = False
    ws_url: str = ""
    ws_namespace: str = ""
    ws_path: str = ""
    take_work: bool = False  # carry out work items offered in heartbeat answers
    config_poll_interval: float = 300.0  # seconds between GET config polls while connected
    mcp_proxy: bool = True  # the controller's HTTP MCP servers through the loopback proxy (realtime/mcp_proxy.py)
    local_tools: tuple[str, ...] = ()  # CLAUDE_ALLOWED_TOOLS: the whitelist without a controller
    tools_socket: str = "/run/aiwm-agentd-tools.sock"  # the tools spawner (sandbox/spawner.py)
    tools_user: str = "aiwm-agentd-tools"  # the sandbox identity of the CLI and its tools (sandbox/)
    tools_dir: str = "/var/lib/aiwm-agentd-tools"  # its workspace; <tools_dir>/<instance state dir name>


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
    gateway_url: str = ""  # Discord only (Telegram has no such key); "" = the public gateway
    catchup_window: float = 0.0  # oldest message answered after downtime, seconds
    allowed_user_ids: tuple[str, ...] = ()  # who may talk; empty = everyone in target_ids, no DMs
    admin_user_ids: tuple[str, ...] = ()  # who may /reload, /stop others' turns, see /status details


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
