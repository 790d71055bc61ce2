"""Core daemon figures against the dev controller: exec -> READY=1, SIGTERM -> exit, idle RSS, idle CPU.

    .venv/bin/python benchmarks/bench_daemon.py [--runs 10] [--idle-seconds 600]

Runs the real daemon (`python -m aiwm_agentd run`) with a real NOTIFY_SOCKET, no bots configured and
the default 60 s heartbeat, like a fresh install would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, controller_env, wait_for


def start_daemon(ctl: FaultyController) -> tuple[float, Daemon]:
    """A daemon with the production heartbeat interval; returns (seconds exec -> READY=1, daemon)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    d = Daemon(tmp, controller_env(ctl, AIWM_HEARTBEAT_INTERVAL="60", LOG_LEVEL="WARNING"))
    return d.wait_ready(), d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()

    with FaultyController(version="v5") as ctl:  # real bcrypt cost (10 rounds), like a controller
        readies: list[float] = []
        stops: list[float] = []
        for _ in range(args.runs):
            ready, d = start_daemon(ctl)
            wait_for(lambda d=d: d.health()["heartbeat"]["last"], 5)
            code, seconds = d.stop()
            d.close()
            assert code == 0, d.output()
            readies.append(ready)
            stops.append(seconds)
        print(f"exec -> READY=1   median {statistics.median(readies) * 1000:.0f} ms, "
              f"max {max(readies) * 1000:.0f} ms over {args.runs} runs")
        print(f"SIGTERM -> exit   median {statistics.median(stops) * 1000:.0f} ms, "
              f"max {max(stops) * 1000:.0f} ms over {args.runs} runs")

        _, d = start_daemon(ctl)
        proc = psutil.Process(d.proc.pid)
        time.sleep(2)
        cpu_start = proc.cpu_times()
        started = time.monotonic()
        peak_rss = 0
        while time.monotonic() - started < args.idle_seconds:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            time.sleep(min(5.0, args.idle_seconds / 10))
        cpu_end = proc.cpu_times()
        elapsed = time.monotonic() - started
        cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
        rss = proc.memory_info().rss
        beats = len(ctl.heartbeats)
        code, _ = d.stop()
        d.close()
        print(f"idle RSS          {rss / 1048576:.1f} MiB (peak {peak_rss / 1048576:.1f} MiB), no bots configured")
        print(f"idle CPU          {cpu:.3f} s over {elapsed:.0f} s = {100 * cpu / elapsed:.4f} % of one core "
              f"({beats} heartbeats in all runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
