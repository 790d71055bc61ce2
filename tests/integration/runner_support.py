"""Shared helpers for the runner's integration tests (real SDK, real bundled CLI, FakeAnthropic)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from aiwm_agentd.runner import ClaudeRunner
from aiwm_agentd.workers import ConversationKey, Reply
from tests.fakes.anthropic import agent_config

TURN_WAIT = 60.0


def claude_children() -> list[psutil.Process]:
    """Claude Code CLI processes that are children of this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
            if child.status() != psutil.STATUS_ZOMBIE and cmdline and Path(cmdline[0]).name == "claude":
                found.append(child)
        except psutil.Error:
            continue
    return found


def wait_no_claude_children(timeout: float = 5.0) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = claude_children()
        if not left:
            return []
        time.sleep(0.05)
    return claude_children()


class RunnerHarness:
    """A started ClaudeRunner against the fake; stops it (and checks for leftovers) on close()."""

    def __init__(self, state_dir: Path, base_url: str, **claude: Any) -> None:
        self.config = agent_config(state_dir, base_url, **claude)
        self.runner = ClaudeRunner(self.config)
        self.runner.start()

    def ask(self, text: str, conversation: ConversationKey | None = None) -> Reply:
        key = conversation or ConversationKey("test", "1")
        return self.runner.submit(key, text).result(TURN_WAIT)

    def close(self, grace: float = 10.0) -> None:
        self.runner.stop(time.monotonic() + grace)
