"""Family-independent core of the parity harness.

A *case* is a folder holding ``case.json``, ``io.safetensors`` and ``weights.safetensors``, found anywhere under
the fixture root (``$ZOO_PARITY_DIR``, default ``../shared/parity`` from the repo root); the first path component
below the root names the model family. A family's runner (``runners/<family>.py``) turns a case into a *plan*:
a list of :class:`Step` s, each a call group that reads named fixture tensors and produces named tensors to
compare. This module loads cases, checks that the plan accounts for every stored tensor (the coverage ledger),
executes steps, and compares results under the case's own tolerance.

Steps run in two ways and both must agree with upstream:

* *chained*: an input that another step produces is taken from our own output (the real pipeline, errors
  accumulate);
* *isolated*: every input comes from the fixture (each component judged on upstream's exact inputs; pinpoints
  which component drifts).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

PARITY_DIR_ENV = "ZOO_PARITY_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"
CASE_FILE = "case.json"
IO_FILE = "io.safetensors"
WEIGHTS_FILE = "weights.safetensors"


def parity_root() -> Path:
    """The fixture root: ``$ZOO_PARITY_DIR`` or ``../shared/parity`` relative to the repo root."""
    configured = os.environ.get(PARITY_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else DEFAULT_PARITY_DIR


# ----------------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One fixture folder."""

    root: Path
    path: Path

    @property
    def family(self) -> str:
        return self.path.relative_to(self.root).parts[0]

    @property
    def case_id(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @cached_property
    def spec(self) -> dict[str, Any]:
        with open(self.path / CASE_FILE, encoding="utf-8") as handle:
            return json.load(handle)

    @cached_property
    def tensor_names(self) -> tuple[str, ...]:
        """Names in io.safetensors, read from the header only."""
        with safe_open(self.path / IO_FILE, framework="pt") as handle:
            return tuple(sorted(handle.keys()))

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a stored tensor, read from the header only."""
        with safe_open(self.path / IO_FILE, framework="pt") as handle:
            return tuple(handle.get_slice(name).get_shape())

    @cached_property
    def tensors(self) -> dict[str, Tensor]:
        return load_file(self.path / IO_FILE)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @cached_property
    def tolerance(self) -> Tolerance:
        return Tolerance.from_spec(self.spec)

    def empty_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Outputs the generator could not store because they are empty (``not_stored_empty_tensors``)."""
        listed = self.spec.get("not_stored_empty_tensors") or {}
        return {name: tuple(entry["shape"]) for name, entry in listed.items()}

    def expected(self, name: str) -> Tensor:
        """The fixture's tensor ``name`` (empty tensors listed in case.json are materialised)."""
        if name in self.tensor_names:
            return self.tensors[name]
        empty = self.empty_tensor_shapes()
        if name in empty:
            return torch.empty(empty[name])
        raise KeyError(f"{self.case_id}: no tensor {name!r} in {IO_FILE} or not_stored_empty_tensors")

    def knows(self, name: str) -> bool:
        return name in self.tensor_names or name in self.empty_tensor_shapes()


def discover_cases(root: Path) -> list[Case]:
    """Every folder under ``root`` (the family folders themselves included) that holds a case.json."""
    return [Case(root, case_file.parent) for case_file in sorted(root.glob(f"*/**/{CASE_FILE}"))]


# ------------------------------------------------------------------------------------------------------ tolerance


@dataclass(frozen=True)
class BinaryMaskRule:
    """How many pixels of a thresholded mask may differ from upstream's.

    Either a fraction of all pixels (``max_fraction``) or only pixels whose upstream logit lies within
    ``logit_margin`` of the threshold.
    """

    text: str
    max_fraction: float | None = None
    logit_margin: float | None = None

    @classmethod
    def parse(cls, text: str) -> BinaryMaskRule:
        fraction = re.search(r"<=\s*([0-9.]+(?:e-?\d+)?)\s*%", text)
        if fraction:
            return cls(text, max_fraction=float(fraction.group(1)) / 100.0)
        margin = re.search(r"\|[^|]+\|\s*<\s*([0-9.]+(?:e-?\d+)?)", text)
        if margin:
            return cls(text, logit_margin=float(margin.group(1)))
        raise ValueError(f"cannot interpret the binary-mask tolerance {text!r}")

    def describe(self) -> str:
        if self.max_fraction is not None:
            return f"<= {self.max_fraction:.4%} pixels may differ"
        return f"mismatches only where |logit| < {self.logit_margin:g}"


@dataclass(frozen=True)
class Tolerance:
    """Per-case tolerance: ``|ours - upstream| <= atol + rtol * |upstream|`` and an optional mask rule."""

    atol: float
    rtol: float
    binary: BinaryMaskRule | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Tolerance:
        """Read the *recommended* tolerance wherever the case.json keeps it.

        Fixture generators spell it differently (``atol`` / ``float_atol`` / ``float_tensors.atol``); every
        ``*atol`` and ``*rtol`` number under a ``recommended`` entry of a ``*tolerance*`` block is collected and
        they must agree. A string under a key mentioning ``binary`` is the binary-mask rule.
        """
        found: dict[str, set[float]] = {"atol": set(), "rtol": set()}
        binary: list[str] = []

        def walk(node: Any, path: tuple[str, ...]) -> None:
            if isinstance(node, Mapping):
                for key, value in node.items():
                    walk(value, (*path, str(key)))
                return
            in_recommended = any("recommended" in part for part in path)
            if not in_recommended:
                return
            key = path[-1]
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                for kind in found:
                    if key.endswith(kind):
                        found[kind].add(float(node))
            elif isinstance(node, str) and "binary" in key:
                binary.append(node)

        for key, block in spec.items():
            if "tolerance" in key:
                walk(block, (key,))
        for kind, values in found.items():
            if len(values) != 1:
                raise ValueError(f"case.json must recommend exactly one {kind}; found {sorted(values) or 'none'}")
        if len(binary) > 1:
            raise ValueError(f"case.json gives several binary-mask rules: {binary}")
        rule = BinaryMaskRule.parse(binary[0]) if binary else None
        return cls(found["atol"].pop(), found["rtol"].pop(), rule)


# ----------------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Expect:
    """How a step output is compared: ``float`` (atol/rtol), ``binary`` (mask rule) or ``exact``.

    For ``binary`` with a logit-margin rule, ``logits`` names the fixture tensor whose values decide which
    mismatches are allowed; ``rule`` replaces the case-wide mask rule where a case.json states it elsewhere.
    """

    kind: str = "float"
    logits: str | None = None
    rule: BinaryMaskRule | None = None


@dataclass
class Comparison:
    """Result of comparing one tensor."""

    name: str
    passed: bool
    max_abs_err: float
    detail: str
    mismatches: int | None = None

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return f"{verdict:4} {self.name}: max abs err {self.max_abs_err:.3e}; {self.detail}"


def _shape_problem(name: str, actual: Tensor, expected: Tensor) -> Comparison | None:
    if tuple(actual.shape) != tuple(expected.shape):
        detail = f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        return Comparison(name, False, math.inf, detail)
    return None


def compare_float(name: str, actual: Tensor, expected: Tensor, tol: Tolerance) -> Comparison:
    problem = _shape_problem(name, actual, expected)
    if problem:
        return problem
    if not actual.is_floating_point():
        return Comparison(name, False, math.inf, f"dtype {actual.dtype} is not floating point")
    if actual.numel() == 0:
        return Comparison(name, True, 0.0, "empty, shapes agree")
    ours, theirs = actual.detach().double().cpu(), expected.double()
    if not torch.isfinite(ours).all():
        return Comparison(name, False, math.inf, f"{int((~torch.isfinite(ours)).sum())} non-finite values")
    error = (ours - theirs).abs()
    allowed = tol.atol + tol.rtol * theirs.abs()
    violations = error > allowed
    worst = int(error.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), error.shape))
    detail = (
        f"atol {tol.atol:g} rtol {tol.rtol:g}; worst at {where}: ours {ours.flatten()[worst].item():.6g} vs "
        f"upstream {theirs.flatten()[worst].item():.6g}; {int(violations.sum())}/{error.numel()} outside tolerance"
    )
    return Comparison(name, not bool(violations.any()), float(error.max()), detail)


