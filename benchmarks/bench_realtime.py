"""Realtime figures: portal message -> runner overhead, work offered -> busy heartbeat, idle RSS of the channel.

    .venv/bin/python benchmarks/bench_realtime.py [--messages 200] [--work-runs 5] [--settle 5]

1. Portal overhead: the dev controller's portal socket (python-socketio server) emits `message:new`; the
   daemon's `AiwmChannel` (real python-socketio client, in process) filters it and submits it to a stub runner.
   Measured: emit -> `runner.submit()` (everything the daemon adds before the runner hands the text to the
   Claude CLI; the CLI's own time to its first API byte is not the daemon's).
2. Work offered -> busy: the real daemon against the dev controller (v5, 5 s heartbeat interval, fake
   Anthropic): the server-side time between the idle heartbeat whose answer carried the offer and the next
   (busy) heartbeat.
3. Idle RSS of the channel: two real daemons that both run the Claude runner (AIWM_TAKE_WORK=true), one with
   the portal socket open (AIWM_REALTIME=true) and one without; RSS after settling.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiwm_agentd.realtime.channel import AiwmChannel
from aiwm_agentd.realtime.portal import SocketTarget, socket_target
from aiwm_agentd.workers import ConversationKey, Reply
from aiwm_devtools.portal import PortalServer
from tests.fakes.anthropic import FakeAnthropic, agent_config
from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, controller_env, wait_for


class StubRunner:
    def __init__(self) -> None:
        self.submitted: list[float] = []
        self.event = threading.Event()
        self.busy = False

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        self.submitted.append(time.perf_counter())
        self.event.set()
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        future.set_result(Reply(text="ok"))
        return future

    def reset(self, conversation: ConversationKey) -> None: ...

    def interrupt(self, conversation: ConversationKey) -> bool:
        return False

    def queue_depth(self, conversation: ConversationKey | None = None) -> int:
        return 0


class StubControl:
    def __init__(self, target: SocketTarget) -> None:
        self.target = target

    def socket_target(self) -> SocketTarget | None:
        return self.target

    def socket_token_refused(self, token: str) -> None: ...

    def agent_command(self, command: str, reason: str) -> str:
        return "idle"

    def health_snapshot(self) -> dict[str, Any]:
        return {}

    def status_summary(self) -> dict[str, Any]:
        return {}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        return concurrent.futures.Future()


def portal_overhead(messages: int) -> None:
    with FaultyController(version="v5", bcrypt_rounds=4) as ctl:
        portal = PortalServer(ctl.controller, "v5").start()
        target = socket_target(ctl.url, ctl.controller.issue_token(), ctl.agent_id, "v5", portal.url)
        config = replace(agent_config(tempfile.mkdtemp(), "http://127.0.0.1:9"), source="controller",
                         agent_id=ctl.agent_id)
        runner = StubRunner()
        channel = AiwmChannel(config, runner, StubControl(target))  # type: ignore[arg-type]
        channel.start()
        wait_for(lambda: channel.health().state == "ok" and portal.connected == 1, 10)
        delays: list[float] = []
        for i in range(messages + 10):
            runner.event.clear()
            before = len(runner.submitted)
            t0 = time.perf_counter()
            portal.post(f"message {i}")
            runner.event.wait(5)
            assert len(runner.submitted) == before + 1
            if i >= 10:  # warm-up
                delays.append(runner.submitted[-1] - t0)
            time.sleep(0.002)
        channel.stop(time.monotonic() + 5)
        portal.stop()
    delays.sort()
    print(f"portal emit -> runner.submit  median {statistics.median(delays) * 1000:.2f} ms, "
          f"p95 {delays[int(len(delays) * 0.95)] * 1000:.2f} ms, max {delays[-1] * 1000:.2f} ms "
          f"over {messages} messages")


def work_to_busy(runs: int) -> None:
    with FaultyController(version="v5", bcrypt_rounds=4) as ctl, FakeAnthropic("done") as anthropic:
        tmp = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
        d = Daemon(tmp, controller_env(ctl, AIWM_HEARTBEAT_INTERVAL="5", AIWM_TAKE_WORK="true",
                                       ANTHROPIC_BASE_URL=anthropic.url, ANTHROPIC_API_KEY="sk-ant-bench-0000",
                                       LOG_LEVEL="WARNING"))
        try:
            d.wait_ready()
            gaps: list[float] = []
            for i in range(runs):
                work_id = ctl.work.assign(f"bench {i}")
                wait_for(lambda w=work_id: ctl.work.offers(w) == 1, 15)
                wait_for(lambda: ctl.heartbeats[-1]["status"] == "busy", 5)
                beats = ctl.heartbeats
                busy_at = next(b["time"] for b in reversed(beats) if b["status"] == "busy")
                offer_at = max(b["time"] for b in beats if b["status"] == "idle" and b["time"] < busy_at)
                gaps.append(busy_at - offer_at)
                wait_for(lambda: ctl.heartbeats[-1]["status"] == "idle", 30)
                ctl.work.call_tool("StartWork", {"workId": work_id}, ctl.agent_id)  # what the model would do
                ctl.work.call_tool("CompleteWork", {"workId": work_id}, ctl.agent_id)
            d.stop()
        finally:
            d.close()
    print(f"work offered -> busy heartbeat  median {statistics.median(gaps) * 1000:.0f} ms, "
          f"max {max(gaps) * 1000:.0f} ms over {runs} offers (heartbeat interval 5 s)")


def channel_rss(settle: float) -> None:
    results: dict[bool, float] = {}
    with FaultyController(version="v5", bcrypt_rounds=4) as ctl:
        portal = PortalServer(ctl.controller, "v5").start()
        for realtime in (False, True):
            tmp = Path(tempfile.mkdtemp(prefix="bench-realtime-rss-"))
            extra = dict(line.split("=", 1) for line in portal.env_lines())
            extra["AIWM_REALTIME"] = "true" if realtime else "false"
            d = Daemon(tmp, controller_env(ctl, AIWM_HEARTBEAT_INTERVAL="60", AIWM_TAKE_WORK="true",
                                           ANTHROPIC_API_KEY="sk-ant-bench-0000", LOG_LEVEL="WARNING", **extra))
            try:
                d.wait_ready()
                if realtime:
                    wait_for(lambda d=d: (d.health().get("workers") or {}).get("aiwm", {}).get("state") == "ok", 15)
                time.sleep(settle)
                results[realtime] = psutil.Process(d.proc.pid).memory_info().rss / 1048576
                d.stop()
            finally:
                d.close()
        portal.stop()
    print(f"idle RSS  runner only {results[False]:.1f} MiB, runner + portal socket {results[True]:.1f} MiB: "
          f"the channel adds {results[True] - results[False]:.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--work-runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    portal_overhead(args.messages)
    work_to_busy(args.work_runs)
    channel_rss(args.settle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
