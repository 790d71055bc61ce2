"""CPU time of logs.mask for a log line and for long chat replies: the old mask (plain values) against the
new one (every encoded form: URL-encoded, JSON-escaped, base64 in three alignments; URL passwords).

    .venv/bin/python benchmarks/bench_mask.py [--before 64c22a9] [--secrets 8] [--repeat 5]

The "before" is logs.py as it was at the given commit, loaded from `git show` into a throwaway module. Both
get the same secrets registered (realistic lengths: agent secret, bot tokens, API key, OAuth token, JWT).
Reported: best of --repeat runs, microseconds per call, and how many forms the new one looks for.
"""

from __future__ import annotations

import argparse
import random
import string
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiwm_agentd import logs  # noqa: E402


def load_old(commit: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:aiwm_agentd/logs.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_logs")
    exec(compile(source, "old_logs.py", "exec"), module.__dict__)  # our own logs.py at a commit
    return module


def secrets(count: int, rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits + "-_"
    lengths = [24, 46, 72, 108, 40, 180, 32, 64]
    return ["".join(rng.choice(alphabet) for _ in range(lengths[i % len(lengths)])) for i in range(count)]


def texts(rng: random.Random) -> dict[str, str]:
    words = ["the", "agent", "answered", "with", "a", "long", "paragraph", "of", "ordinary", "prose", "and", "code"]

    def prose(size: int) -> str:
        out: list[str] = []
        total = 0
        while total < size:
            word = rng.choice(words)
            out.append(word)
            total += len(word) + 1
        return " ".join(out)

    return {"log line (200 B)": prose(200), "reply (10 KB)": prose(10_000), "reply (100 KB)": prose(100_000)}


def best(fn: Callable[[str], str], text: str, repeat: int) -> float:
    calls = max(1, 2_000_000 // max(len(text), 1))
    times = []
    for _ in range(repeat):
        began = time.process_time()
        for _ in range(calls):
            fn(text)
        times.append((time.process_time() - began) / calls)
    return min(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="64c22a9")
    parser.add_argument("--secrets", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(9)
    old = load_old(args.before)
    for value in secrets(args.secrets, rng):
        old.register_secret(value)
        logs.register_secret(value)
    print(f"{args.secrets} secrets registered; new mask looks for {len(logs._forms)} forms")
    print(f"{'text':<20} {'before us/call':>15} {'after us/call':>15}")
    for name, text in texts(rng).items():
        print(f"{name:<20} {best(old.mask, text, args.repeat):>15.1f} {best(logs.mask, text, args.repeat):>15.1f}")


if __name__ == "__main__":
    main()
