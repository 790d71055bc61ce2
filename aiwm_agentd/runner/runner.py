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

This module is the dispatcher: the public API, the run's lifecycle, each conversation's worker loop and the
shutdown. Each other job is a helper module: ledger.py (accepted messages until answered, refusals),
conversation.py (the loop-thread records), capacity.py (turn slots, client slots, memory budget), clients.py
(open/close a client, no CLI left behind), turn.py (one turn), mcp_status.py (what the MCP servers offer),
sandboxing.py (the tool sandbox), sdk_import.py (the SDK import).

All state in `self._run` (a `LoopRun`, fresh at every start) and the `_loop_*` methods are touched only on the
loop thread; `submit()` and friends hand work over with `LoopThread.call_soon`. The counters read by `busy` /
`queue_depth()` / `health()` (the ledger's and the capacity's) are guarded by `_lock`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.loopthread import LoopNotRunning, LoopState, LoopThread
from aiwm_agentd.runner import failures, memory
from aiwm_agentd.runner.capacity import Capacity
from aiwm_agentd.runner.clients import Clients
from aiwm_agentd.runner.conversation import Conversation, Item, LoopRun, failure_reply
from aiwm_agentd.runner.ledger import Ledger
from aiwm_agentd.runner.mcp_status import McpStatus
from aiwm_agentd.runner.options import RunnerPaths, effective_permission_mode, plan_tools
from aiwm_agentd.runner.sandboxing import RunnerSandbox
from aiwm_agentd.runner.sdk_import import import_sdk
from aiwm_agentd.runner.sessions import SessionStore
from aiwm_agentd.runner.turn import Turns, interrupt, loop_deadline_time
from aiwm_agentd.workers import ConversationKey, Reply, WorkerHealth

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions

