"""Who is answered: configured targets only, DMs only if allowed, in groups only when addressed."""

from __future__ import annotations

from dataclasses import dataclass

from aiwm_agentd.config import PlatformConfig


@dataclass(frozen=True)
class Inbound:
    """The facts about one incoming message that decide whether the bot answers it."""

    author_is_bot: bool  # any bot, including this one
    is_direct: bool  # a private chat / DM
    chat_ids: tuple[str, ...]  # the chat or channel id, and a thread's parent channel id if any
    mentioned: bool  # the bot is @mentioned
    replied_to_bot: bool  # the message replies to one of the bot's messages
    explicit_command: bool = False  # "/new" style command that Telegram routes to this bot


def should_answer(msg: Inbound, config: PlatformConfig) -> bool:
    if msg.author_is_bot:
        return False
    if msg.is_direct:
        return config.allow_direct_messages
    if not any(chat in config.target_ids for chat in msg.chat_ids):
        return False
    if not config.require_mentions:
        return True
    return msg.mentioned or msg.replied_to_bot or msg.explicit_command
