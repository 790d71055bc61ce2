"""The memory budget of kept-warm Claude Code processes: measure each CLI process tree, pick what to close.

A warm CLI (node + its helpers) holds ~200-230 MiB whether or not anyone talks to it; it is what makes a
follow-up 10x faster, and it is also most of an idle agent's memory. The runner therefore keeps warm processes
only while their measured resident memory fits a budget, closing the least recently used idle ones first. A
conversation in a turn, or with messages waiting, is never a victim: the budget only trims what is idle.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

MIB = 1024 * 1024
def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 when it is gone).

    Walks /proc/PID/task/TID/children (a few small reads) instead of psutil's children(), which scans every
    process on the machine; falls back to psutil where the kernel does not provide those files."""
    total = 0
    seen: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss(current)
        children = _children(current)
        if children is None:
            return _tree_rss_psutil(pid)
        todo.extend(children)
    return total


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _children(pid: int) -> list[int] | None:
    """Child pids from /proc; [] when the process is gone, None when the kernel lacks the children files."""
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children", encoding="ascii") as handle:
                found.extend(int(c) for c in handle.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"{task_dir}/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return found


def _tree_rss_psutil(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@dataclass(frozen=True)
class WarmClient:
    """What the budget needs to know about one conversation's warm client."""

    key: Any
    last_used: float  # monotonic
    rss: int  # bytes, last measurement
    closable: bool  # idle: no turn running, nothing queued, no close already asked


def choose_victims(clients: Sequence[WarmClient], incoming: int, budget: int) -> list[Any]:
    """Keys to close, least recently used first, until the measured total plus `incoming` fits `budget`.

    Only closable clients are chosen; when closing all of them is not enough, all of them are chosen (what
    is running or queued stays, and so does the new client: the budget never refuses a conversation)."""
    used = sum(c.rss for c in clients) + incoming
    victims: list[Any] = []
    for client in sorted((c for c in clients if c.closable), key=lambda c: c.last_used):
        if used <= budget:
            break
        victims.append(client.key)
        used -= client.rss
    return victims
