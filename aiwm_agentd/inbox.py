"""The durable inbox: every accepted chat message is on disk before its turn starts, done once answered.

One append-only journal per channel (`<state_dir>/inbox/<channel>.jsonl`, mode 0600, in a 0700 directory),
so the API is platform-neutral (discord, telegram, and later the AIWM portal use it the same way). Records:

    {"op": "accept", "key": ..., "conv": ..., "text": ..., "address": {...}, "at": epoch, "attempts": 1}
    {"op": "attempt", "key": ...}          a restart resubmits it (counts towards max_attempts)
    {"op": "done", "key": ..., "at": epoch}
    {"op": "cursor", "name": ..., "value": ...}   where the channel's catch-up resumes (Discord: message id)

`key` is the platform's own dedup key (Telegram chat:message id, a Discord message id): a key already known
(pending or done) is never accepted again, which is what makes redelivered updates and history catch-up
answer each message exactly once. accept/done append one line and fsync it (the message is durable before
its turn starts; a done mark lost to a crash would answer it twice). On open the journal is replayed and
rewritten compactly (pending entries, done keys younger than `retention`, cursors), so it stays bounded.

A failing disk (ENOSPC, EIO, read-only) never raises: the inbox logs once, reports `degraded` (the worker
shows it in /health) and the agent keeps answering live messages without durability until a write succeeds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("aiwm_agentd.inbox")

DEFAULT_RETENTION = 7 * 24 * 3600.0  # done keys kept this long (longer than any catch-up window)
DEFAULT_MAX_PENDING = 1000  # more unanswered messages than this: the oldest are given up (logged)
DEFAULT_MAX_ATTEMPTS = 3  # a message whose turn was started this often without an answer is given up
COMPACT_BYTES = 1 << 20  # rewrite the journal when it grows past this


@dataclass(frozen=True)
class Entry:
    """One accepted, not yet answered message."""

    key: str
    conversation: str  # str(ConversationKey)
    text: str
    address: Mapping[str, str]  # what the platform needs to reply later (chat, message, thread ids)
    accepted_at: float  # epoch seconds
    attempts: int = 1
    seq: int = 0  # acceptance order (replays go in this order)


@dataclass
class _State:
    pending: dict[str, Entry] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)  # key -> done at (epoch)
    cursors: dict[str, str] = field(default_factory=dict)


class Inbox:
    """Thread-safe; every method is cheap except the fsync of accept/done/attempt (~1 ms on a local disk)."""

    def __init__(self, directory: Path, channel: str, *, retention: float = DEFAULT_RETENTION,
                 max_pending: int = DEFAULT_MAX_PENDING, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 clock: Callable[[], float] = time.time, fsync: bool = True) -> None:
        self.path = directory / f"{channel}.jsonl"
        self.channel = channel
        self.retention = retention
        self.max_pending = max_pending
        self.max_attempts = max_attempts
        self._clock = clock
        self._fsync = fsync
        self._lock = threading.Lock()
        self._state = _State()
        self._seq = 0
        self._file: Any = None
        self._bytes = 0
        self.degraded = ""  # "" when healthy; else what failed (shown in /health)
        self.given_up: list[Entry] = []  # pruned unanswered entries, for the caller to report
        with self._lock:
            self._open()

    # ------------------------------------------------------------------------------------------ queries

    def known(self, key: str) -> bool:
        """True when `key` was accepted before (pending or done): do not answer it again."""
        with self._lock:
            return key in self._state.pending or key in self._state.done

    def pending(self) -> list[Entry]:
        """Unanswered entries in acceptance order."""
        with self._lock:
            return sorted(self._state.pending.values(), key=lambda e: e.seq)

    def cursor(self, name: str) -> str:
        with self._lock:
            return self._state.cursors.get(name, "")

    # ------------------------------------------------------------------------------------------ updates

    def accept(self, key: str, conversation: str, text: str, address: Mapping[str, str],
               accepted_at: float | None = None) -> bool:
        """Record a message before its turn starts. False when `key` is already known (a duplicate).

        A disk failure still returns True (the message is answered, just not durably) and degrades."""
        with self._lock:
            if key in self._state.pending or key in self._state.done:
                return False
            self._seq += 1
            entry = Entry(key, conversation, text, dict(address),
                          self._clock() if accepted_at is None else accepted_at, 1, self._seq)
            self._state.pending[key] = entry
            self._append(_accept_record(entry))
            self._bound_pending()
            return True

    def attempt(self, key: str) -> Entry | None:
        """Count one more attempt of a pending entry (before resubmitting it); None if it is not pending."""
        with self._lock:
            entry = self._state.pending.get(key)
            if entry is None:
                return None
            entry = replace(entry, attempts=entry.attempts + 1)
            self._state.pending[key] = entry
            self._append({"op": "attempt", "key": key})
            return entry

    def done(self, key: str) -> None:
        """The answer was delivered (or given up with an honest reply): never answer `key` again."""
        with self._lock:
            if self._state.pending.pop(key, None) is None and key in self._state.done:
                return
            now = self._clock()
            self._state.done[key] = now
            self._append({"op": "done", "key": key, "at": now})
            if self._bytes > COMPACT_BYTES:
                self._compact()

    def set_cursor(self, name: str, value: str, *, sync: bool = False) -> None:
        """Remember where catch-up resumes; not fsynced unless asked (losing one only re-reads history,
        and the dedup keys keep that from answering twice)."""
        with self._lock:
            if self._state.cursors.get(name) == value:
                return
            self._state.cursors[name] = value
            self._append({"op": "cursor", "name": name, "value": value}, sync=sync)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:
                    self._degrade("close", exc)
                self._file = None

    # ------------------------------------------------------------------------------------------ storage

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._load()
            self._compact()
        except OSError as exc:
            self._degrade("open", exc)

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.readlines()
        except FileNotFoundError:
            return
        state = _State()
        torn = 0
        for line in lines:
            try:
                record = json.loads(line)
                self._replay(state, record)
            except (ValueError, KeyError, TypeError):
                torn += 1  # a line cut by a crash or a full disk: skip it
        if torn:
            log.warning("inbox %s: skipped %d unreadable line(s)", self.channel, torn)
        self._state = state

    def _replay(self, state: _State, record: dict[str, Any]) -> None:
        op, key = record["op"], record.get("key", "")
        if op == "accept":
            self._seq += 1
            state.pending[key] = Entry(key, str(record["conv"]), str(record["text"]),
                                       {str(k): str(v) for k, v in dict(record["address"]).items()},
                                       float(record["at"]), int(record.get("attempts", 1)), self._seq)
        elif op == "attempt" and key in state.pending:
            state.pending[key] = replace(state.pending[key], attempts=state.pending[key].attempts + 1)
        elif op == "done":
            state.pending.pop(key, None)
            state.done[key] = float(record["at"])
        elif op == "cursor":
            state.cursors[str(record["name"])] = str(record["value"])

    def _compact(self) -> None:
        """Rewrite the journal with what is live: pending entries, recent done keys, cursors."""
        horizon = self._clock() - self.retention
        self._state.done = {k: at for k, at in self._state.done.items() if at >= horizon}
        records: list[dict[str, Any]] = [_accept_record(e) for e in
                                         sorted(self._state.pending.values(), key=lambda e: e.seq)]
        records += [{"op": "done", "key": k, "at": at} for k, at in self._state.done.items()]
        records += [{"op": "cursor", "name": n, "value": v} for n, v in self._state.cursors.items()]
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        tmp = self.path.with_suffix(".tmp")
        if self._file is not None:
            self._file.close()
            self._file = None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._fsync_dir()
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open for appends)
        os.chmod(self.path, 0o600)
        self._bytes = len(data)

    def _append(self, record: dict[str, Any], sync: bool = True) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            if self._file is None:
                self._compact()  # reopen after an earlier failure
            self._file.write(line)
            if sync and self._fsync:
                os.fsync(self._file.fileno())
            self._bytes += len(line)
        except OSError as exc:
            self._degrade("write", exc)
            return
        if self.degraded:
            log.warning("inbox %s: writing works again; messages are durable again", self.channel)
            self.degraded = ""

    def _fsync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _degrade(self, what: str, exc: OSError) -> None:
        detail = f"inbox {what} failed ({os.strerror(exc.errno) if exc.errno else type(exc).__name__}): " \
                 "messages are answered but not kept across a restart"
        if detail != self.degraded:
            log.error("inbox %s: %s", self.channel, detail)
        self.degraded = detail
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _bound_pending(self) -> None:
        while len(self._state.pending) > self.max_pending:
            oldest = min(self._state.pending.values(), key=lambda e: e.seq)
            log.warning("inbox %s: more than %d unanswered messages; giving up the oldest (%s)",
                        self.channel, self.max_pending, oldest.conversation)
            del self._state.pending[oldest.key]
            now = self._clock()
            self._state.done[oldest.key] = now
            self._append({"op": "done", "key": oldest.key, "at": now})
            self.given_up.append(oldest)


def _accept_record(entry: Entry) -> dict[str, Any]:
    return {"op": "accept", "key": entry.key, "conv": entry.conversation, "text": entry.text,
            "address": dict(entry.address), "at": entry.accepted_at, "attempts": entry.attempts}


def open_inbox(state_dir: Path, channel: str, **kwargs: Any) -> Inbox:
    """The inbox of one chat channel under the agent's state directory."""
    return Inbox(state_dir / "inbox", channel, **kwargs)
