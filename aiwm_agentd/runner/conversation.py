"""The runner's loop-thread data: one message (`Item`), one conversation (`Conversation`), one run (`LoopRun`).

These are plain records shared by the runner's modules (runner.py dispatches, capacity.py makes room,
clients.py opens and closes SDK clients, turn.py runs a turn). Everything here except an `Item`'s future is
touched only on the runner's loop thread; a `LoopRun` is made fresh at every start() because asyncio
primitives bind to the loop that first uses them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiwm_agentd.runner.failures import Failure
from aiwm_agentd.workers import ConversationKey, Reply

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeSDKClient


@dataclass(eq=False)
class Item:
    """One accepted message, tracked until its future holds the Reply."""

    key: ConversationKey
    text: str
    future: concurrent.futures.Future[Reply]
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Conversation:
    """One active conversation: its FIFO queue, its worker task and the kept-warm SDK client that task owns."""

    key: ConversationKey
    queue: deque[Item] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    client: ClaudeSDKClient | None = None
    client_pid: int | None = None
    client_token: str = ""  # its per-child token for the Anthropic API proxy (sandbox), revoked at close
    client_generation: int = -1
    last_used: float = field(default_factory=time.monotonic)
    in_turn: bool = False
    close_requested: bool = False
    reset_requested: bool = False
    turn_timeout: asyncio.Timeout | None = None
    interrupted: bool = False
    rss: int = 0  # bytes of its CLI process tree, last measured


@dataclass
class LoopRun:
    """The loop-thread state of one run of the runner's loop (one start() to its stop or death)."""

    conversations: dict[ConversationKey, Conversation] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)  # turn slots, client slots, closes
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    import_now: asyncio.Event = field(default_factory=asyncio.Event)  # a message waits: import the SDK now
    background: set[asyncio.Task[None]] = field(default_factory=set)
    turns: int = 0  # turns running now
    rss_estimate: int = 0  # bytes a new client is expected to take: the largest tree measured

    def notify(self) -> None:
        """Wake everything waiting on `changed` (from code that does not hold it)."""
        task = asyncio.ensure_future(_notify(self.changed))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def spawn(self, task: asyncio.Task[None]) -> None:
        """Keep a background task referenced until it is done."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)


async def _notify(changed: asyncio.Condition) -> None:
    async with changed:
        changed.notify_all()


def failure_reply(failure: Failure, started: float | None = None, session_id: str = "") -> Reply:
    """The Reply a user reads when a message could not be answered normally."""
    duration = time.monotonic() - started if started is not None else 0.0
    return Reply(failure.text, session_id=session_id, error=failure.code, duration_s=duration)
