"""Controller calls off the main thread, each with one overall deadline.

The main loop starts a call and goes on pinging the watchdog and handling signals; the outcome comes back
through `collect()`, and the `wake` callback tells the loop it is there. A call still running at its deadline
is aborted (its sockets are cut, so its thread ends at once) and reported as a timeout. Each call has a thread
of its own: a DNS lookup cannot be cut, and an abandoned one must not hold up the next call; it ends by
itself and its late outcome is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiwm_agentd.controller.client import ControllerClient, ControllerError

log = logging.getLogger("aiwm_agentd.controller.calls")

C = TypeVar("C")
Outcome = TypeVar("Outcome")
CallFn = Callable[[float], object]  # the call, given its deadline (time.monotonic())
ABORT_GRACE = 0.05  # the client notices its own deadline first; the abort is the backstop


@dataclass
class _Flight(Generic[C]):
    call: C
    client: ControllerClient
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: object = None


class CallRunner(Generic[C]):
    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._wake = wake
        self._clock = clock
        self._flight: _Flight[C] | None = None

    @property
    def busy(self) -> bool:
        return self._flight is not None

    @property
    def due(self) -> float | None:
        """When the loop must look again even if the call does not finish: its deadline."""
        return self._flight.deadline + ABORT_GRACE if self._flight else None

    def start(self, call: C, client: ControllerClient, fn: CallFn, timeout: float) -> None:
        if self._flight is not None:
            raise RuntimeError("a controller call is already in flight")
        flight = _Flight(call, client, self._clock() + timeout)
        self._flight = flight
        threading.Thread(target=self._run, args=(flight, fn), name="controller-call", daemon=True).start()

    def _run(self, flight: _Flight[C], fn: CallFn) -> None:
        try:
            flight.outcome = fn(flight.deadline)
        except ControllerError as exc:
            flight.outcome = exc
        except Exception as exc:  # a bug must not leave the loop waiting: it becomes a failed call
            log.exception("controller call failed unexpectedly")
            flight.outcome = ControllerError("network", f"unexpected {type(exc).__name__}")
        flight.done.set()
        self._wake()

    def collect(self, now: float | None = None) -> tuple[C, object] | None:
        """The finished (or timed-out) call and its outcome; None while it runs or when there is none."""
        flight = self._flight
        if flight is None:
            return None
        now = self._clock() if now is None else now
        if flight.done.is_set():
            self._flight = None
            return flight.call, flight.outcome
        if now < flight.deadline + ABORT_GRACE:
            return None
        self._flight = None
        flight.client.abort()
        return flight.call, ControllerError("timeout", "no complete answer before the call's deadline")

    def abandon(self) -> None:
        """Drop the call in flight (reload, shutdown): cut its sockets, ignore its outcome."""
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done.is_set():
            flight.client.abort()

    def wait(self, until: float) -> tuple[C, object] | None:
        """Block until the call in flight ends or `until` passes (shutdown only: nothing else to do then)."""
        flight = self._flight
        if flight is None:
            return None
        flight.done.wait(max(0.0, min(until, flight.deadline) - self._clock()))
        if flight.done.is_set():
            return self.collect()
        self.abandon()
        return flight.call, ControllerError("timeout", "no complete answer before the call's deadline")
