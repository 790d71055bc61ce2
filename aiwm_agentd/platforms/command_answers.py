"""What a chat command does and answers: /new, /stop, /status, /reload, with the access rules applied.

Who may use which (docs-access.md): anyone allowed to talk may /new, /stop their own running turn and see a
short /status; admins may also /stop someone else's turn, /reload and see the full /status. The caller says
whether the sender is an admin and who sent the turn the runner is on (`running_sender`), so this module
holds the decision and the wording, not the bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging

from aiwm_agentd.platforms.commands import ADMIN_ONLY_RELOAD, ADMIN_ONLY_STOP, Command, format_reload, format_status
from aiwm_agentd.workers import ConversationKey, DaemonControl, Runner

RELOAD_TIMEOUT = 60.0


async def answer_command(key: ConversationKey, command: Command, *, author_id: str, admin: bool,
                         running_sender: str | None, runner: Runner, control: DaemonControl,
                         log: logging.Logger, platform: str) -> str:
    """Carry out `command` sent by `author_id` in `key` and return the reply text.

    `running_sender` is the sender of the turn the runner is on in `key` (None when idle): a non-admin's /stop
    only stops their own turn. ValueError for a command this module does not know."""
    if command.name == "new":
        runner.reset(key)
        return "Started a fresh session for this conversation."
    if command.name == "stop":
        if not admin and running_sender is not None and running_sender != author_id:
            log.info("%s: /stop in %s refused: the running turn is someone else's", platform, key)
            return ADMIN_ONLY_STOP
        stopped = runner.interrupt(key)
        return "Stopped the running turn." if stopped else "Nothing is running here."
    if command.name == "status":
        return format_status(control.status_summary(), runner.queue_depth(key), runner.busy, admin=admin)
    if command.name == "reload":
        if not admin:
            log.info("%s: /reload in %s refused: not an admin", platform, key)
            return ADMIN_ONLY_RELOAD
        changes = await asyncio.wait_for(asyncio.wrap_future(control.request_reload()), RELOAD_TIMEOUT)
        return format_reload(changes)
    raise ValueError(f"unknown command /{command.name}")
