"""Issue 11's figures for the daemon: start-up, idle footprint, 5 chats, memory after the chats, stop.

    .venv/bin/python benchmarks/bench_lean.py [--runs 1] [--idle 30] [--after 120] [--env KEY=VALUE ...] [--spawner]

Local mode, Telegram only (private chats allowed), the real SDK and bundled CLI against the loopback fake
Anthropic API, python-telegram-bot against the loopback fake Telegram. One run:

1. spawn the daemon; "start -> first poll" is spawn to the first getUpdates reaching the fake;
2. once Telegram is connected and 3 s have passed: idle RSS of the daemon, then its CPU over `--idle` seconds;
3. 5 private chats one after the other, each a first message then a follow-up (latency = inject -> the fake
   receives sendMessage); the whole process tree's RSS is sampled every 50 ms (peak) and its CPU counted;
4. tree RSS 5 s and `--after` s after the last reply (default settings decide what is still warm);
5. SIGTERM -> exit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.telegram import FakeTelegram
from tests.harness import Daemon, wait_for
from tests.spawner_support import tools_spawner

TELEGRAM_TOKEN = "616161:bench-lean-secret"
MIB = 1048576
CHATS = (101, 102, 103, 104, 105)


class TimedTelegram(FakeTelegram):
    """Records when the first getUpdates arrives (the fake's own log only has answered calls)."""

    first_poll: float | None = None

    async def _get_updates(self, params: dict[str, Any]) -> Any:
        if self.first_poll is None:
            self.first_poll = time.monotonic()
        return await super()._get_updates(params)


SPAWNER: list[int] = []  # --spawner: the tools spawner's pid, whose tree (the CLIs) counts as the daemon's


def tree(pid: int) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for root_pid in (pid, *SPAWNER):
        root = psutil.Process(root_pid)
        procs += [root, *root.children(recursive=True)]
    return procs


def tree_rss(pid: int) -> float:
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / MIB


def tree_cpu(pid: int) -> float:
    """CPU seconds of the daemon, its reaped children, and its live descendants."""
    total = 0.0
    for n, proc in enumerate(tree(pid)):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + ((t.children_user + t.children_system) if n == 0 else 0.0)
    return total


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of the daemon: each is one wake-up after a wait."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


class PeakSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))


def one_run(args: argparse.Namespace, tg: TimedTelegram, anthropic: FakeAnthropic) -> dict[str, float]:
    tg.first_poll = None
    env = {
        "AIWM_ENABLED": "false", "LOG_LEVEL": "WARNING",
        "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": "sk-ant-bench",
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_GROUP_ID": "-1001", "TELEGRAM_API_BASE_URL": tg.url,
        "TELEGRAM_ALLOW_DMS": "true", "TELEGRAM_ALLOWED_USER_IDS": "42",  # DMs: only listed users (fake's sender)
    }
    env.update(dict(kv.split("=", 1) for kv in args.env))
    extra = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
    d = Daemon(Path(tempfile.mkdtemp(prefix="bench-lean-")), env, extra_env=extra)
    figures: dict[str, float] = {}
    try:
        wait_for(lambda: tg.first_poll is not None or d.proc.poll() is not None, 30, what="first poll")
        assert tg.first_poll is not None, d.output()
        figures["start -> first poll (s)"] = tg.first_poll - d.started
        figures["start -> READY (s)"] = d.wait_ready()
        if not args.no_runner_wait:
            wait_for(lambda: (d.health().get("workers") or {}).get("claude", {}).get("state") == "ok", 30,
                     what="runner ready")
        time.sleep(3)
        pid = d.proc.pid
        figures["idle RSS (MiB)"] = tree_rss(pid)
        cpu0, woke0 = tree_cpu(pid), wakeups(pid)
        time.sleep(args.idle)
        figures[f"idle CPU over {args.idle:.0f} s (s)"] = tree_cpu(pid) - cpu0
        figures["idle wake-ups per second"] = (wakeups(pid) - woke0) / args.idle
        if args.idle_only:
            return figures
        sampler = PeakSampler(pid)
        sampler.start()
        cpu0 = tree_cpu(pid)
        firsts, follows = [], []
        for chat in CHATS:
            for latencies in (firsts, follows):
                sent = len(tg.sent)
                t0 = time.monotonic()
                tg.inject_message(chat, f"hello from {chat}")
                tg.wait_for_sent(sent + 1, timeout=60)
                latencies.append(time.monotonic() - t0)
        last_reply = time.monotonic()
        figures["very first message -> reply (s)"] = firsts[0]
        figures["first message -> reply (s, median)"] = statistics.median(firsts)
        figures["follow-up -> reply (s, median)"] = statistics.median(follows)
        figures["CPU per message, tree (s)"] = (tree_cpu(pid) - cpu0) / (2 * len(CHATS))
        sampler.done.set()
        sampler.join()
        figures["peak tree RSS during the chats (MiB)"] = sampler.peak
        time.sleep(max(0.0, last_reply + 5 - time.monotonic()))
        figures["tree RSS 5 s after the last reply (MiB)"] = tree_rss(pid)
        time.sleep(max(0.0, last_reply + args.after - time.monotonic()))
        figures[f"tree RSS {args.after:.0f} s after the last reply (MiB)"] = tree_rss(pid)
        code, seconds = d.stop()
        assert code == 0, d.output()
        figures["SIGTERM idle -> exit (s)"] = seconds
    except BaseException:
        print(f"daemon output (tail):\n{d.output()[-4000:]}", file=sys.stderr, flush=True)
        raise
    finally:
        d.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=120.0)
    parser.add_argument("--no-runner-wait", action="store_true",
                        help="measure idle without waiting for the runner's SDK import (experiments)")
    parser.add_argument("--pythonpath", default="", help="PYTHONPATH for the daemon (experiments)")
    parser.add_argument("--idle-only", action="store_true", help="stop after the idle figures")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the daemon's env file")
    parser.add_argument("--spawner", action="store_true",
                        help="run the CLIs through a tools spawner as a throw-away user, as under systemd (root); "
                             "the tree figures then include the spawner and its CLIs")
    args = parser.parse_args()
    if args.spawner:
        with tools_spawner() as spawner:
            args.env.append(f"CLAUDE_TOOLS_SOCKET={spawner.socket}")
            SPAWNER.append(spawner.pid)
            return measure(args)
    return measure(args)


def measure(args: argparse.Namespace) -> int:
    tg = TimedTelegram(TELEGRAM_TOKEN).start()
    anthropic = FakeAnthropic().start()
    runs: list[dict[str, float]] = []
    try:
        for n in range(args.runs):
            runs.append(one_run(args, tg, anthropic))
            print(f"run {n + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    finally:
        tg.stop()
        anthropic.stop()
    print(f"\nmedian of {len(runs)} run(s):")
    for key in runs[0]:
        print(f"  {key:<45} {statistics.median(r[key] for r in runs):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
