"""``zoo convert SRC DST [--model NAME]``: an official checkpoint file -> a Hub-format folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.errors import CheckpointError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "convert",
        help="convert an official checkpoint into a Hub-format folder",
        description="Convert the authors' checkpoint SRC (.pth/.pt/.safetensors) into the Hub-format folder DST "
        "(config.json, model.safetensors, README.md model card).",
    )
    parser.add_argument("src", help="official checkpoint file")
    parser.add_argument("dst", help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--model", help="zoo model name, e.g. sam_med3d_turbo; inferred from the keys if omitted")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace config.json, model.safetensors and README.md in DST"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="config field that differs from the released variant (VALUE is JSON, e.g. --set image_size=64 "
        "--set global_attn_indexes=[1]); repeatable",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for tensors the source does not provide")
    parser.set_defaults(run=run)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    return overrides


def run(args: argparse.Namespace) -> int:
    """Convert; expected errors (bad checkpoint, existing output, missing file) reach ``zoo``'s one-line handler."""
    from zoo.hub.convert import convert

    
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise CheckpointError(args.src, str(err)) from None
    conversion = convert(args.src, args.dst, args.model, overwrite=args.overwrite, seed=args.seed, **overrides)
    print(conversion.summary())
    return 0
