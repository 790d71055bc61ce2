"""The runner's ledger of accepted messages: each one is tracked until it is answered, so nobody waits forever.

A message is either refused at once (`shutting_down` while closing, `queue_full` when its conversation already
holds `claude.queue_limit` messages waiting or running, so a storm cannot become an unbounded queue of paid
turns) or accepted and counted until `finish` hands over its Reply. Whatever way a run ends, the runner answers
what is still outstanding with `answer_outstanding`. The counts feed `busy`, `queue_depth()` and /health.

Thread-shared: everything here is guarded by the runner's lock, which it hands in; `admit` and
`health_fields` expect the caller to hold it (so they join the caller's other reads), the rest take it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from aiwm_agentd.runner import failures
from aiwm_agentd.runner.conversation import Item, failure_reply
from aiwm_agentd.runner.failures import Failure
from aiwm_agentd.workers import ConversationKey, Reply

log = logging.getLogger("aiwm_agentd.runner")


class Ledger:
    """Accepted-but-unanswered messages per conversation, and the refusals beyond the queue limit."""

    def __init__(self, lock: threading.Lock, queue_limit: Callable[[], int]) -> None:
        """`queue_limit()` is the current `claude.queue_limit`."""
        self._lock = lock
        self._queue_limit = queue_limit
        self._pending: dict[ConversationKey, int] = {}
        self._outstanding: set[Item] = set()  # accepted, not answered yet
        self._refused = 0
        self._refusing: dict[ConversationKey, int] = {}  # refusals per conversation until it drains
        self.closing = False  # under the lock: the runner is stopping, refuse everything

    def admit(self, item: Item) -> Failure | None:
        """Under the lock: count `item` as accepted, or say why it is refused."""
        if self.closing:
            return failures.SHUTTING_DOWN
        key, limit = item.key, self._queue_limit()
        if self._pending.get(key, 0) >= limit:
            self._refused += 1
            refused = self._refusing.get(key, 0)
            if not refused:
                log.warning("[%s] %d messages already waiting or running; refusing more until it drains",
                            key, limit)
            self._refusing[key] = refused + 1
            return failures.QUEUE_FULL
        self._pending[key] = self._pending.get(key, 0) + 1
        self._outstanding.add(item)
        return None

    def finish(self, item: Item, reply: Reply | None) -> None:
        """Count the message as answered, then hand over the reply (None: the caller cancelled it).

        Idempotent: the first answer wins (the loop and a sweep after its end may both try)."""
        refused = 0
        with self._lock:
            if item not in self._outstanding:
                return
            self._outstanding.discard(item)
            left = self._pending.get(item.key, 0) - 1
            if left > 0:
                self._pending[item.key] = left
            else:
                self._pending.pop(item.key, None)
                refused = self._refusing.pop(item.key, 0)
        if refused:
            log.info("[%s] drained; %d messages were refused meanwhile", item.key, refused)
        if reply is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled by the caller
                item.future.set_result(reply)

    def answer_outstanding(self, failure: Failure) -> None:
        """Answer every accepted message that no loop will answer any more."""
        with self._lock:
            items = list(self._outstanding)
        for item in items:
            self.finish(item, failure_reply(failure))

    def depth(self, conversation: ConversationKey | None = None) -> int:
        """Messages not answered yet (queued plus running), for one conversation or all."""
        with self._lock:
            if conversation is None:
                return sum(self._pending.values())
            return self._pending.get(conversation, 0)

    def busy(self) -> bool:
        with self._lock:
            return any(self._pending.values())

    def health_fields(self) -> dict[str, Any]:
        """Under the lock: the ledger's part of the runner's /health."""
        return {
            "pending": sum(self._pending.values()),
            "conversations": sum(1 for n in self._pending.values() if n),
            "refused": self._refused,
            "refusing_conversations": len(self._refusing),
        }
