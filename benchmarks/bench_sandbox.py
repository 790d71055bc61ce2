"""Cost of the tool sandbox per turn: `sudo .venv/bin/python benchmarks/bench_sandbox.py` (repository root).

Runs the real runner (real SDK + bundled CLI) against the fake Anthropic API three times: unseparated,
separated by the tools spawner (the default under systemd: a spawner process running as a throw-away user made
with useradd, removed at the end), and separated by setpriv (a daemon run as root without a spawner); needs
root. Prints for each:
- cold turn: a new conversation (CLI start through the launcher + one turn), median over --cold runs;
- warm turn: a follow-up in a kept-warm conversation, median over --warm runs;
- the daemon process's RSS after the runs (the Anthropic API proxy thread is its share of the separation);
- with the spawner, the RSS of one stand-in (the daemon-side process per warm CLI) and of the spawner.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiwm_agentd.runner import ClaudeRunner
from aiwm_agentd.workers import ConversationKey
from tests.fakes.anthropic import FakeAnthropic, agent_config
from tests.spawner_support import tools_spawner

MIB = 1024 * 1024
SPAWNER_PID = [0]  # not a stand-in (it is this process's child too)


def measure(label: str, fake: FakeAnthropic, cold: int, warm: int, **claude: str) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="bench-sbx-state-"))
    runner = ClaudeRunner(agent_config(state, fake.url, **claude))
    runner.start()
    try:
        runner.submit(ConversationKey("bench", "warmup"), "hi").result(120)  # SDK import, disk cache
        colds, warms = [], []
        for i in range(cold):
            started = time.monotonic()
            reply = runner.submit(ConversationKey("bench", f"cold{i}"), "hi").result(120)
            colds.append(time.monotonic() - started)
            assert not reply.error, reply
        key = ConversationKey("bench", "warm")
        runner.submit(key, "hi").result(120)
        for _ in range(warm):
            started = time.monotonic()
            runner.submit(key, "again").result(120)
            warms.append(time.monotonic() - started)
        rss = psutil.Process().memory_info().rss / MIB
        sandbox = runner.health().extra.get("sandbox", {})
        stand_ins = [c.memory_info().rss / MIB for c in psutil.Process().children()
                     if "-IS" in c.cmdline()[:3] and c.pid != SPAWNER_PID[0]]
    finally:
        runner.stop(time.monotonic() + 15)
        shutil.rmtree(state, ignore_errors=True)
    figures = {"cold_s": statistics.median(colds), "warm_s": statistics.median(warms), "daemon_rss_mib": rss}
    extra = f"  stand-in RSS {statistics.median(stand_ins):.1f} MiB" if stand_ins else ""
    print(f"{label:12s} separated={sandbox.get('separated')!s:5s} cold {figures['cold_s']:.3f} s  "
          f"warm {figures['warm_s']:.3f} s  daemon RSS {rss:.1f} MiB{extra}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--warm", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (creates a throw-away tools user)")
    with tools_spawner() as spawner:
        tools = Path(tempfile.mkdtemp(prefix="bench-sbx-tools-"))
        tools.chmod(0o755)
        workspace = tools / "tools"
        workspace.mkdir()
        entry = pwd.getpwnam(spawner.user)
        os.chown(workspace, entry.pw_uid, entry.pw_gid)
        workspace.chmod(0o700)
        SPAWNER_PID[0] = spawner.pid
        fake = FakeAnthropic("pong").start()
        try:
            plain = measure("unseparated", fake, args.cold, args.warm, tools_user="", tools_socket="")
            for label, claude in (("spawner", {"tools_socket": spawner.socket, "tools_user": ""}),
                                  ("setpriv", {"tools_socket": "", "tools_user": spawner.user,
                                               "tools_dir": str(workspace)})):
                apart = measure(label, fake, args.cold, args.warm, **claude)
                print(f"cost of the separation ({label}): "
                      f"cold {1000 * (apart['cold_s'] - plain['cold_s']):+.0f} ms, "
                      f"warm {1000 * (apart['warm_s'] - plain['warm_s']):+.0f} ms, "
                      f"daemon RSS {apart['daemon_rss_mib'] - plain['daemon_rss_mib']:+.1f} MiB")
            print(f"spawner RSS {psutil.Process(spawner.pid).memory_info().rss / MIB:.1f} MiB")
        finally:
            fake.stop()
            shutil.rmtree(tools, ignore_errors=True)


if __name__ == "__main__":
    main()
