"""The durable inbox: durable before the turn, done once answered, bounded, private, never crashing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd.inbox import Inbox, open_inbox


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock | None = None, **kw: Any) -> Inbox:
    return open_inbox(tmp_path, "discord", clock=clock or Clock(), **kw)


def test_an_accepted_message_survives_a_restart_until_it_is_done(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    assert inbox.accept("m1", "discord:1", "hello", {"channel": "1", "message": "m1"})
    assert inbox.accept("m2", "discord:1", "again", {"channel": "1", "message": "m2"})
    inbox.done("m1")
    inbox.close()
    reopened = make(tmp_path)
    assert [e.key for e in reopened.pending()] == ["m2"]
    assert reopened.pending()[0].text == "again"
    assert reopened.pending()[0].address == {"channel": "1", "message": "m2"}
    assert reopened.known("m1") and reopened.known("m2")


def test_a_known_key_is_never_accepted_twice(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    assert inbox.accept("m1", "c", "t", {})
    assert not inbox.accept("m1", "c", "t", {})
    inbox.done("m1")
    assert not make(tmp_path).accept("m1", "c", "t", {})


def test_pending_entries_keep_acceptance_order_across_restarts(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    for key in ("b", "a", "c"):
        inbox.accept(key, "c", key, {})
    inbox.close()
    assert [e.key for e in make(tmp_path).pending()] == ["b", "a", "c"]


def test_attempts_are_counted_across_restarts(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    inbox.accept("m", "c", "t", {})
    assert inbox.attempt("m") is not None
    inbox.close()
    again = make(tmp_path)
    entry = again.attempt("m")
    assert entry is not None and entry.attempts == 3
    assert make(tmp_path).pending()[0].attempts == 3
    assert again.attempt("unknown") is None


def test_the_journal_is_private(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    inbox.accept("m", "c", "secret text", {})
    assert stat.S_IMODE(os.stat(inbox.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(inbox.path.parent).st_mode) == 0o700


def test_old_done_keys_are_pruned_when_the_journal_is_reopened(tmp_path: Path) -> None:
    clock = Clock()
    inbox = make(tmp_path, clock, retention=100.0)
    inbox.accept("old", "c", "t", {})
    inbox.done("old")
    clock.now += 50
    inbox.accept("new", "c", "t", {})
    inbox.done("new")
    inbox.close()
    clock.now += 60  # "old" is 110 s old, "new" 60 s
    reopened = make(tmp_path, clock, retention=100.0)
    assert not reopened.known("old") and reopened.known("new")
    assert b'"old"' not in reopened.path.read_bytes()


def test_too_many_pending_gives_up_the_oldest(tmp_path: Path) -> None:
    inbox = make(tmp_path, max_pending=2)
    for key in ("1", "2", "3"):
        inbox.accept(key, "c", key, {})
    assert [e.key for e in inbox.pending()] == ["2", "3"]
    assert [e.key for e in inbox.given_up] == ["1"]
    assert inbox.known("1")


def test_cursors_are_remembered(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    inbox.set_cursor("channel:5", "123")
    inbox.set_cursor("channel:5", "456", sync=True)
    inbox.close()
    assert make(tmp_path).cursor("channel:5") == "456"
    assert make(tmp_path).cursor("other") == ""


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    inbox = make(tmp_path)
    inbox.accept("m1", "c", "t", {})
    inbox.close()
    with open(inbox.path, "ab") as handle:
        handle.write(b'{"op":"accept","key":"m2","co')
    reopened = make(tmp_path)
    assert [e.key for e in reopened.pending()] == ["m1"]
    assert reopened.degraded == ""


def test_a_full_disk_degrades_without_raising_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = make(tmp_path)
    real_fsync = os.fsync
    full = {"on": True}

    def fsync(fd: int) -> None:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert inbox.accept("m1", "c", "t", {})  # still answered, just not durably
    assert "No space left on device" in inbox.degraded
    inbox.done("m1")  # no exception either
    full["on"] = False
    inbox.accept("m2", "c", "t", {})
    assert inbox.degraded == ""
    assert [e.key for e in make(tmp_path).pending()] == ["m2"]


def test_an_unwritable_directory_degrades_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "inbox"
    blocker.write_text("not a directory")
    inbox = open_inbox(tmp_path, "telegram")
    assert inbox.degraded
    assert inbox.accept("m", "c", "t", {})
    assert inbox.pending()[0].key == "m"


def test_the_journal_is_compacted_when_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aiwm_agentd.inbox.COMPACT_BYTES", 2000)
    inbox = make(tmp_path, fsync=False)
    for i in range(100):
        inbox.accept(str(i), "c", "x" * 50, {})
        inbox.done(str(i))
    # the answered messages' texts are gone; only their dedup keys remain
    assert inbox.path.read_bytes().count(b"x" * 50) < 20
    assert make(tmp_path).known("99") and make(tmp_path).pending() == []
