"""`python -m aiwm_devtools [options]`: run the dev controller (what `make run` does)."""

from __future__ import annotations

import argparse
import sys

from aiwm_devtools import devcontroller


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m aiwm_devtools",
                                     description="Embedded AIWM-compatible dev controller (loopback only).")
    devcontroller.add_arguments(parser)
    return int(devcontroller.main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
