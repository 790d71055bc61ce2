"""Who is answered: configured targets only, allowed users only, DMs only from listed users, in groups only
when addressed.

Access rules (docs-access.md): `*_ALLOWED_USER_IDS` lists who may talk to the agent; empty means every member
of the allowed groups/channels may (the operator chose those groups), but then no direct message is
answered, because a DM has no group to vouch for its sender. `*_ADMIN_USER_IDS` may always talk, and only
they may /reload, /stop someone else's turn and see /status details. Nobody is an admin unless listed.
"""

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
    author_id: str = ""  # the sender's platform user id ("" = unknown: never listed)


def is_admin(author_id: str, config: PlatformConfig) -> bool:
    return bool(author_id) and author_id in config.admin_user_ids


def is_listed(author_id: str, config: PlatformConfig) -> bool:
    """Named in the allow-list or the admin list."""
    return bool(author_id) and (author_id in config.allowed_user_ids or author_id in config.admin_user_ids)


def may_talk(author_id: str, config: PlatformConfig, direct: bool) -> bool:
    """Whether this user may drive the agent: listed users always; in groups everyone when no list is set."""
    if is_listed(author_id, config):
        return True
    return not direct and not config.allowed_user_ids


def should_answer(msg: Inbound, config: PlatformConfig) -> bool:
    if msg.author_is_bot:
        return False
    if msg.is_direct:
        return config.allow_direct_messages and may_talk(msg.author_id, config, direct=True)
    if not any(chat in config.target_ids for chat in msg.chat_ids):
        return False
    if not may_talk(msg.author_id, config, direct=False):
        return False
    if not config.require_mentions:
        return True
    return msg.mentioned or msg.replied_to_bot or msg.explicit_command
