"""One turn: a message sent to the conversation's SDK client, its response read, the Reply built.

`Turns.run` bounds the turn by `claude.turn_timeout` (and by the stop deadline once a stop is asked), restarts
a client whose configuration changed, connects one when there is none (clients.py) and turns every way a turn
can end (answer, failed result, timeout, /stop, a crash, a CLI that cannot start) into the Reply the user
reads. `interrupt` is /stop. Runs on the runner's loop thread, in the conversation's worker task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig
from aiwm_agentd.runner import failures
from aiwm_agentd.runner.clients import Clients, StartFailure
from aiwm_agentd.runner.conversation import Conversation, Item, LoopRun, failure_reply
from aiwm_agentd.runner.sessions import SessionStore
from aiwm_agentd.workers import Reply

log = logging.getLogger("aiwm_agentd.runner")

# Time kept back from the stop deadline to close clients and reap the CLI children.
CLOSE_RESERVE = 2.0


def loop_deadline_time(deadline: float) -> float:
    """A time.monotonic() deadline, minus the close reserve, on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + max(0.0, deadline - CLOSE_RESERVE - time.monotonic())


class Turns:
    """Runs the turns of every conversation (nothing kept between turns: that is in each Conversation)."""

    def __init__(self, *, clients: Clients, config: Callable[[], AgentConfig], generation: Callable[[], int],
                 sessions: Callable[[], SessionStore | None], stop_deadline: Callable[[], float | None]) -> None:
        """The callables give the runner's current configuration, its generation, its session store and the
        deadline of the stop in progress (None: not stopping)."""
        self._clients = clients
        self._config = config
        self._generation = generation
        self._sessions = sessions
        self._stop_deadline = stop_deadline

    async def run(self, run: LoopRun, conv: Conversation, item: Item) -> Reply:
        """Answer `item`: a failed turn is a Reply too (only cancellation or a BaseException escapes)."""
        config = self._config()
        started = time.monotonic()
        conv.in_turn, conv.interrupted = True, False
        fresh = False
        try:
            async with asyncio.timeout(config.claude.turn_timeout) as scope:
                conv.turn_timeout = scope
                stop_deadline = self._stop_deadline()
                if stop_deadline is not None:
                    scope.reschedule(loop_deadline_time(stop_deadline))
                if conv.client is not None and conv.client_generation != self._generation():
                    log.info("[%s] configuration changed; restarting its client", conv.key)
                    await self._clients.close(run, conv)
                if conv.client is None:
                    fresh = await self._clients.connect(run, conv)
                reply = await self._exchange(conv, item.text, started)
        except TimeoutError:
            if self._stop_deadline() is not None:
                failure = failures.SHUTTING_DOWN
            elif conv.interrupted:
                failure = failures.INTERRUPTED
            else:
                failure = failures.timeout(config.claude.turn_timeout)
            log.warning("[%s] turn ended: %s after %.1f s", conv.key, failure.code, time.monotonic() - started)
            await self._clients.close(run, conv, fast=True)
            reply = failure_reply(failure, started)
        except StartFailure as exc:
            reply = failure_reply(exc.failure, started)
        except Exception as exc:
            failure = failures.classify(str(exc), getattr(exc, "api_error_status", None))
            log.warning("[%s] turn failed (%s): %s", conv.key, failure.code,
                        logs.mask(f"{type(exc).__name__}: {exc}"))
            await self._clients.close(run, conv, fast=True)
            reply = failure_reply(failure, started)
        finally:
            conv.in_turn, conv.turn_timeout = False, None
            conv.last_used = time.monotonic()
        if fresh:
            reply = Reply(f"{failures.FRESH_SESSION_NOTE}\n\n{reply.text}", reply.session_id, reply.error,
                          True, reply.duration_s)
        log.info("[%s] turn done in %.2f s (waited %.2f s)%s", conv.key, reply.duration_s,
                 started - item.submitted, f": {reply.error}" if reply.error else "")
        return reply

    async def _exchange(self, conv: Conversation, text: str, started: float) -> Reply:
        """Send `text`, read the response to its end (remembering the session id), build the Reply."""
        from claude_agent_sdk import AssistantMessage, ResultMessage, SystemMessage, TextBlock

        client = conv.client
        assert client is not None
        await client.query(text)
        session_id = ""
        texts: list[str] = []
        result: Any = None
        async for message in client.receive_response():
            if isinstance(message, SystemMessage) and message.subtype == "init":
                session_id = str(message.data.get("session_id") or "")
                sessions = self._sessions()
                if session_id and sessions is not None:
                    sessions.set(str(conv.key), session_id)
            elif isinstance(message, AssistantMessage) and message.parent_tool_use_id is None:
                texts = [block.text for block in message.content if isinstance(block, TextBlock)]
            elif isinstance(message, ResultMessage):
                result = message
        if result is None:
            raise RuntimeError("the Claude Code CLI ended the turn without a result")
        session_id = result.session_id or session_id
        sessions = self._sessions()
        if session_id and sessions is not None:
            sessions.set(str(conv.key), session_id)
        duration = time.monotonic() - started
        if conv.interrupted:
            return failure_reply(failures.INTERRUPTED, started, session_id)
        if result.is_error:
            detail = result.result or "; ".join(result.errors or []) or result.subtype
            failure = failures.classify(detail, result.api_error_status)
            log.warning("[%s] turn failed (%s): %s", conv.key, failure.code, logs.mask(str(detail)))
            return failure_reply(failure, started, session_id)
        answer = (result.result or "\n".join(texts)).strip()
        return Reply(answer or "(no answer)", session_id=session_id, duration_s=duration)



async def interrupt(conv: Conversation) -> bool:
    """Stop the conversation's running turn (/stop): False when none runs."""
    if not conv.in_turn or conv.client is None:
        return False
    conv.interrupted = True
    try:
        await asyncio.wait_for(conv.client.interrupt(), timeout=5)
    except Exception as exc:
        log.warning("[%s] interrupt failed (%s); ending the turn", conv.key, logs.mask(str(exc)))
        if conv.turn_timeout is not None:
            conv.turn_timeout.reschedule(asyncio.get_running_loop().time())
    return True