def compare_exact(name: str, actual: Tensor, expected: Tensor) -> Comparison:
    problem = _shape_problem(name, actual, expected)
    if problem:
        return problem
    differ = actual.detach().cpu().to(expected.dtype) != expected
    error = float((actual.detach().cpu().double() - expected.double()).abs().max()) if actual.numel() else 0.0
    count = int(differ.sum())
    return Comparison(name, count == 0, error, f"exact; {count} values differ", count)


def compare_binary(
    name: str, actual: Tensor, expected: Tensor, rule: BinaryMaskRule | None, logits: Tensor | None
) -> Comparison:
    problem = _shape_problem(name, actual, expected)
    if problem:
        return problem
    ours = actual.detach().cpu()
    if ours.dtype != torch.bool and not torch.isin(ours, torch.tensor([0, 1], dtype=ours.dtype)).all():
        return Comparison(name, False, math.inf, "values other than 0 and 1")
    differ = ours.to(torch.uint8) != expected.to(torch.uint8)
    count = int(differ.sum())
    if rule is None:
        detail = f"no mask rule in case.json, so exact: {count} differ"
        return Comparison(name, count == 0, float(count > 0), detail, count)
    if rule.max_fraction is not None:
        passed = count <= rule.max_fraction * differ.numel()
        detail = f"{count}/{differ.numel()} pixels differ ({rule.describe()})"
    else:
        if logits is None:
            raise ValueError(f"{name}: the rule {rule.text!r} needs upstream logits but none were named")
        outside = differ & (logits.abs() >= rule.logit_margin)
        passed = not bool(outside.any())
        detail = f"{count} pixels differ, {int(outside.sum())} of them where |logit| >= {rule.logit_margin:g}"
    return Comparison(name, passed, float(count > 0), detail, count)


