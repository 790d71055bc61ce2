"""Answering a full conversation without flooding it: one refusal reply per overflow episode.

When the runner refuses a message at once because its conversation's queue is full (`queue_full`), the user
is told so, but a user who keeps writing into a stuck conversation must not get one refusal per message.
`RefusalGate` decides which refusals are answered; `refusal()` recognises a refused submission.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiwm_agentd.workers import ConversationKey, Reply

# How long one refusal reply covers a conversation whose queue stays full.
REFUSAL_QUIET = 30.0


@dataclass
class _Episode:
    began: float
    silenced: int = 0


class RefusalGate:
    """Decides which `queue_full` refusals are answered: the first of an overflow episode only.

    An episode starts with a refusal and ends when the conversation has drained (`accepted()`: the caller
    says a message was accepted while none of the conversation's turns was pending), or `quiet` seconds
    after its answered refusal (then the next refusal is answered again, so a user who keeps writing into a
    stuck conversation is told again now and then). A message accepted while the queue is still draining
    does not end it: otherwise every freed slot would let one message in and the next refusal be answered.
    Refusals not answered are counted, and logged when the episode ends. Not thread-safe: the loop only.
    """

    def __init__(self, quiet: float = REFUSAL_QUIET, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self._episodes: dict[ConversationKey, _Episode] = {}
        self.answered = 0
        self.silenced = 0

    def refused(self, key: ConversationKey) -> bool:
        """A message of `key` was refused; True when this refusal should be answered."""
        now = self._clock()
        episode = self._episodes.get(key)
        if episode is not None and now - episode.began < self.quiet:
            episode.silenced += 1
            self.silenced += 1
            return False
        # A refusal answered again after `quiet` continues the episode: its unanswered count is logged once.
        self._episodes[key] = _Episode(now, episode.silenced if episode is not None else 0)
        self.answered += 1
        return True

    def accepted(self, key: ConversationKey) -> int:
        """`key` drained (a message accepted with nothing pending): the episode ends; returns how many
        refusals went unanswered in it."""
        episode = self._episodes.pop(key, None)
        return episode.silenced if episode is not None else 0

    def silenced_in(self, key: ConversationKey) -> int:
        episode = self._episodes.get(key)
        return episode.silenced if episode is not None else 0


def refusal(future: concurrent.futures.Future[Reply]) -> Reply | None:
    """The runner's reply when it refused the message at once because the conversation is full."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    reply = future.result()
    return reply if reply.error == "queue_full" else None
