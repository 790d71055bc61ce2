"""Chat platforms (Discord, Telegram) as supervised worker threads.

`build_platform_workers` returns one worker per platform, *always both*, even when a platform has no token:
a disabled worker idles (health "stopped", detail "disabled ...") without importing its library, and a later
snapshot that configures it (`apply()`) connects it. So the supervisor calls this once at start, then
`start()` each worker, `apply()` each new snapshot, and `stop(deadline)` at shutdown.

discord / telegram are imported lazily, only when a platform is enabled, to keep the idle daemon small.
"""

from __future__ import annotations

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.platforms.base import ConfigurationError, PlatformWorker
from aiwm_agentd.platforms.discord_worker import DiscordWorker
from aiwm_agentd.platforms.telegram_worker import TelegramWorker
from aiwm_agentd.workers import DaemonControl, Runner, Worker

__all__ = ["ConfigurationError", "DiscordWorker", "PlatformWorker", "TelegramWorker", "build_platform_workers"]


def build_platform_workers(config: AgentConfig, runner: Runner, control: DaemonControl) -> list[Worker]:
    """[DiscordWorker ("discord"), TelegramWorker ("telegram")], not started."""
    return [DiscordWorker(config, runner, control), TelegramWorker(config, runner, control)]
