"""Chat commands: /new, /status, /stop, /reload (also as /cmd@botname, as Telegram sends them).

Who may use which (docs-access.md): every user allowed to talk may /new and /stop their own turn and gets a
short /status; admins (`*_ADMIN_USER_IDS`) may /reload, /stop anyone's turn and see the full /status with
the controller URL and the agent id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMMANDS = ("new", "status", "stop", "reload")
# What /status shows to a user who is not an admin: nothing that locates or identifies the agent.
PUBLIC_STATUS_KEYS = ("agent", "state", "healthy", "model", "queue_depth", "busy")
ADMIN_ONLY_RELOAD = "Only an admin can /reload this agent."
ADMIN_ONLY_STOP = "Only an admin can stop someone else's turn."


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


def format_status(summary: Mapping[str, Any], queue_depth: int, busy: bool, admin: bool = True) -> str:
    """`/status` text: the supervisor's summary (only PUBLIC_STATUS_KEYS unless `admin`), then this
    conversation's queue."""
    lines = []
    for key, value in summary.items():
        if not admin and key not in PUBLIC_STATUS_KEYS:
            continue
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