# ------------------------------------------------------------------------------------------------------------ plans

StepFunction = Callable[["StepContext", Mapping[str, Tensor]], Mapping[str, Tensor]]


@dataclass(frozen=True)
class Step:
    """One call group: reads ``inputs`` (fixture names), returns ``outputs`` (fixture names) to compare."""

    name: str
    inputs: tuple[str, ...]
    outputs: Mapping[str, Expect]
    run: StepFunction


@dataclass
class Plan:
    """A runner's reading of a case: the steps, plus names it recognised as inputs only and names it could not place."""

    steps: list[Step] = field(default_factory=list)
    not_understood: list[str] = field(default_factory=list)

    def add(self, name: str, inputs: tuple[str, ...] | list[str], outputs: Mapping[str, Expect], run: StepFunction):
        if any(step.name == name for step in self.steps):
            raise ValueError(f"duplicate step name {name!r}")
        self.steps.append(Step(name, tuple(inputs), dict(outputs), run))

    def step(self, name: str) -> Step:
        for candidate in self.steps:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def producers(self) -> dict[str, Step]:
        """The first step that outputs each name (later steps may compare the same tensor along another path)."""
        found: dict[str, Step] = {}
        for step in self.steps:
            for output in step.outputs:
                found.setdefault(output, step)
        return found


@dataclass
class Coverage:
    """The ledger: every stored tensor must be an input or a compared output."""

    inputs: set[str]
    compared: set[str]
    unaccounted: list[str]
    missing: list[str]

    def problems(self) -> list[str]:
        found = []
        if self.unaccounted:
            found.append(f"tensors the harness does not understand: {self.unaccounted}")
        if self.missing:
            found.append(f"tensors the plan needs but the fixture lacks: {self.missing}")
        return found


def coverage(case: Case, plan: Plan) -> Coverage:
    stored = set(case.tensor_names)
    compared = {name for step in plan.steps for name in step.outputs}
    read = {name for step in plan.steps for name in step.inputs}
    inputs = read - compared
    unaccounted = sorted((stored - compared - inputs) | set(plan.not_understood))
    missing = sorted(name for name in (compared | inputs) if not case.knows(name))
    return Coverage(inputs & stored, compared, unaccounted, missing)


# -------------------------------------------------------------------------------------------------------- execution


class TrackedInputs(Mapping[str, Tensor]):
    """The inputs handed to a step, recording which ones it actually read."""

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            raise KeyError(f"step read {name!r}, which it did not declare as an input")
        self.read.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class StepContext:
    """What a step function may use: the case, its model (built once per case) and a per-case cache."""

    def __init__(self, case: Case, build_model: Callable[[Case], torch.nn.Module]) -> None:
        self.case = case
        self._build_model = build_model
        self._model: torch.nn.Module | None = None
        self.cache: dict[str, Any] = {}

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self._build_model(self.case).eval()
        return self._model


