"""How an answer leaves a platform worker: masked, split under the platform limit, noted when late.

Every outgoing text goes through `logs.mask` (`send_text`): a backstop for a secret that reached a reply, in
any of its encoded forms. A message that waited for us (the daemon was restarting or offline) gets its
answer prefixed with a `late_note` saying so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiwm_agentd import logs
from aiwm_agentd.platforms.errors import describe
from aiwm_agentd.platforms.split import split_message

# A message older than this when its turn is submitted gets a late-answer note.
LATE_AFTER = 60.0


class Responder(Protocol):
    """How a turn answers the message that triggered it."""

    async def send(self, text: str) -> None:
        """Send one chunk (already under the platform limit) as a reply to the triggering message."""

    async def typing(self) -> None:
        """Show the typing indicator once."""


async def send_text(responder: Responder, text: str, limit: int, log: logging.Logger, platform: str) -> bool:
    """Send `text` (masked: no registered secret leaves in a reply) in chunks of at most `limit`; False when
    a chunk could not be sent (logged)."""
    for chunk in split_message(logs.mask(text), limit):
        try:
            await responder.send(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s: sending a reply failed: %s", platform, describe(exc))
            return False
    return True


def late_note(sent_at: float, now: float, restarted: bool = False) -> str:
    """The line put before a late answer ("" when it is not late)."""
    if not restarted and now - sent_at < LATE_AFTER:
        return ""
    when = time.strftime("%H:%M UTC", time.gmtime(sent_at))
    return f"(Late answer to your message of {when}: I was restarting or offline.)"
