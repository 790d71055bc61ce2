"""Chat commands: /new, /status, /stop, /reload (also as /cmd@botname, as Telegram sends them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMMANDS = ("new", "status", "stop", "reload")


@dataclass(frozen=True)
class Command:
    name: str
    args: str = ""
    # "/new@otherbot": a command, but for someone else: ignore the whole message.
    for_other_bot: bool = False


def parse_command(text: str, bot_username: str = "") -> Command | None:
    """The command at the start of `text`, or None when it is an ordinary message."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    word, _, args = stripped[1:].partition(" ")
    name, _, target = word.partition("@")
    name = name.lower()
    if name not in COMMANDS:
        return None
    other = bool(target) and target.lower() != bot_username.lower().lstrip("@")
    return Command(name, args.strip(), for_other_bot=other)


def format_status(summary: Mapping[str, Any], queue_depth: int, busy: bool) -> str:
    """`/status` text: the supervisor's summary, then this conversation's queue."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key}: {value}")
    lines.append(f"queue (this chat): {queue_depth}")
    lines.append(f"busy: {'yes' if busy else 'no'}")
    return "\n".join(lines)


def format_reload(changes: list[str]) -> str:
    if not changes:
        return "Reloaded: configuration unchanged."
    return "Reloaded. Changed:\n" + "\n".join(f"- {c}" for c in changes)
