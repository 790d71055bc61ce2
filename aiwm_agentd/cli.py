"""The `aiwm-agentd` command: run, check-config, connect, status, ask, dev-controller."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiwm_agentd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiwm-agentd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aiwm-agentd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev-controller", help="run the embedded AIWM-compatible dev controller")
    from aiwm_agentd import devcontroller

    devcontroller.add_arguments(dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dev-controller":
        from aiwm_agentd import devcontroller

        return devcontroller.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
