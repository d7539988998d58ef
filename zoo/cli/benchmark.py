"""``zoo benchmark CONFIG [--set KEY=VALUE ...]``: several models, one protocol, one report.

``CONFIG`` is a benchmark YAML (:mod:`zoo.evaluation.config`) or the name of one shipped with the package
(``zoo benchmark --list`` names them: one per paper's protocol, and ``bundled`` for the data in the package).
``--set KEY=VALUE`` overrides the config (OmegaConf dot-list: ``--set models.0.source=out/sam_med3d_turbo``).
Results go to the config's ``output_dir`` (``--output-dir``); a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line imports torch and the evaluation only when a benchmark runs
    from zoo.evaluation.benchmark import BenchmarkResult, LoadedModel
    from zoo.evaluation.config import BenchmarkConfig, ModelSpec


def benchmarks_folder() -> Path:
    """The benchmark configs shipped with the package (``zoo/resources/benchmarks``)."""
    from zoo.resources import resource_path

    return resource_path("benchmarks")


def config_path(name_or_path: str) -> Path:
    """A config file, or the shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = benchmarks_folder() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in benchmarks_folder().glob("*.yaml")))
    raise FileNotFoundError(f"{name_or_path}: no such benchmark config file, nor a shipped one (shipped: {known})")


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "benchmark", help="compare models under the papers' protocols: a table and a report (zoo benchmark CONFIG)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="benchmark YAML, or the name of a shipped one (see --list)")
    parser.add_argument("--config", dest="config_option", metavar="CONFIG",
                        help="the same as the positional CONFIG (as zoo fit --config takes a recipe)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides (OmegaConf dot-list), e.g. --set models.0.source=out/sam_med3d_turbo")
    parser.add_argument("--output-dir", type=Path, help="where the table, report and unit cache go")
    parser.add_argument("--devices", type=int, help="processes to run on (cases are shared out among them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the shipped configs and the protocols, then stop")
    parser.set_defaults(run=run)


def load_benchmark_model(spec: ModelSpec) -> LoadedModel:
    """A benchmark model: ``source`` loaded as ``zoo predict --model`` loads it (registry name with reachable weights,
    Hub folder or repo id, authors' checkpoint, zoo run ``.ckpt``), or ``create`` built with random weights."""
    import torch

    import zoo
    from zoo.cli.predict import load_model
    from zoo.evaluation.benchmark import LoadedModel

    if spec.create is not None:
        torch.manual_seed(spec.init_seed)
        model = zoo.create_model(spec.create, **dict(spec.overrides)).eval()
        origin = f"RANDOM initialisation of {spec.create} (seed {spec.init_seed})"
        return LoadedModel(model, origin, None, random_weights=True)
    assert spec.source is not None
    model = load_model(spec.source).eval()
    origin = str(getattr(model, "weights_origin", None) or spec.source)
    return LoadedModel(model, origin, _weights_file(spec.source, origin),
                       random_weights=getattr(model, "weights_origin", None) is None)


def _weights_file(source: str, origin: str) -> str | None:
    """The file a loaded model's weights were read from (its sha256 goes into the report)."""
    for candidate in (source, origin):
        path = Path(candidate)
        if path.is_file():
            return str(path)
        if path.is_dir() and (path / "model.safetensors").is_file():
            return str(path / "model.safetensors")
    from zoo.hub.pretrained import released_weights_folder

    try:
        folder = Path(released_weights_folder(source))
    except Exception:  # not a registry name with reachable weights: a Hub id
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "model.safetensors")
            return str(found) if isinstance(found, str) else None
        except Exception:
            return None
    return str(folder / "model.safetensors") if (folder / "model.safetensors").is_file() else None


def configure(config: BenchmarkConfig, output_dir: Path | None, devices: int | None, progress: bool) -> BenchmarkConfig:
    import dataclasses

    runtime = config.runtime
    if devices is not None:
        runtime = dataclasses.replace(runtime, devices=devices)
    if not progress:
        runtime = dataclasses.replace(runtime, progress=False)
    changes: dict[str, Any] = {"runtime": runtime}
    if output_dir is not None:
        changes["output_dir"] = str(output_dir.absolute())
    return dataclasses.replace(config, **changes)


def benchmark(
    config: str | Path | BenchmarkConfig, overrides: list[str] | None = None, output_dir: str | Path | None = None,
    devices: int | None = None, progress: bool = True,
) -> BenchmarkResult:
    """Run a benchmark config (a file, a shipped name or a :class:`BenchmarkConfig`) with the command line's model
    loader; print the throughput; return the result."""
    from zoo.evaluation.benchmark import run_benchmark
    from zoo.evaluation.config import BenchmarkConfig, load_config
    from zoo.evaluation.report import throughput_text

    if not isinstance(config, BenchmarkConfig):
        config = load_config(config_path(str(config)), overrides or [])
    elif overrides:
        raise ValueError("overrides apply to a config file; change a BenchmarkConfig with dataclasses.replace")
    config = configure(config, Path(output_dir) if output_dir is not None else None, devices, progress)
    result = run_benchmark(config, load_benchmark_model)
    if result.files:
        print(f"{config.name}: {result.computed} unit(s) computed, {result.reused} reused from the cache")
        print(throughput_text(result.throughput))
        output = result.output_dir
        print(f"report: {output / 'report.html'} (and report.md); table: {output / 'results.csv'}")
    return result


def run(args: argparse.Namespace) -> int:
    if args.list:
        from zoo.evaluation.protocols import PROTOCOLS

        print("shipped configs:")
        for path in sorted(benchmarks_folder().glob("*.yaml")):
            first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            print(f"  {path.stem:<14} {first}")
        print("protocols:")
        for protocol in PROTOCOLS.values():
            print(f"  {protocol.name:<20} {protocol.title}")
        return 0
    if args.config is not None and args.config_option is not None:
        from zoo.errors import DataError

        raise DataError("command line", "give the config once: as CONFIG or as --config CONFIG")
    args.config = args.config if args.config is not None else args.config_option
    if args.config is None:
        raise FileNotFoundError("give a benchmark config (a YAML file or a shipped name; zoo benchmark --list)")
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        from zoo.errors import DataError

        raise DataError("command line", f"overrides are KEY=VALUE, got {bad}")
    benchmark(args.config, args.overrides, args.output_dir, args.devices, not args.no_progress)
    return 0