class CaseRun:
    """Executes a plan's steps for one case, memoising chained results."""

    def __init__(self, case: Case, plan: Plan, build_model: Callable[[Case], torch.nn.Module]) -> None:
        self.case = case
        self.plan = plan
        self.context = StepContext(case, build_model)
        self._producers = plan.producers()
        self._chained: dict[str, dict[str, Tensor]] = {}

    def _execute(self, step: Step, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        tracked = TrackedInputs(values)
        with torch.inference_mode():
            outputs = dict(step.run(self.context, tracked))
        unread = sorted(set(step.inputs) - tracked.read)
        if unread:
            raise AssertionError(f"step {step.name!r} declared inputs it never read: {unread}")
        if set(outputs) != set(step.outputs):
            raise AssertionError(
                f"step {step.name!r} returned {sorted(outputs)} but declares {sorted(step.outputs)}"
            )
        return outputs

    def chained(self, step: Step) -> dict[str, Tensor]:
        if step.name not in self._chained:
            values = {}
            for name in step.inputs:
                producer = self._producers.get(name)
                values[name] = self.chained(producer)[name] if producer else self.case.expected(name)
            self._chained[step.name] = self._execute(step, values)
        return self._chained[step.name]

    def isolated(self, step: Step) -> dict[str, Tensor]:
        return self._execute(step, {name: self.case.expected(name) for name in step.inputs})

    def compare(self, step: Step, outputs: Mapping[str, Tensor]) -> list[Comparison]:
        tol = self.case.tolerance
        results = []
        for name, expect in step.outputs.items():
            expected = self.case.expected(name)
            if expect.kind == "float":
                results.append(compare_float(name, outputs[name], expected, tol))
            elif expect.kind == "exact":
                results.append(compare_exact(name, outputs[name], expected))
            elif expect.kind == "binary":
                logits = self.case.expected(expect.logits) if expect.logits else None
                results.append(compare_binary(name, outputs[name], expected, expect.rule or tol.binary, logits))
            else:
                raise ValueError(f"unknown comparison kind {expect.kind!r} for {name}")
        return results


# -------------------------------------------------------------------------------------------- model construction


@dataclass(frozen=True)
class Arg:
    """How one upstream constructor argument carries over to our config.

    Exactly one of:
      * ``field``: sets that config field (``convert`` turns the upstream value into ours);
      * ``check``: the value must equal ``check(config)`` once the model is built (e.g. a size that our
        config derives from other fields);
      * ``text``: a descriptive string (layer types, eps) that must match this regular expression, because
        the architecture fixes it;
      * ``ignore``: the reason it cannot change a model whose weights are loaded (e.g. init-only options).
    """

    field: str | None = None
    convert: Callable[[Any], Any] | None = None
    check: Callable[[Any], Any] | None = None
    text: str | None = None
    ignore: str | None = None


ConstructorSpec = Mapping[str, "Arg | ConstructorSpec"]


def map_constructor(
    args: Mapping[str, Any], spec: ConstructorSpec, where: str = "constructor"
) -> tuple[dict[str, Any], list[tuple[str, Any, Callable[[Any], Any]]]]:
    """Turn upstream constructor arguments into ``create_model`` overrides plus checks on the built config.

    Every argument must be known to ``spec``: an unknown one fails, so a case that varies something our
    mapping does not know cannot pass silently.
    """
    overrides: dict[str, Any] = {}
    checks: list[tuple[str, Any, Callable[[Any], Any]]] = []
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise ValueError(f"{where}: upstream arguments the harness does not know how to map: {unknown}")
    for key, value in args.items():
        rule, path = spec[key], f"{where}.{key}"
        if isinstance(rule, Mapping):
            if not isinstance(value, Mapping):
                raise ValueError(f"{path}: expected a block of arguments, got {value!r}")
            nested, nested_checks = map_constructor(value, rule, path)
            for name, setting in nested.items():
                _set_once(overrides, name, setting, path)
            checks.extend(nested_checks)
        elif rule.field is not None:
            _set_once(overrides, rule.field, rule.convert(value) if rule.convert else value, path)
        elif rule.check is not None:
            checks.append((path, value, rule.check))
        elif rule.text is not None:
            if not isinstance(value, str) or not re.search(rule.text, value):
                raise ValueError(f"{path} = {value!r} is not supported (the architecture fixes /{rule.text}/)")
        elif rule.ignore is None:
            raise ValueError(f"{path}: Arg needs field, check, text or ignore")
    return overrides, checks


def _set_once(overrides: dict[str, Any], name: str, value: Any, path: str) -> None:
    if name in overrides and overrides[name] != value:
        raise ValueError(f"{path} sets config field {name!r} to {value!r}, already {overrides[name]!r}")
    overrides[name] = value


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


def build_model(released_name: str, args: Mapping[str, Any], spec: ConstructorSpec, weights: Path) -> torch.nn.Module:
    """``zoo.create_model(released_name, **overrides)``, checked against ``args``, with upstream weights loaded.

    Weights go through the converter users call (``load_official_weights``), then every tensor of the file is
    checked to have arrived unchanged under the same name.
    """
    import zoo
    from zoo.hub import load_official_weights

    overrides, checks = map_constructor(args, spec)
    model = zoo.create_model(released_name, **overrides)
    for path, upstream, derive in checks:
        ours = derive(model.config)
        if _normalise(ours) != _normalise(upstream):
            raise ValueError(f"{path} = {upstream!r} but the config built from the other arguments gives {ours!r}")
    load_official_weights(model, weights)
    loaded = model.state_dict()
    stored = load_file(weights)
    differ = [key for key, value in stored.items() if key in loaded and not torch.equal(loaded[key].cpu(), value)]
    if differ:
        raise AssertionError(f"{weights}: tensors changed on the way into the model: {differ[:5]}")
    return model.eval()