log = logging.getLogger("aiwm_agentd.runner")


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
        self._ledger = Ledger(self._lock, lambda: self._config.claude.queue_limit)
        self._state = "starting"
        self._detail = ""
        self._loop_thread = LoopThread("claude-runner", request_stop=self._loop_begin_stop,
                                       on_exit=self._after_loop)
        self._stop_deadline: float | None = None
        self._paths = RunnerPaths.for_state_dir(config.state_dir)
        self._sessions: SessionStore | None = None
        self._run: LoopRun | None = None  # loop-thread state of the current run
        self._sandbox = RunnerSandbox()
        self._mcp = McpStatus(lambda: self._config.claude)
        self._capacity = Capacity(self._lock, lambda: self._config.claude,
                                  lambda pid: self.measure_rss(pid) + self._sandbox.extra_rss(pid))
        self._clients = Clients(lock=self._lock, config=lambda: self._config, generation=lambda: self._generation,
                                paths=self._paths, sessions=lambda: self._sessions, sandbox=self._sandbox,
                                capacity=self._capacity, mcp=self._mcp, client_factory=lambda: self.client_factory)
        self._turns = Turns(clients=self._clients, config=lambda: self._config, generation=lambda: self._generation,
                           sessions=lambda: self._sessions, stop_deadline=lambda: self._stop_deadline)
        self._warn_config(config)

    @property
    def mcp_status(self) -> dict[str, str]:
        """MCP servers as the CLI last reported them (server -> "connected" / "failed" / ...)."""
        return self._mcp.status

    @property
    def mcp_callable(self) -> tuple[str, ...]:
        """The MCP tools the model can really call."""
        return self._mcp.callable

    # ---------------------------------------------------------------------------------- Worker

    def start(self) -> None:
        """Start the loop thread and return at once; again after stop() or a death. RuntimeError if running."""
        if self._loop_thread.running:
            raise RuntimeError("the Claude runner is already running")
        self._paths.create()
        self._sessions = SessionStore(self._paths.sessions_dir)
        self._sandbox.start(self._config, self._paths)
        with self._lock:
            self._ledger.closing = False
            self._state, self._detail = "starting", ""
            self._capacity.reset_counts()
        self._stop_deadline = None
        self._run = LoopRun()  # fresh for every run (asyncio primitives bind to a loop on first use)
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
            capacity, ledger = self._capacity, self._ledger.health_fields()
            extra: dict[str, Any] = {
                "pending": ledger["pending"],
                "conversations": ledger["conversations"],
                "running_turns": capacity.running_turns,
                "clients": capacity.live_clients,
                "refused": ledger["refused"],
                "refusing_conversations": ledger["refusing_conversations"],
                "queue_limit": self._config.claude.queue_limit,
                "warm_rss_mib": round(capacity.warm_rss / memory.MIB, 1),
                "memory_budget_mib": self._config.claude.memory_budget_mib,
                "budget_closes": capacity.budget_closes,
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
            self._ledger.closing = True
        self._stop_deadline = deadline
        self._loop_thread.stop(deadline)
        self._clients.kill_leftover_children()
        self._sandbox.stop(deadline)
        # Only left when the loop thread had to be abandoned; otherwise _after_loop answered everything.
        self._ledger.answer_outstanding(failures.SHUTTING_DOWN)
        with self._lock:
            self._state = "stopped"

    # ---------------------------------------------------------------------------------- Runner

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        """Queue a message; the future resolves to its Reply. Never raises, never leaves the future hanging:
        refused (queue_full), shutting_down and not_running are replies too, resolved at once."""
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        item = Item(conversation, text, future)
        with self._lock:
            refusal = self._ledger.admit(item)
        if refusal is not None:
            future.set_result(failure_reply(refusal))
            return future
        try:
            self._loop_thread.call_soon(self._loop_enqueue, conversation, item)
        except LoopNotRunning:
            self._ledger.finish(item, failure_reply(failures.NOT_RUNNING))
        return future

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
        return self._ledger.depth(conversation)

    @property
    def busy(self) -> bool:
        return self._ledger.busy()

    # ---------------------------------------------------------------------------------- thread

    async def _loop_main(self) -> None:
        run = self._run
        assert run is not None
        with self._lock:
            self._detail = "importing the Claude Agent SDK after the bots connect"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.import_now.wait(), self.import_delay)
        if not run.stopped.is_set():
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
        await run.stopped.wait()
        await self._loop_finish(run)

    def _after_loop(self) -> None:
        """On the loop thread once its loop is closed, however the run ended (stop or death)."""
        with self._lock:
            closing = self._ledger.closing
        self._ledger.answer_outstanding(failures.SHUTTING_DOWN if closing else failures.NOT_RUNNING)
        if not closing:  # died: its clients' CLI processes lost their parent side
            self._clients.kill_leftover_children()
            with self._lock:
                self._capacity.reset_counts()

    def _loop_notify(self) -> None:
        if self._run is not None:
            self._run.notify()

    def _loop_enqueue(self, key: ConversationKey, item: Item) -> None:
        run = self._run
        if run is None or run.stopped.is_set():
            self._ledger.finish(item, failure_reply(failures.SHUTTING_DOWN))
            return
        conv = run.conversations.get(key)
        if conv is None:
            conv = run.conversations[key] = Conversation(key)
        conv.queue.append(item)
        conv.wakeup.set()
        run.import_now.set()  # somebody is waiting: import the SDK now
        if conv.task is None:
            conv.task = asyncio.ensure_future(self._loop_worker(run, conv))

    def _loop_reset(self, key: ConversationKey) -> None:
        conv = self._run.conversations.get(key) if self._run is not None else None
        if conv is not None:
            conv.reset_requested = True
            conv.wakeup.set()
            self._loop_notify()

    async def _loop_interrupt(self, key: ConversationKey) -> bool:
        conv = self._run.conversations.get(key) if self._run is not None else None
        return conv is not None and await interrupt(conv)

    # ---------------------------------------------------------------------------------- workers

    async def _loop_worker(self, run: LoopRun, conv: Conversation) -> None:
        """The conversation's task: serve its queue one turn at a time, close its client when idle or asked."""
        stopping = run.stopped
        try:
            while not stopping.is_set():
                if conv.reset_requested or conv.close_requested:
                    if conv.reset_requested and self._sessions is not None:
                        # again: a turn that was running when reset() came in stored its session id
                        self._sessions.delete(str(conv.key))
                    conv.reset_requested = conv.close_requested = False
                    await self._clients.close(run, conv)
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
                if not await self._capacity.acquire_turn(run, conv):
                    continue
                try:
                    if not conv.queue:  # emptied by stop() while we waited for the slot
                        continue
                    item = conv.queue.popleft()
                    if not item.future.set_running_or_notify_cancel():
                        self._ledger.finish(item, None)
                        continue
                    try:
                        reply = await self._turns.run(run, conv, item)
                    except BaseException:  # cancelled at the end of a shutdown, or a bug: still answer
                        self._ledger.finish(item, failure_reply(
                            failures.SHUTTING_DOWN if stopping.is_set() else failures.CRASHED))
                        raise
                    self._ledger.finish(item, reply)
                finally:
                    await self._capacity.release_turn(run)
                self._capacity.trim_to_budget(run, conv)
        finally:
            await self._clients.close(run, conv, fast=stopping.is_set())
            conv.task = None
            if conv.queue and not stopping.is_set():
                conv.task = asyncio.ensure_future(self._loop_worker(run, conv))
            elif not conv.queue:
                run.conversations.pop(conv.key, None)

    # ---------------------------------------------------------------------------------- shutdown

    def _loop_begin_stop(self, deadline: float) -> None:
        """LoopThread's stop hook: answer what waits, bound running turns by `deadline`, end the main task."""
        self._stop_deadline = deadline
        run = self._run
        if run is None or run.stopped.is_set():
            return
        run.stopped.set()
        when = loop_deadline_time(deadline)
        for conv in run.conversations.values():
            self._fail_queued(conv)
            conv.wakeup.set()
            if conv.turn_timeout is not None:
                conv.turn_timeout.reschedule(min(when, conv.turn_timeout.when() or when))
        run.notify()

    async def _loop_finish(self, run: LoopRun) -> None:
        tasks = [c.task for c in run.conversations.values() if c.task is not None]
        if tasks:
            remaining = (self._stop_deadline or time.monotonic()) - time.monotonic()
            _done, pending = await asyncio.wait(tasks, timeout=max(0.5, remaining))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=3)

    def _fail_queued(self, conv: Conversation) -> None:
        """Answer every message still waiting in `conv` with the shutting-down reply."""
        while conv.queue:
            item = conv.queue.popleft()
            if item.future.set_running_or_notify_cancel():
                self._ledger.finish(item, failure_reply(failures.SHUTTING_DOWN))
            else:
                self._ledger.finish(item, None)

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
