"""`python -m engine generate ...`: the engine's command line without the service installed."""

from __future__ import annotations

import argparse
import sys

from engine.cli import add_generate_arguments, run_generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="vidq diffusion engine")
    commands = parser.add_subparsers(dest="command", required=True)
    add_generate_arguments(commands.add_parser("generate", help="generate one video"))
    args = parser.parse_args(argv)
    return run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
