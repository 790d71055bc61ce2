"""Room for turns and warm clients: the turn slots, the `max_clients` cap and the memory budget.

A global cap (`claude.max_concurrency`) bounds concurrent turns. A new SDK client waits for room under
`claude.max_clients` and under the memory budget (`claude.memory_budget_mib`, the measured RSS of every CLI
process tree, see memory.py); to make room the least recently used idle client is asked to close (its worker
closes it), and a conversation in a turn or with messages waiting keeps its client.

The waiting and the asking run on the runner's loop thread against one `LoopRun` (its `changed` condition is
what waiters wait on). The counters other threads read for /health (`running_turns`, `live_clients`,
`warm_rss`, `budget_closes`) are guarded by the runner's lock, which it hands in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aiwm_agentd.config import ClaudeConfig
from aiwm_agentd.runner import memory
from aiwm_agentd.runner.conversation import Conversation, LoopRun

log = logging.getLogger("aiwm_agentd.runner")


class Capacity:
    """Turn slots, client slots and the memory budget of the warm CLI processes."""

    def __init__(self, lock: threading.Lock, claude: Callable[[], ClaudeConfig],
                 measure_rss: Callable[[int], int]) -> None:
        """`lock` guards the counters below; `claude()` is the current configuration; `measure_rss(pid)` the
        bytes of one CLI process tree."""
        self._lock = lock
        self._claude = claude
        self._measure_rss = measure_rss
        # under `lock`
        self.running_turns = 0
        self.live_clients = 0
        self.warm_rss = 0  # bytes, all clients, last measured
        self.budget_closes = 0

    def reset_counts(self) -> None:
        """Under `lock`: no turn runs and no client lives (a new run, or the loop died with its clients)."""
        self.running_turns = self.live_clients = 0

    # ---------------------------------------------------------------------------------- turn slots

    async def acquire_turn(self, run: LoopRun, conv: Conversation) -> bool:
        """Wait for a turn slot; False when a close of this conversation's client was asked meanwhile."""
        async with run.changed:
            while run.turns >= self._claude().max_concurrency:
                if (conv.close_requested or conv.reset_requested) and conv.client is not None:
                    return False
                if run.stopped.is_set():
                    return False
                await run.changed.wait()
            run.turns += 1
        with self._lock:
            self.running_turns = run.turns
        return True

    async def release_turn(self, run: LoopRun) -> None:
        async with run.changed:
            run.turns -= 1
            run.changed.notify_all()
        with self._lock:
            self.running_turns = run.turns

    # ---------------------------------------------------------------------------------- client slots

    async def reserve_client(self, run: LoopRun, conv: Conversation) -> None:
        """Wait for room under max_clients, asking the least recently used idle client to close."""
        changed = run.changed
        async with changed:
            while True:
                if self._live_clients_count() >= self._claude().max_clients:
                    idle = [c for c in run.conversations.values()
                            if c is not conv and c.client is not None and not c.in_turn and not c.close_requested]
                    if idle:
                        self.request_close(run, min(idle, key=lambda c: c.last_used))
                    await changed.wait()
                    continue
                # Room for the new client's expected memory: close idle ones and wait until they are gone.
                self.trim_to_budget(run, conv, incoming=run.rss_estimate)
                if any(c.close_requested and c.client is not None and c is not conv
                       for c in run.conversations.values()):
                    await changed.wait()
                    continue
                break
            with self._lock:
                self.live_clients += 1

    async def unreserve_client(self, run: LoopRun) -> None:
        """A reserved client closed, or never connected."""
        async with run.changed:
            with self._lock:
                self.live_clients -= 1
            run.changed.notify_all()

    def _live_clients_count(self) -> int:
        with self._lock:
            return self.live_clients

    # ---------------------------------------------------------------------------------- memory budget

    def request_close(self, run: LoopRun, victim: Conversation) -> None:
        """Ask the victim's worker to close its client."""
        victim.close_requested = True
        victim.wakeup.set()
        if run.changed.locked():
            run.changed.notify_all()  # the victim may be waiting for a turn slot
        else:
            run.notify()

    def trim_to_budget(self, run: LoopRun, keep: Conversation, incoming: int = 0) -> None:
        """Measure every warm client; ask the least recently used idle ones to close while the total plus
        `incoming` exceeds the budget. `keep` (the conversation being served) is never asked."""
        warm = [c for c in run.conversations.values() if c.client is not None]
        for c in warm:
            if c.client_pid is not None:
                c.rss = self._measure_rss(c.client_pid)
                run.rss_estimate = max(run.rss_estimate, c.rss)
        with self._lock:
            self.warm_rss = sum(c.rss for c in warm)
        budget_mib = self._claude().memory_budget_mib
        budget = budget_mib * memory.MIB
        if budget <= 0:
            return
        clients = [memory.WarmClient(c.key, c.last_used, c.rss,
                                     closable=(c is not keep and not c.in_turn and not c.queue
                                               and not c.close_requested and not c.reset_requested))
                   for c in warm if not (c.close_requested and c is not keep)]
        victims = memory.choose_victims(clients, incoming, budget)
        for key in victims:
            victim = run.conversations[key]
            log.info("[%s] closing its idle Claude process (%.0f MiB) to stay within the %d MiB memory budget",
                     key, victim.rss / memory.MIB, budget_mib)
            with self._lock:
                self.budget_closes += 1
            self.request_close(run, victim)

    def forget_rss(self, conv: Conversation) -> None:
        """The conversation's client closed: its memory no longer counts."""
        with self._lock:
            self.warm_rss = max(0, self.warm_rss - conv.rss)
        conv.rss = 0
