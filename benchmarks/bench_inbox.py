"""The durable inbox's cost per message: latency of accept / done (with their fsyncs), bytes on disk, and the
time to open (replay + compact) a journal with many entries.

    .venv/bin/python benchmarks/bench_inbox.py [--messages 500] [--dir /var/lib/aiwm-agentd]

--dir should be on the filesystem the state directory lives on (fsync cost depends on it); the default is a
fresh temporary directory. Each message is a realistic chat message (~200 bytes of text, Discord-like ids).
Reported: median and p99 of accept() and done(), the journal's bytes per pending message and per answered
message (its dedup key, kept for the retention period), and open() time for the journal as left.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiwm_agentd.inbox import open_inbox  # noqa: E402

TEXT = ("Could you look at the failing deploy on staging and tell me which migration broke it? "
        "The logs say something about a missing column, but I am not sure which service ran it first.")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(directory: Path, messages: int) -> None:
    inbox = open_inbox(directory, "discord")
    accept_ms: list[float] = []
    done_ms: list[float] = []
    base = 1_300_000_000_000_000_000
    for i in range(messages):
        key = str(base + i)
        address = {"channel": "700000000000000001", "message": key}
        t0 = time.perf_counter()
        inbox.accept(key, "discord:700000000000000001", TEXT, address)
        t1 = time.perf_counter()
        accept_ms.append((t1 - t0) * 1000)
    pending_bytes = inbox.path.stat().st_size
    for i in range(messages):
        t0 = time.perf_counter()
        inbox.done(str(base + i))
        done_ms.append((time.perf_counter() - t0) * 1000)
    inbox.close()
    t0 = time.perf_counter()
    reopened = open_inbox(directory, "discord")  # replays and compacts: only the done keys remain
    open_ms = (time.perf_counter() - t0) * 1000
    done_bytes = reopened.path.stat().st_size
    reopened.close()
    print(f"messages: {messages} (text {len(TEXT)} bytes) in {directory}")
    print(f"accept(): median {statistics.median(accept_ms):.3f} ms, p99 {percentile(accept_ms, 0.99):.3f} ms")
    print(f"done():   median {statistics.median(done_ms):.3f} ms, p99 {percentile(done_ms, 0.99):.3f} ms")
    print(f"disk: {pending_bytes / messages:.0f} bytes per pending message, "
          f"{done_bytes / messages:.0f} bytes per answered message (dedup key, until pruned)")
    print(f"open() with {messages} answered keys: {open_ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.dir is not None:
        with tempfile.TemporaryDirectory(dir=args.dir) as name:
            run(Path(name), args.messages)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-inbox-", dir=str(ROOT)) as name:
            run(Path(name), args.messages)


if __name__ == "__main__":
    main()
