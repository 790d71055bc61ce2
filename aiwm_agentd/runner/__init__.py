"""The Claude runner: chat messages to Claude Agent SDK turns (see runner.py), and `ask_once` for the CLI."""

from aiwm_agentd.runner.ask import ask_once
from aiwm_agentd.runner.runner import ClaudeRunner

__all__ = ["ClaudeRunner", "ask_once"]
