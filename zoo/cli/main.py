"""Entry point of the ``zoo`` console script: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zoo.cli import convert, demo

#: Training and evaluation subcommands, handed to LightningCLI with the rest of the command line.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Promptable medical image segmentation model zoo.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert.add_parser(subcommands)
    demo.add_parser(subcommands)
    for name in LIGHTNING_SUBCOMMANDS:
        lightning = subcommands.add_parser(name, help=f"{name} with a YAML recipe (LightningCLI)", add_help=False)
        lightning.set_defaults(run=run_lightning)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo COMMAND ...``; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.run is not run_lightning and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.lightning_args = rest
    return args.run(args)


def run_lightning(args: argparse.Namespace) -> int:
    from zoo.cli.lightning import cli_main

    cli_main([args.command, *args.lightning_args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
