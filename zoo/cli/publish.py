"""``zoo publish SOURCE REPO_ID``: convert a weight set into the zoo's Hub folder and upload it in one commit."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.errors import CheckpointError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "publish",
        help="publish weights on the Hugging Face Hub (one commit; none when the repo already holds them)",
        description="Convert SOURCE (an authors' checkpoint file, a zoo Hub folder, a zoo run's .ckpt, or a zoo model "
        "name with reachable weights such as litemedsam) into the zoo's Hub folder (config.json, model.safetensors, "
        "processor_config.json, README.md model card) and upload it to REPO_ID in one commit. Publishing the same "
        "files again makes no commit. The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT picks the Hub.",
    )
    parser.add_argument("source", help="authors' .pth/.pt/.safetensors, zoo Hub folder, zoo run .ckpt, or model name")
    parser.add_argument("repo_id", help="the Hub repo, e.g. promptable-medseg-zoo/litemedsam")
    parser.add_argument("--revision", metavar="TAG", help="tag the published commit (never moves an existing tag)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo is kept)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only; upload nothing")
    parser.add_argument(
        "--output-dir", type=Path, help="where the folder is written and kept (new or empty; default: a temporary folder)"
    )
    parser.add_argument("--benchmark", type=Path, metavar="REPORT.json", help="benchmark results for the model card")
    parser.add_argument(
        "--model", help="zoo model name whose weight-set card describes the weights (inferred for names and files)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="config field that differs from the released variant (authors' files; as zoo convert --set)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Publish; expected errors (bad source, Hub refusal, existing output folder) reach ``zoo``'s one-line handler."""
    import zoo
    from zoo.cli.convert import parse_overrides
    from zoo.hub.model_card import read_benchmark_report
    from zoo.hub.publish import PublishSource, check_output_dir, publish, resolve_source

    if args.output_dir is not None:
        check_output_dir(args.output_dir)  # before any conversion
    if args.benchmark is not None:
        read_benchmark_report(args.benchmark)
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise CheckpointError(args.source, str(err)) from None
    if str(args.source).endswith(".ckpt"):
        from zoo.cli.predict import load_model  # the one reader of zoo runs' Lightning checkpoints
        from zoo.hub.convert import file_sha256

        model = load_model(str(args.source))
        source = PublishSource(model, Path(args.source).name, file_sha256(Path(args.source)), args.model)
    else:
        source = resolve_source(args.source, args.model, **overrides)
    result = publish(
        source,
        args.repo_id,
        tag=args.revision,
        private=args.private,
        dry_run=args.dry_run,
        output_dir=args.output_dir,
        benchmark_report=args.benchmark,
        tool_version=zoo.__version__,
    )
    print(result.summary())
    return 0
