"""CPU time of split_message for 10 KB, 100 KB and 1 MB answers: the old quadratic splitter against this one.

    .venv/bin/python benchmarks/bench_split.py [--before dcd18fd] [--repeat 3]

The "before" is the splitter as it was at the given commit, loaded from `git show` into a throwaway module.
The answer mixes prose paragraphs, fenced code and an occasional over-long line, like a long Claude answer.
"After" is measured twice: as the platforms call it (capped at MAX_CHUNKS) and uncapped, so the figure shows
the algorithm and not only the cap. Reported: best of --repeat runs of process CPU time, and the chunk count.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiwm_agentd.platforms.split import MAX_CHUNKS, split_message  # noqa: E402

Splitter = Callable[[str, int], list[str]]


def load_old_splitter(commit: str) -> Splitter:
    source = subprocess.run(["git", "show", f"{commit}:aiwm_agentd/platforms/split.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("old_split")
    exec(compile(source, f"{commit}:split.py", "exec"), module.__dict__)
    splitter: Splitter = module.split_message
    return splitter


def answer(size: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    words = ["the", "daemon", "answers", "`code`", "quickly", "configuration", "controller", "a", "is"]
    parts: list[str] = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.25:
            lines = [f"    value_{i} = compute({i}, {rng.choice(words)!r})" for i in range(rng.randint(5, 40))]
            part = "```python\n" + "\n".join(lines) + "\n```"
        elif kind < 0.3:
            part = " ".join(rng.choice(words) for _ in range(rng.randint(800, 1500)))
        else:
            part = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 25)))
                             for _ in range(rng.randint(1, 6)))
        parts.append(part)
        total += len(part) + 2
    return "\n\n".join(parts)[:size]


def cpu_seconds(splitter: Splitter, text: str, limit: int, repeat: int) -> tuple[float, int]:
    best = float("inf")
    chunks = 0
    for _ in range(repeat):
        start = time.process_time()
        chunks = len(splitter(text, limit))
        best = min(best, time.process_time() - start)
    return best, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="dcd18fd", help="commit holding the old splitter")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=4096, help="Telegram 4096, Discord 2000")
    args = parser.parse_args()
    old = load_old_splitter(args.before)

    def uncapped(text: str, limit: int) -> list[str]:
        return split_message(text, limit, max_chunks=len(text))

    print(f"limit {args.limit}, best of {args.repeat}, process CPU time (MAX_CHUNKS={MAX_CHUNKS})")
    print(f"{'answer':>8}  {'before':>16}  {'after, uncapped':>18}  {'after (as called)':>18}")
    for size in (10_000, 100_000, 1_000_000):
        text = answer(size)
        before = cpu_seconds(old, text, args.limit, args.repeat if size < 1_000_000 else 1)
        after_all = cpu_seconds(uncapped, text, args.limit, args.repeat)
        after = cpu_seconds(split_message, text, args.limit, args.repeat)
        print(f"{size // 1000:>6} KB  {before[0] * 1000:>9.1f} ms {before[1]:>4}  "
              f"{after_all[0] * 1000:>11.1f} ms {after_all[1]:>4}  {after[0] * 1000:>11.1f} ms {after[1]:>4}")


if __name__ == "__main__":
    main()
