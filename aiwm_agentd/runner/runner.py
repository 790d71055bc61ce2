"""ClaudeRunner: chat messages in, Claude Agent SDK turns, replies out.

One thread runs one asyncio loop; every SDK client lives there. Each active conversation has a FIFO queue and
one worker task that owns its kept-warm `ClaudeSDKClient` (the SDK requires a client to stay in the task that
connected it), so follow-up turns skip the CLI cold start. The worker closes its client after `idle_timeout`,
or early when the `max_clients` cap or the memory budget (`claude.memory_budget_mib`, the measured RSS of every
CLI process tree, see memory.py) needs room: the least recently used idle client goes first, and a conversation
in a turn or with messages waiting keeps its client. A global cap bounds concurrent turns.

The SDK import (~1 s of CPU, ~35 MiB) waits until the platforms had a head start (`import_delay`, or at once
when a message arrives): on a small VM it would otherwise compete with the bots' own connection for the GIL.

The thread and its loop are a `LoopThread`: `start()` returns at once (messages submitted before the loop is
up are queued, not lost), and the runner can be started again after `stop()` or after its loop died. Every
accepted message is tracked until it is answered, so whatever way a run ends, nobody waits forever.

Each conversation holds at most `claude.queue_limit` messages (waiting or running); more are refused at once
with the `queue_full` reply, so a storm of messages cannot become an unbounded queue of paid turns.

All state below `_loop_*` is touched only on the loop thread; `submit()` and friends hand work over with
`LoopThread.call_soon`. The counters read by `busy` / `queue_depth()` / `health()` are guarded by `_lock`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig
from aiwm_agentd.loopthread import LoopNotRunning, LoopState, LoopThread
from aiwm_agentd.runner import failures, memory
from aiwm_agentd.runner.failures import Failure
from aiwm_agentd.runner.options import OptionInputs, RunnerPaths, build_options, effective_permission_mode, plan_tools
from aiwm_agentd.runner.sandboxing import RunnerSandbox
from aiwm_agentd.runner.sdk_import import import_sdk
from aiwm_agentd.runner.sessions import SessionStore
from aiwm_agentd.workers import ConversationKey, Reply, WorkerHealth

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

log = logging.getLogger("aiwm_agentd.runner")

# Time kept back from the stop deadline to close clients and reap the CLI children.
_CLOSE_RESERVE = 2.0


@dataclass(eq=False)
class _Item:
    key: ConversationKey
    text: str
    future: concurrent.futures.Future[Reply]
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class _Conversation:
    key: ConversationKey
    queue: deque[_Item] = field(default_factory=deque)
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




MCP_STATUS_POLL = 0.5  # seconds between MCP status reads while a server is still pending
MCP_STATUS_WAIT = 30.0  # how long a pending server is watched after a client connected


class ClaudeRunner:
    """Worker (start/apply/health/stop) and Runner (submit/reset/interrupt/queue_depth/busy) in one."""

    name = "claude"
    # Tests replace the SDK client with a stub (same connect/query/receive_response/interrupt/disconnect).
    client_factory: Callable[[ClaudeAgentOptions], Any] | None = None
    # Seconds the SDK import waits for the bots to connect first (a message cuts the wait short).
    import_delay: float = 1.5
    # Measures one CLI process tree in bytes; tests inject fixed figures.
    measure_rss: Callable[[int], int] = staticmethod(memory.tree_rss)

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._generation = 0
        self._lock = threading.Lock()
        self._pending: dict[ConversationKey, int] = {}
        self._outstanding: set[_Item] = set()  # accepted, not answered yet
        self._refused = 0
        self._refusing: dict[ConversationKey, int] = {}  # refusals per conversation until it drains
        self._running_turns = 0
        self._live_clients = 0
        self._warm_rss = 0  # bytes, all clients, last measured
        self._budget_closes = 0
        self._child_pids: set[int] = set()
        self._state = "starting"
        self._detail = ""
        self._closing = False
        self._loop_thread = LoopThread("claude-runner", request_stop=self._loop_begin_stop,
                                       on_exit=self._after_loop)
        self._stop_deadline: float | None = None
        self._paths = RunnerPaths.for_state_dir(config.state_dir)
        self._sessions: SessionStore | None = None
        # loop-thread state
        self._loop_conversations: dict[ConversationKey, _Conversation] = {}
        self._loop_changed: asyncio.Condition | None = None
        self._loop_turns = 0
        self._loop_discovered: dict[str, tuple[str, ...]] = {}
        # MCP servers as the CLI last reported them (server -> "connected" / "failed" / ...), and the MCP tools
        # the model can really call; replaced whole (never mutated) so other threads read them safely.
        self.mcp_status: dict[str, str] = {}
        self.mcp_callable: tuple[str, ...] = ()
        self._mcp_logged: dict[str, str] = {}
        self._loop_stopped: asyncio.Event | None = None
        self._loop_background: set[asyncio.Task[None]] = set()
        self._loop_import_now: asyncio.Event | None = None
        self._loop_rss_estimate = 0  # bytes a new client is expected to take: the largest tree measured
        self._sandbox = RunnerSandbox()
        self._warn_config(config)

    # ---------------------------------------------------------------------------------- Worker

    def start(self) -> None:
        """Start the loop thread and return at once; again after stop() or a death. RuntimeError if running."""
        if self._loop_thread.running:
            raise RuntimeError("the Claude runner is already running")
        self._paths.create()
        self._sessions = SessionStore(self._paths.sessions_dir)
        self._sandbox.start(self._config, self._paths)
        with self._lock:
            self._closing = False
            self._state, self._detail = "starting", ""
            self._running_turns = self._live_clients = 0
        self._stop_deadline = None
        # Fresh loop-thread state for every run (asyncio primitives bind to a loop on first use).
        self._loop_conversations = {}
        self._loop_changed = asyncio.Condition()
        self._loop_stopped = asyncio.Event()
        self._loop_turns = 0
        self._loop_background = set()
        self._loop_import_now = asyncio.Event()
        self._loop_rss_estimate = 0
        self._loop_thread.start(self._loop_main)

    def apply(self, config: AgentConfig) -> None:
        with self._lock:
            old = self._config
            self._config = config
            if (old.claude, old.instruction) != (config.claude, config.instruction):
                self._generation += 1
        self._warn_config(config, old)
        self._sandbox.set_upstream(config)
        with contextlib.suppress(LoopNotRunning):
            self._loop_thread.call_soon(self._loop_notify)

    def health(self) -> WorkerHealth:
        with self._lock:
            extra: dict[str, Any] = {
                "pending": sum(self._pending.values()),
                "conversations": sum(1 for n in self._pending.values() if n),
                "running_turns": self._running_turns,
                "clients": self._live_clients,
                "refused": self._refused,
                "refusing_conversations": len(self._refusing),
                "queue_limit": self._config.claude.queue_limit,
                "warm_rss_mib": round(self._warm_rss / memory.MIB, 1),
                "memory_budget_mib": self._config.claude.memory_budget_mib,
                "budget_closes": self._budget_closes,
            }
            sandbox = self._sandbox.health()
            if sandbox is not None:
                extra["sandbox"] = sandbox
            state, detail = self._state, self._detail
        if self._loop_thread.state is LoopState.DIED:
            return WorkerHealth("error", f"runner thread died ({self._loop_thread.death_detail()})",
                                alive=False, extra=extra)
        return WorkerHealth(state, detail, alive=True, extra=extra)  # type: ignore[arg-type]

    def stop(self, deadline: float) -> None:
        with self._lock:
            self._closing = True
        self._stop_deadline = deadline
        self._loop_thread.stop(deadline)
        self._kill_leftover_children()
        self._sandbox.stop(deadline)
        # Only left when the loop thread had to be abandoned; otherwise _after_loop answered everything.
        self._answer_outstanding(failures.SHUTTING_DOWN)
        with self._lock:
            self._state = "stopped"

    # ---------------------------------------------------------------------------------- Runner

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        """Queue a message; the future resolves to its Reply. Never raises, never leaves the future hanging:
        refused (queue_full), shutting_down and not_running are replies too, resolved at once."""
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        item = _Item(conversation, text, future)
        with self._lock:
            refusal = self._admit(item)
        if refusal is not None:
            future.set_result(_failure_reply(refusal))
            return future
        try:
            self._loop_thread.call_soon(self._loop_enqueue, conversation, item)
        except LoopNotRunning:
            self._finish(item, _failure_reply(failures.NOT_RUNNING))
        return future

    def _admit(self, item: _Item) -> Failure | None:
        """Under `_lock`: count `item` as accepted, or say why it is refused."""
        if self._closing:
            return failures.SHUTTING_DOWN
        key, limit = item.key, self._config.claude.queue_limit
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

    def reset(self, conversation: ConversationKey) -> None:
        """Forget the conversation's session: the next message starts a new one (/new)."""
        if self._sessions is not None:
            self._sessions.delete(str(conversation))
        with contextlib.suppress(LoopNotRunning):
            self._loop_thread.call_soon(self._loop_reset, conversation)

    def interrupt(self, conversation: ConversationKey) -> bool:
        """Stop the turn running for this conversation (/stop); queued messages are still answered."""
        try:
            return self._loop_thread.submit(self._loop_interrupt(conversation)).result(timeout=10)
        except (LoopNotRunning, concurrent.futures.TimeoutError):
            return False

    def queue_depth(self, conversation: ConversationKey | None = None) -> int:
        """Messages not answered yet (queued plus running), for one conversation or all."""
        with self._lock:
            if conversation is None:
                return sum(self._pending.values())
            return self._pending.get(conversation, 0)

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(self._pending.values())

    # ---------------------------------------------------------------------------------- thread

    async def _loop_main(self) -> None:
        assert self._loop_stopped is not None and self._loop_import_now is not None
        with self._lock:
            self._detail = "importing the Claude Agent SDK after the bots connect"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loop_import_now.wait(), self.import_delay)
        if not self._loop_stopped.is_set():
            with self._lock:
                self._detail = "importing the Claude Agent SDK"
            try:
                import_sdk()
            except ImportError as exc:
                with self._lock:
                    self._state, self._detail = "error", f"claude-agent-sdk not importable: {exc}"
            else:
                with self._lock:
                    self._state, self._detail = "ok", ""
        await self._loop_stopped.wait()
        await self._loop_finish()

    def _finish(self, item: _Item, reply: Reply | None) -> None:
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

    def _answer_outstanding(self, failure: Failure) -> None:
        """Answer every accepted message that no loop will answer any more."""
        with self._lock:
            items = list(self._outstanding)
        for item in items:
            self._finish(item, _failure_reply(failure))

    def _after_loop(self) -> None:
        """On the loop thread once its loop is closed, however the run ended (stop or death)."""
        with self._lock:
            closing = self._closing
        self._answer_outstanding(failures.SHUTTING_DOWN if closing else failures.NOT_RUNNING)
        if not closing:  # died: its clients' CLI processes lost their parent side
            self._kill_leftover_children()
            with self._lock:
                self._running_turns = self._live_clients = 0

    def _loop_notify(self) -> None:
        changed = self._loop_changed
        if changed is not None:
            task = asyncio.ensure_future(_notify(changed))
            self._loop_background.add(task)
            task.add_done_callback(self._loop_background.discard)

    def _loop_enqueue(self, key: ConversationKey, item: _Item) -> None:
        if self._loop_stopped is None or self._loop_stopped.is_set():
            self._finish(item, _failure_reply(failures.SHUTTING_DOWN))
            return
        conv = self._loop_conversations.get(key)
        if conv is None:
            conv = self._loop_conversations[key] = _Conversation(key)
        conv.queue.append(item)
        conv.wakeup.set()
        if self._loop_import_now is not None:
            self._loop_import_now.set()  # somebody is waiting: import the SDK now
        if conv.task is None:
            conv.task = asyncio.ensure_future(self._loop_worker(conv))

    def _loop_reset(self, key: ConversationKey) -> None:
        conv = self._loop_conversations.get(key)
        if conv is not None:
            conv.reset_requested = True
            conv.wakeup.set()
            self._loop_notify()

    async def _loop_interrupt(self, key: ConversationKey) -> bool:
        conv = self._loop_conversations.get(key)
        if conv is None or not conv.in_turn or conv.client is None:
            return False
        conv.interrupted = True
        try:
            await asyncio.wait_for(conv.client.interrupt(), timeout=5)
        except Exception as exc:
            log.warning("[%s] interrupt failed (%s); ending the turn", key, logs.mask(str(exc)))
            if conv.turn_timeout is not None:
                conv.turn_timeout.reschedule(asyncio.get_running_loop().time())
        return True

    # ---------------------------------------------------------------------------------- workers

    async def _loop_worker(self, conv: _Conversation) -> None:
        stopping = self._loop_stopped
        assert stopping is not None
        try:
            while not stopping.is_set():
                if conv.reset_requested or conv.close_requested:
                    if conv.reset_requested and self._sessions is not None:
                        # again: a turn that was running when reset() came in stored its session id
                        self._sessions.delete(str(conv.key))
                    conv.reset_requested = conv.close_requested = False
                    await self._loop_close_client(conv)
                if not conv.queue:
                    conv.wakeup.clear()
                    idle = self._config.claude.idle_timeout
                    try:
                        await asyncio.wait_for(conv.wakeup.wait(), timeout=idle)
                    except TimeoutError:
                        if not conv.queue:
                            log.debug("[%s] idle for %.0f s; closing its client", conv.key, idle)
                            break
                    continue
                if not await self._loop_acquire_turn(conv):
                    continue
                try:
                    if not conv.queue:  # emptied by stop() while we waited for the slot
                        continue
                    item = conv.queue.popleft()
                    if not item.future.set_running_or_notify_cancel():
                        self._finish(item, None)
                        continue
                    try:
                        reply = await self._loop_turn(conv, item)
                    except BaseException:  # cancelled at the end of a shutdown, or a bug: still answer
                        self._finish(item, _failure_reply(
                            failures.SHUTTING_DOWN if stopping.is_set() else failures.CRASHED))
                        raise
                    self._finish(item, reply)
                finally:
                    await self._loop_release_turn()
                self._loop_trim_to_budget(conv)
        finally:
            await self._loop_close_client(conv, fast=stopping.is_set())
            conv.task = None
            if conv.queue and not stopping.is_set():
                conv.task = asyncio.ensure_future(self._loop_worker(conv))
            elif not conv.queue:
                self._loop_conversations.pop(conv.key, None)

    async def _loop_acquire_turn(self, conv: _Conversation) -> bool:
        """Wait for a turn slot; False when a close of this conversation's client was asked meanwhile."""
        changed = self._loop_changed
        assert changed is not None
        async with changed:
            while self._loop_turns >= self._config.claude.max_concurrency:
                if (conv.close_requested or conv.reset_requested) and conv.client is not None:
                    return False
                if self._loop_stopped is not None and self._loop_stopped.is_set():
                    return False
                await changed.wait()
            self._loop_turns += 1
        with self._lock:
            self._running_turns = self._loop_turns
        return True

    async def _loop_release_turn(self) -> None:
        changed = self._loop_changed
        assert changed is not None
        async with changed:
            self._loop_turns -= 1
            changed.notify_all()
        with self._lock:
            self._running_turns = self._loop_turns

    async def _loop_reserve_client(self, conv: _Conversation) -> None:
        """Wait for room under max_clients, asking the least recently used idle client to close."""
        changed = self._loop_changed
        assert changed is not None
        async with changed:
            while True:
                if self._live_clients_count() >= self._config.claude.max_clients:
                    idle = [c for c in self._loop_conversations.values()
                            if c is not conv and c.client is not None and not c.in_turn and not c.close_requested]
                    if idle:
                        self._loop_request_close(min(idle, key=lambda c: c.last_used))
                    await changed.wait()
                    continue
                # Room for the new client's expected memory: close idle ones and wait until they are gone.
                self._loop_trim_to_budget(conv, incoming=self._loop_rss_estimate)
                if any(c.close_requested and c.client is not None and c is not conv
                       for c in self._loop_conversations.values()):
                    await changed.wait()
                    continue
                break
            with self._lock:
                self._live_clients += 1

    def _loop_request_close(self, victim: _Conversation) -> None:
        victim.close_requested = True
        victim.wakeup.set()
        changed = self._loop_changed
        if changed is not None and changed.locked():
            changed.notify_all()  # the victim may be waiting for a turn slot
        else:
            self._loop_notify()

    def _loop_trim_to_budget(self, keep: _Conversation, incoming: int = 0) -> None:
        """Measure every warm client; ask the least recently used idle ones to close while the total plus
        `incoming` exceeds the budget. `keep` (the conversation being served) is never asked."""
        warm = [c for c in self._loop_conversations.values() if c.client is not None]
        for c in warm:
            if c.client_pid is not None:
                c.rss = self.measure_rss(c.client_pid)
                self._loop_rss_estimate = max(self._loop_rss_estimate, c.rss)
        with self._lock:
            self._warm_rss = sum(c.rss for c in warm)
        budget = self._config.claude.memory_budget_mib * memory.MIB
        if budget <= 0:
            return
        clients = [memory.WarmClient(c.key, c.last_used, c.rss,
                                     closable=(c is not keep and not c.in_turn and not c.queue
                                               and not c.close_requested and not c.reset_requested))
                   for c in warm if not (c.close_requested and c is not keep)]
        victims = memory.choose_victims(clients, incoming, budget)
        for key in victims:
            victim = self._loop_conversations[key]
            log.info("[%s] closing its idle Claude process (%.0f MiB) to stay within the %d MiB memory budget",
                     key, victim.rss / memory.MIB, self._config.claude.memory_budget_mib)
            with self._lock:
                self._budget_closes += 1
            self._loop_request_close(victim)

    def _live_clients_count(self) -> int:
        with self._lock:
            return self._live_clients

    async def _loop_unreserve_client(self) -> None:
        changed = self._loop_changed
        assert changed is not None
        async with changed:
            with self._lock:
                self._live_clients -= 1
            changed.notify_all()

    # ---------------------------------------------------------------------------------- one turn

    async def _loop_turn(self, conv: _Conversation, item: _Item) -> Reply:
        config = self._config
        started = time.monotonic()
        conv.in_turn, conv.interrupted = True, False
        fresh = False
        try:
            async with asyncio.timeout(config.claude.turn_timeout) as scope:
                conv.turn_timeout = scope
                if self._stop_deadline is not None:
                    scope.reschedule(self._loop_deadline_time(self._stop_deadline))
                if conv.client is not None and conv.client_generation != self._generation:
                    log.info("[%s] configuration changed; restarting its client", conv.key)
                    await self._loop_close_client(conv)
                if conv.client is None:
                    fresh = await self._loop_connect(conv)
                reply = await self._loop_exchange(conv, item.text, started)
        except TimeoutError:
            if self._stop_deadline is not None:
                failure = failures.SHUTTING_DOWN
            elif conv.interrupted:
                failure = failures.INTERRUPTED
            else:
                failure = failures.timeout(config.claude.turn_timeout)
            log.warning("[%s] turn ended: %s after %.1f s", conv.key, failure.code, time.monotonic() - started)
            await self._loop_close_client(conv, fast=True)
            reply = _failure_reply(failure, started)
        except _StartFailure as exc:
            reply = _failure_reply(exc.failure, started)
        except Exception as exc:
            failure = failures.classify(str(exc), getattr(exc, "api_error_status", None))
            log.warning("[%s] turn failed (%s): %s", conv.key, failure.code,
                        logs.mask(f"{type(exc).__name__}: {exc}"))
            await self._loop_close_client(conv, fast=True)
            reply = _failure_reply(failure, started)
        finally:
            conv.in_turn, conv.turn_timeout = False, None
            conv.last_used = time.monotonic()
        if fresh:
            reply = Reply(f"{failures.FRESH_SESSION_NOTE}\n\n{reply.text}", reply.session_id, reply.error,
                          True, reply.duration_s)
        log.info("[%s] turn done in %.2f s (waited %.2f s)%s", conv.key, reply.duration_s,
                 started - item.submitted, f": {reply.error}" if reply.error else "")
        return reply

    def _loop_deadline_time(self, deadline: float) -> float:
        """A time.monotonic() deadline, minus the close reserve, on the loop's clock."""
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.0, deadline - _CLOSE_RESERVE - time.monotonic())

    async def _loop_connect(self, conv: _Conversation) -> bool:
        """Connect a client for the conversation, resuming its session; True when a resume failed."""
        await self._loop_reserve_client(conv)
        connected = False
        try:
            sessions = self._sessions
            resume = sessions.get(str(conv.key)) if (sessions and self._config.claude.resume) else None
            try:
                await self._loop_open_client(conv, resume)
                connected = True
                return False
            except Exception as exc:
                if resume is None:
                    raise
                first_line = (logs.mask(str(exc)).splitlines() or [type(exc).__name__])[0]
                log.warning("[%s] could not resume session %s (%s); starting a fresh one",
                            conv.key, resume, first_line)
                if sessions is not None:
                    sessions.delete(str(conv.key))
            await self._loop_open_client(conv, None)
            connected = True
            return True
        except Exception as exc:
            failure = failures.classify(str(exc))
            if failure is failures.CRASHED:
                failure = failures.CANNOT_START
            log.error("[%s] could not start Claude Code: %s", conv.key,
                      logs.mask(f"{type(exc).__name__}: {exc}"))
            raise _StartFailure(failure) from exc
        finally:
            if not connected:
                await self._loop_unreserve_client()

    async def _loop_open_client(self, conv: _Conversation, resume: str | None) -> None:
        from claude_agent_sdk import ClaudeSDKClient

        key = conv.key

        def on_stderr(line: str) -> None:
            log.warning("[%s] claude: %s", key, logs.mask(line))

        child = self._sandbox.child(str(key))
        inputs = OptionInputs(resume=resume, stderr=on_stderr, hidden_tools=self._loop_hidden_tools(),
                              sandbox=child)
        generation = self._generation
        options = build_options(self._config, self._paths, inputs)
        client = (self.client_factory or ClaudeSDKClient)(options)
        try:
            await client.connect()
        except BaseException:
            self._forget_pid(client)
            if child is not None:
                self._sandbox.revoke(child.token)
            raise
        conv.client, conv.client_generation = client, generation
        conv.client_token = child.token if child is not None else ""
        conv.client_pid = _client_pid(client)
        if conv.client_pid is not None:
            with self._lock:
                self._child_pids.add(conv.client_pid)
        if self._config.claude.mcp_servers:  # every client: the status is shown, the names guard the calls
            await self._loop_discover_mcp_tools(client)

    def _loop_hidden_tools(self) -> list[str]:
        return plan_tools(self._config.claude).hidden_tools(self._loop_discovered)

    async def _loop_discover_mcp_tools(self, client: ClaudeSDKClient) -> None:
        """Read the MCP status now and, while a server is still `pending` (the CLI connects them in the
        background), again every MCP_STATUS_POLL seconds for up to MCP_STATUS_WAIT, without delaying the turn."""
        if await self._loop_read_mcp_status(client):
            task = asyncio.get_running_loop().create_task(self._loop_poll_mcp_status(client))
            self._loop_background.add(task)
            task.add_done_callback(self._loop_background.discard)

    async def _loop_poll_mcp_status(self, client: ClaudeSDKClient) -> None:
        deadline = time.monotonic() + MCP_STATUS_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(MCP_STATUS_POLL)
            if not await self._loop_read_mcp_status(client):
                return

    async def _loop_read_mcp_status(self, client: ClaudeSDKClient) -> bool:
        """Learn the MCP servers' state and tool names: later clients hide the tools not whitelisted, and a
        server the CLI could not use (e.g. a controller that rejects `notifications/initialized`) is logged
        once and shown, instead of the agent silently having none of its tools."""
        try:
            status = await asyncio.wait_for(client.get_mcp_status(), timeout=5)
        except Exception as exc:
            log.debug("MCP status unavailable: %s", logs.mask(str(exc)))
            return False
        states = dict(self.mcp_status)
        for server in status.get("mcpServers", []):
            if not isinstance(server, dict):
                continue
            name = str(server.get("name", ""))
            states[name] = str(server.get("status") or "unknown")
            names = tuple(str(t.get("name", "")) for t in server.get("tools") or [] if isinstance(t, dict))
            if names:
                self._loop_discovered[name] = tuple(
                    n if n.startswith("mcp__") else f"mcp__{name}__{n}" for n in names)
            self._log_mcp_state(name, states[name], len(names))
        hidden = set(self._loop_hidden_tools())
        self.mcp_status = states
        self.mcp_callable = tuple(sorted(
            t for server, tools in self._loop_discovered.items() if states.get(server) == "connected"
            for t in tools if t not in hidden and f"mcp__{server}" not in hidden))
        return any(state == "pending" for state in states.values())

    def _log_mcp_state(self, server: str, state: str, tools: int) -> None:
        """Once per change of a server's state."""
        if self._mcp_logged.get(server) == state or state == "pending":
            return
        self._mcp_logged[server] = state
        if state == "connected":
            log.info("MCP server %s connected (%d tools)", server, tools)
        else:
            log.warning("MCP server %s is %s: the model has none of its tools (check the server URL and that "
                        "it accepts the agent token)", server, state)

    async def _loop_exchange(self, conv: _Conversation, text: str, started: float) -> Reply:
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
                if session_id and self._sessions is not None:
                    self._sessions.set(str(conv.key), session_id)
            elif isinstance(message, AssistantMessage) and message.parent_tool_use_id is None:
                texts = [block.text for block in message.content if isinstance(block, TextBlock)]
            elif isinstance(message, ResultMessage):
                result = message
        if result is None:
            raise RuntimeError("the Claude Code CLI ended the turn without a result")
        session_id = result.session_id or session_id
        if session_id and self._sessions is not None:
            self._sessions.set(str(conv.key), session_id)
        duration = time.monotonic() - started
        if conv.interrupted:
            return _failure_reply(failures.INTERRUPTED, started, session_id)
        if result.is_error:
            detail = result.result or "; ".join(result.errors or []) or result.subtype
            failure = failures.classify(detail, result.api_error_status)
            log.warning("[%s] turn failed (%s): %s", conv.key, failure.code, logs.mask(str(detail)))
            return _failure_reply(failure, started, session_id)
        answer = (result.result or "\n".join(texts)).strip()
        return Reply(answer or "(no answer)", session_id=session_id, duration_s=duration)

    async def _loop_close_client(self, conv: _Conversation, fast: bool = False) -> None:
        client, pid = conv.client, conv.client_pid
        if client is None:
            return
        conv.client, conv.client_pid = None, None
        token, conv.client_token = conv.client_token, ""
        if fast and pid is not None:
            # Closing gracefully waits up to 5 s for the CLI to exit on stdin EOF; when we are in a hurry
            # (timeout, /stop, shutdown) the turn is abandoned anyway: its whole process tree goes.
            await asyncio.get_running_loop().run_in_executor(None, self._sandbox.kill_tree, pid)
        try:
            await asyncio.wait_for(asyncio.shield(client.disconnect()), timeout=20)
        except Exception as exc:
            log.warning("[%s] closing its client: %s", conv.key, logs.mask(str(exc)))
        if pid is not None:  # background jobs of its tools die with it (its process group)
            await asyncio.get_running_loop().run_in_executor(None, self._sandbox.kill_tree, pid, False)
        self._sandbox.revoke(token)
        if pid is not None and not _pid_alive(pid):
            with self._lock:
                self._child_pids.discard(pid)
        with self._lock:
            self._warm_rss = max(0, self._warm_rss - conv.rss)
        conv.rss = 0
        await self._loop_unreserve_client()

    def _forget_pid(self, client: ClaudeSDKClient) -> None:
        pid = _client_pid(client)
        if pid is not None and not _pid_alive(pid):
            with self._lock:
                self._child_pids.discard(pid)

    # ---------------------------------------------------------------------------------- shutdown

    def _loop_begin_stop(self, deadline: float) -> None:
        """LoopThread's stop hook: answer what waits, bound running turns by `deadline`, end the main task."""
        self._stop_deadline = deadline
        stopping = self._loop_stopped
        if stopping is None or stopping.is_set():
            return
        stopping.set()
        when = self._loop_deadline_time(deadline)
        for conv in self._loop_conversations.values():
            self._fail_queued(conv)
            conv.wakeup.set()
            if conv.turn_timeout is not None:
                conv.turn_timeout.reschedule(min(when, conv.turn_timeout.when() or when))
        self._loop_notify()

    async def _loop_finish(self) -> None:
        tasks = [c.task for c in self._loop_conversations.values() if c.task is not None]
        if tasks:
            remaining = (self._stop_deadline or time.monotonic()) - time.monotonic()
            _done, pending = await asyncio.wait(tasks, timeout=max(0.5, remaining))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=3)

    def _fail_queued(self, conv: _Conversation) -> None:
        """Answer every message still waiting in `conv` with the shutting-down reply."""
        while conv.queue:
            item = conv.queue.popleft()
            if item.future.set_running_or_notify_cancel():
                self._finish(item, _failure_reply(failures.SHUTTING_DOWN))
            else:
                self._finish(item, None)

    def _kill_leftover_children(self) -> None:
        with self._lock:
            pids, self._child_pids = set(self._child_pids), set()
        for pid in pids:
            if _pid_alive(pid):
                log.warning("killing a Claude Code process left behind (pid %d)", pid)
            self._sandbox.kill_tree(pid)  # also when /proc hides it (a tools-user process under ProtectProc=invisible)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    # ---------------------------------------------------------------------------------- misc

    def _warn_config(self, config: AgentConfig, old: AgentConfig | None = None) -> None:
        mode = config.claude.permission_mode
        effective = effective_permission_mode(mode)
        if effective != mode and (old is None or old.claude.permission_mode != mode):
            log.warning("permission mode %s is refused by Claude Code when running as root; using %s",
                        mode, effective)
        plan = plan_tools(config.claude)
        if plan.unknown and (old is None or plan_tools(old.claude).unknown != plan.unknown):
            log.warning("tools not available on this agent (no MCP server configured): %s",
                        ", ".join(plan.unknown))


class _StartFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code)
        self.failure = failure


async def _notify(changed: asyncio.Condition) -> None:
    async with changed:
        changed.notify_all()


def _failure_reply(failure: Failure, started: float | None = None, session_id: str = "") -> Reply:
    duration = time.monotonic() - started if started is not None else 0.0
    return Reply(failure.text, session_id=session_id, error=failure.code, duration_s=duration)


def _client_pid(client: ClaudeSDKClient) -> int | None:
    # The SDK has no public accessor for its CLI child; we need the pid to guarantee none outlives us.
    process = getattr(getattr(client, "_transport", None), "_process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
