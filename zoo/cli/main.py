"""Entry point of the ``zoo`` console script: one subcommand per job.

Expected errors (bad data, prompts or checkpoints, a missing input, an output that already exists) end the command
with one line, ``zoo <command>: error: <message>``, on stderr and exit status 1; usage errors keep their parser's
short output and status 2. ``zoo --debug <command> ...`` or ``ZOO_DEBUG=1`` shows the full traceback instead.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zoo.cli import app, benchmark, convert, demo, export, publish
from zoo.cli.allocator import keep_freed_memory
from zoo.errors import CheckpointError, DataError, PromptError

#: Training and evaluation subcommands, handed to LightningCLI with the rest of the command line.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Errors that come from what the user gave, not from a bug: reported as one line.
EXPECTED_ERRORS = (DataError, CheckpointError, PromptError, FileExistsError, FileNotFoundError)
DEBUG_ENV = "ZOO_DEBUG"
EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Promptable medical image segmentation model zoo.")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    app.add_parser(subcommands)
    benchmark.add_parser(subcommands)
    convert.add_parser(subcommands)
    demo.add_parser(subcommands)
    export.add_parser(subcommands)
    publish.add_parser(subcommands)
    for name in LIGHTNING_SUBCOMMANDS:
        summary = f"{name} with a YAML recipe (LightningCLI)"
        if name == "predict":
            summary = "segment images: zoo predict IMAGE --model NAME_OR_PATH --points/--box/--prompts --output-dir DIR"
        lightning = subcommands.add_parser(name, help=summary, add_help=False)
        lightning.set_defaults(run=run_lightning)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo COMMAND ...``; returns the exit status."""
    keep_freed_memory()  # see zoo.cli.allocator: the console script's process only
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.run is not run_lightning and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.lightning_args = rest
    try:
        return args.run(args)
    except Exception as err:
        expected = expected_error(err)
        if expected is None or args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"zoo {args.command}: error: {describe(expected)}", file=sys.stderr)
        return EXIT_ERROR


def expected_error(err: BaseException) -> BaseException | None:
    """``err`` or the first exception it was raised from or during (``__cause__``/``__context__``) that is one of
    :data:`EXPECTED_ERRORS`; libraries such as jsonargparse re-raise the zoo's errors wrapped in their own."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, EXPECTED_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe(err: BaseException) -> str:
    """The error's message on one line; OS errors as ``<file>: <reason>``."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        message = f"{err.filename}: {err.strerror}"
    else:
        message = str(err) or type(err).__name__
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def run_lightning(args: argparse.Namespace) -> int:
    if args.command == "predict":
        from zoo.cli import predict

        if not predict.is_lightning_form(args.lightning_args):
            return predict.run(args.lightning_args)
    from zoo.cli.lightning import cli_main

    cli_main([args.command, *args.lightning_args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
