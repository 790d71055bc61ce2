"""The small interface between the supervisor and everything it runs in a thread.

The supervisor (main thread) calls `start()`, `apply(config)`, `health()` and `stop(deadline)`; it never
touches a worker's event loop (each worker runs one `loopthread.LoopThread`). The lifecycle is guarded:
`start()` returns at once, raises RuntimeError while running, and works again after `stop()` or after the
worker's thread died (`health().alive` False), which is how the supervisor restarts a dead worker.

Workers never call the controller: the only way back to the supervisor is the `DaemonControl`
handle they are given (status for `/status`, a reload request for `/reload`).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from aiwm_agentd.config import AgentConfig

# ok: doing its job. degraded: running but impaired (network outage; the library reconnects itself).
# error: cannot work until the configuration changes (rejected token); restarted with a long backoff.
# starting / stopped: lifecycle.
HealthState = Literal["starting", "ok", "degraded", "error", "stopped"]


@dataclass(frozen=True)
class WorkerHealth:
    state: HealthState
    detail: str = ""
    # False only when the worker's thread died (its loop crashed): the supervisor shows it unhealthy, calls
    # stop() then start() with backoff. stop() does not clear it; the next start() does.
    alive: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.state in ("ok", "starting")


class Worker(Protocol):
    name: str

    def start(self) -> None:
        """Start the worker's thread and return at once (no waiting for its loop or the network).

        Again after stop() or after the thread died; RuntimeError while it is running."""

    def apply(self, config: AgentConfig) -> None:
        """Take a new configuration snapshot; restart only what changed. Must not block for long."""

    def health(self) -> WorkerHealth:
        """Cheap, thread-safe: called by /health and the supervisor loop."""

    def stop(self, deadline: float) -> None:
        """Stop before `deadline` (time.monotonic()); after it, abandon what is left."""


@runtime_checkable
class IntakeWorker(Protocol):
    """A worker that takes messages from people (the platform bots): at stop its intake closes first."""

    def stop_intake(self) -> None:
        """Stop starting turns for new messages (they are kept for after the restart); return at once.
        Running turns go on, and their answers are still delivered until stop()'s deadline."""


@dataclass(frozen=True)
class ConversationKey:
    """One conversation: (platform, chat/channel id[, thread id])."""

    platform: str
    chat_id: str
    thread_id: str = ""

    def __str__(self) -> str:
        base = f"{self.platform}:{self.chat_id}"
        return f"{base}:{self.thread_id}" if self.thread_id else base

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        """Inverse of str(): 'platform:chat[:thread]'. A bare word becomes ('cli', word)."""
        parts = text.split(":", 2)
        if len(parts) == 1:
            return cls("cli", parts[0])
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True)
class Reply:
    """What a turn produced for the user. `error` is set when `text` is an honest failure message
    (runner/failures.py codes: e.g. "queue_full" when the conversation already had queue_limit messages)."""

    text: str
    session_id: str = ""
    error: str = ""
    fresh_session: bool = False
    duration_s: float = 0.0


class Runner(Protocol):
    """What the platform bots need from the Claude runner."""

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        """Never raises and never hangs: refusals (queue_full, not_running, shutting_down) resolve at once."""
        ...

    def reset(self, conversation: ConversationKey) -> None: ...

    def interrupt(self, conversation: ConversationKey) -> bool: ...

    def queue_depth(self, conversation: ConversationKey | None = None) -> int: ...

    @property
    def busy(self) -> bool: ...


class DaemonControl(Protocol):
    """What workers may ask of the supervisor."""

    def status_summary(self) -> dict[str, Any]:
        """agent, controller state, model, ... for chat `/status`."""

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        """Reconnect and apply new configuration; resolves to the list of changes (may be empty)."""
