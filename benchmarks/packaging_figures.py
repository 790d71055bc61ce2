"""Packaging figures for the report: package sizes, unit exposure, and the timings the system test logged.

    .venv/bin/python benchmarks/packaging_figures.py      (after `make deb rpm` and `make test-system`)

Sizes come from dist/, the exposure from `systemd-analyze security --offline=yes`, timings (install,
start-to-active, boot-to-active, stop, watchdog, upgrade, purge) from build/system-test-figures.json,
which tests/system writes on every run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    for package in sorted((REPO / "dist").glob("aiwm-agentd*")):
        print(f"{package.name}: {package.stat().st_size / 1e6:.1f} MB")
    checks = subprocess.run([str(REPO / "packaging/units-check.sh")], capture_output=True, text=True)
    for line in checks.stdout.splitlines():
        if re.search(r"exposure", line):
            print(line)
    figures = REPO / "build/system-test-figures.json"
    if figures.exists():
        for key, value in sorted(json.loads(figures.read_text()).items()):
            print(f"{key}: {value}")
    else:
        print("no build/system-test-figures.json yet: run make test-system")


if __name__ == "__main__":
    main()
