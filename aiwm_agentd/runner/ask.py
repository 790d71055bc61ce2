"""`aiwm-agentd ask "text"`: one turn with the daemon's configuration, without Discord or Telegram."""

from __future__ import annotations

import time

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.workers import ConversationKey, Reply


def ask_once(config: AgentConfig, text: str, conversation: ConversationKey,
             timeout: float | None = None) -> Reply:
    """Start a runner, answer `text` in `conversation` (resuming its session), stop. Never raises for a
    failed turn: the Reply carries `error` and the text the user would have read."""
    from aiwm_agentd.runner.runner import ClaudeRunner

    runner = ClaudeRunner(config)
    runner.start()
    try:
        wait = timeout if timeout is not None else config.claude.turn_timeout + 30.0
        return runner.submit(conversation, text).result(timeout=wait)
    finally:
        runner.stop(time.monotonic() + 10.0)
