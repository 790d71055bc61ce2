"""Where the idle daemon's memory goes: RSS after each import step of its start-up, in a fresh interpreter.

    .venv/bin/python benchmarks/bench_imports.py [--variant plain|lean|both] [--detail] [--runs 3]

Each variant runs in its own fresh interpreter (imports are one-way) and prints, per step, the process's RSS,
the step's delta and the top-level packages the step loaded. The steps follow the daemon's order in local
mode with Telegram and the runner: the CLI, the supervisor, the Telegram worker, python-telegram-bot, then the
Claude Agent SDK ("plain": `import claude_agent_sdk`; "lean": `aiwm_agentd.runner.sdk_import.import_sdk()`,
plus python-telegram-bot through `aiwm_agentd.optional_imports.import_telegram()`), then the clean-ups that
were tried on what the imports leave behind (gc.collect, gc.freeze, glibc malloc_trim).

`--detail` splits the big steps into their heavy dependencies (ssl, requests, prometheus_client, httpx,
cryptography, pydantic, jsonschema, mcp.types...), each measured on top of the previous ones: a package
shared by two later steps is charged to the first (plain variant only). Medians over `--runs` interpreters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DAEMON_STEPS = (
    "aiwm_agentd.cli", "aiwm_agentd.logs", "aiwm_agentd.supervisor", "aiwm_agentd.platforms.telegram_worker",
    "aiwm_agentd.runner", "@telegram", "@sdk", "@gc.collect", "@gc.freeze", "@malloc_trim",
)
DETAIL_STEPS = (
    "aiwm_agentd.cli", "aiwm_agentd.logs", "ssl", "http.client", "urllib3", "charset_normalizer", "requests",
    "prometheus_client", "aiwm_agentd.supervisor", "asyncio", "aiwm_agentd.platforms.telegram_worker",
    "aiwm_agentd.runner", "anyio", "httpcore", "httpx", "cryptography.hazmat.primitives.ciphers", "@telegram",
    "pydantic_core", "pydantic", "jsonschema", "mcp.types", "mcp.server", "@sdk",
)

# Runs in the child interpreter: one JSON line per step {"step", "rss", "new"}.
CHILD = r"""
import ctypes, gc, importlib, json, sys
variant, steps = sys.argv[1], sys.argv[2:]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1048576

def sdk():
    if variant == "lean":
        from aiwm_agentd.runner.sdk_import import import_sdk
        import_sdk()
    else:
        import claude_agent_sdk  # noqa: F401

def telegram():
    if variant == "lean":
        from aiwm_agentd.optional_imports import import_telegram
        import_telegram()
    else:
        import telegram.ext  # noqa: F401

ACTIONS = {
    "@sdk": sdk, "@telegram": telegram, "@gc.collect": gc.collect, "@gc.freeze": gc.freeze,
    "@malloc_trim": lambda: ctypes.CDLL("libc.so.6").malloc_trim(0),
}
print(json.dumps({"step": "(interpreter)", "rss": rss(), "new": []}), flush=True)
for step in steps:
    before = set(sys.modules)
    ACTIONS[step]() if step in ACTIONS else importlib.import_module(step)
    new = sorted({m.split(".")[0] for m in set(sys.modules) - before} - {"aiwm_agentd"})
    print(json.dumps({"step": step, "rss": rss(), "new": new}), flush=True)
"""


def run_variant(variant: str, steps: tuple[str, ...]) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, *steps], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}).stdout
    return [json.loads(line) for line in out.splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("plain", "lean", "both"), default="both")
    parser.add_argument("--detail", action="store_true", help="split the big steps into their dependencies")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    steps = DETAIL_STEPS if args.detail else DAEMON_STEPS
    variants = ("plain", "lean") if args.variant == "both" else (args.variant,)
    if args.detail:  # the detail steps import the heavy dependencies by name: the lean paths cannot skip them
        variants = ("plain",)
    for variant in variants:
        runs = [run_variant(variant, steps) for _ in range(args.runs)]
        print(f"\n{variant}: RSS (MiB) after each step, median of {args.runs} fresh interpreter(s)")
        previous = 0.0
        for n, row in enumerate(runs[0]):
            rss = statistics.median(float(str(run[n]["rss"])) for run in runs)
            new = " ".join(str(name) for name in row["new"]  # type: ignore[attr-defined]
                           if not str(name).startswith("_"))
            print(f"  {row['step']:<42} {rss:7.1f} {rss - previous:+7.1f}  {new[:90]}")
            previous = rss
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
