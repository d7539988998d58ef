"""Family-independent core of the parity harness.

A *case* is a folder holding ``case.json``, ``io.safetensors`` and ``weights.safetensors``, found anywhere under
a fixture root; the first path component below the root names the model family (or pipeline). Two roots are read:
``$ZOO_PARITY_DIR`` (default ``../shared/parity`` from the repo root) and ``$ZOO_PARITY_PENDING_DIR`` (default
``../shared/parity-pending``: cases waiting for their implementation; a pending case whose runner exists runs and
fails like any other, one without a runner is reported as such). Under ``CI=true`` a missing root is a failure,
elsewhere a skip with the reason. A family's runner (``runners/<family>.py``) turns a case into a *plan*:
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
PENDING_DIR_ENV = "ZOO_PARITY_PENDING_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"
DEFAULT_PENDING_DIR = REPO_ROOT.parent / "shared" / "parity-pending"
CASE_FILE = "case.json"
IO_FILE = "io.safetensors"
WEIGHTS_FILE = "weights.safetensors"
#: Inputs that case.json names by path (images, volumes) live in ``<root>/../data``.
DATA_DIR_NAME = "data"


def in_ci() -> bool:
    """True under continuous integration (``CI=true``, ``1`` or ``yes``): missing fixtures fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _root_from_env(env: str, default: Path) -> Path:
    configured = os.environ.get(env)
    return Path(configured).expanduser().resolve() if configured else default


def parity_root() -> Path:
    """The fixture root: ``$ZOO_PARITY_DIR`` or ``../shared/parity`` relative to the repo root."""
    return _root_from_env(PARITY_DIR_ENV, DEFAULT_PARITY_DIR)


def pending_root() -> Path:
    """The root of cases waiting for their code: ``$ZOO_PARITY_PENDING_DIR`` or ``../shared/parity-pending``."""
    return _root_from_env(PENDING_DIR_ENV, DEFAULT_PENDING_DIR)


@dataclass(frozen=True)
class FixtureRoot:
    """One folder of cases and the environment variable that moves it."""

    path: Path
    env: str
    pending: bool

    def missing_reason(self) -> str | None:
        """Why this root gives no cases (None when it exists)."""
        if self.path.is_dir():
            return None
        return f"no parity fixtures at {self.path} (set {self.env} to the fixture folder)"


def fixture_roots() -> list[FixtureRoot]:
    """The parity root and the pending root, in that order."""
    return [FixtureRoot(parity_root(), PARITY_DIR_ENV, False), FixtureRoot(pending_root(), PENDING_DIR_ENV, True)]


def all_cases(roots: list[FixtureRoot] | None = None) -> list[Case]:
    """Every case under the roots that exist (pending cases marked ``pending``)."""
    found: list[Case] = []
    for root in fixture_roots() if roots is None else roots:
        if root.path.is_dir():
            found += discover_cases(root.path, pending=root.pending)
    return found


# ----------------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One fixture folder (``pending``: found under the pending root)."""

    root: Path
    path: Path
    pending: bool = False

    @property
    def family(self) -> str:
        return self.path.relative_to(self.root).parts[0]

    @property
    def case_id(self) -> str:
        relative = self.path.relative_to(self.root).as_posix()
        return f"pending/{relative}" if self.pending else relative

    @property
    def data_dir(self) -> Path:
        """Where the input files case.json names live: ``<root>/../data``."""
        return self.root.parent / DATA_DIR_NAME

    def data_file(self, relative: str) -> Path:
        """An input file named in case.json; FileNotFoundError (a failure, never a skip) when it is absent."""
        path = self.data_dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"{self.case_id}: input {relative!r} not found at {path}")
        return path

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


def discover_cases(root: Path, pending: bool = False) -> list[Case]:
    """Every folder under ``root`` (the family folders themselves included) that holds a case.json."""
    return [Case(root, case_file.parent, pending) for case_file in sorted(root.glob(f"*/**/{CASE_FILE}"))]


# ------------------------------------------------------------------------------------------------------ tolerance

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)"
_PERCENT = re.compile(rf"<=\s*{_NUMBER}\s*%\s*(?P<foreground>(?:of\s+)?(?:its\s+|the\s+)?foreground)?")
_DICE = re.compile(rf"\bDice\s*>=\s*{_NUMBER}", re.IGNORECASE)
_MARGIN = re.compile(rf"\|[^|]+\|\s*<\s*{_NUMBER}")


@dataclass(frozen=True)
class BinaryMaskRule:
    """How far a thresholded mask may be from upstream's; every criterion given must hold.

    * ``max_fraction``: at most this fraction of ALL pixels/voxels differ (``<= 0.1% pixels may differ``);
    * ``max_foreground_fraction``: at most this fraction of UPSTREAM's foreground count differ
      (``<= 0.5% of foreground voxels may differ``; an empty upstream mask then allows no difference);
    * ``min_dice``: Dice of ours against upstream's at least this (``Dice >= 0.999``; two empty masks have Dice 1);
    * ``logit_margin``: mismatches only where upstream's logit lies within this margin of the threshold.
    """

    text: str
    max_fraction: float | None = None
    logit_margin: float | None = None
    max_foreground_fraction: float | None = None
    min_dice: float | None = None

    @classmethod
    def parse(cls, text: str) -> BinaryMaskRule:
        rule = cls.try_parse(text)
        if rule is None:
            raise ValueError(f"cannot interpret the binary-mask tolerance {text!r}")
        return rule

    @classmethod
    def try_parse(cls, text: str) -> BinaryMaskRule | None:
        """The rule a sentence states, or None when it states none (e.g. a float tolerance)."""
        fields: dict[str, float] = {}
        for match in _PERCENT.finditer(text):
            key = "max_foreground_fraction" if match["foreground"] else "max_fraction"
            _set_criterion(fields, key, float(match.group(1)) / 100.0, text)
        for match in _DICE.finditer(text):
            _set_criterion(fields, "min_dice", float(match.group(1)), text)
        for match in _MARGIN.finditer(text):
            _set_criterion(fields, "logit_margin", float(match.group(1)), text)
        return cls(text, **fields) if fields else None

    def criteria(self) -> dict[str, float]:
        """The criteria this rule sets (name -> value)."""
        names = ("max_fraction", "logit_margin", "max_foreground_fraction", "min_dice")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def describe(self) -> str:
        parts = []
        if self.max_fraction is not None:
            parts.append(f"<= {self.max_fraction:.4%} pixels may differ")
        if self.max_foreground_fraction is not None:
            parts.append(f"<= {self.max_foreground_fraction:.4%} of upstream's foreground may differ")
        if self.min_dice is not None:
            parts.append(f"Dice >= {self.min_dice:g}")
        if self.logit_margin is not None:
            parts.append(f"mismatches only where |logit| < {self.logit_margin:g}")
        return " and ".join(parts)


def _set_criterion(fields: dict[str, float], key: str, value: float, text: str) -> None:
    if key in fields and fields[key] != value:
        raise ValueError(f"the mask rule {text!r} gives two values for {key}: {fields[key]} and {value}")
    fields[key] = value


#: Numeric keys of a tolerance block that state one criterion of a named tensor's mask rule.
_NUMERIC_CRITERIA = {
    "_min_dice": "min_dice",
    "_max_differing_fraction_of_foreground": "max_foreground_fraction",
    "_max_differing_fraction": "max_fraction",
}
_CLAUSE = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.]*)\s*:\s*(?P<rule>.+?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Tolerance:
    """Per-case tolerance: ``|ours - upstream| <= atol + rtol * |upstream|``, a case-wide mask rule (``binary``) and
    mask rules the case states for named tensors or roles (``rules``, e.g. ``final_mask``, ``infer3d_segs``)."""

    atol: float
    rtol: float
    binary: BinaryMaskRule | None = None
    rules: Mapping[str, BinaryMaskRule] = field(default_factory=dict)

    def rule(self, name: str) -> BinaryMaskRule | None:
        """The mask rule stated for ``name``, else the case-wide one."""
        return self.rules.get(name, self.binary)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Tolerance:
        """Read the tolerance wherever the case.json keeps it.

        Float tolerance: every ``*atol`` and ``*rtol`` number under a ``recommended`` entry of a ``*tolerance*``
        block (fixture generators spell it ``atol`` / ``float_atol`` / ``float_tensors.atol``); a block without a
        ``recommended`` entry gives them as its own direct keys (``tolerance.float_atol``). Each must be stated
        exactly once (several equal statements are fine).

        Mask rules: a string under a key mentioning ``binary`` is the case-wide rule. Outside ``recommended`` /
        ``measured`` entries, a string under any other key that states a rule (``"final_mask": "Dice >= 0.999 and
        <= 0.1% of foreground voxels differ"``) is the rule of that name; a sentence of ``;``-separated
        ``name: rule`` clauses gives one rule per name; numbers under ``<name>_min_dice`` /
        ``<name>_max_differing_fraction_of_foreground`` / ``<name>_max_differing_fraction`` are criteria of
        ``name``'s rule and must agree with what its sentence says.
        """
        found: dict[str, set[float]] = {"atol": set(), "rtol": set()}
        binary: list[str] = []
        texts: dict[str, BinaryMaskRule] = {}
        numbers: dict[str, dict[str, float]] = {}
        blocks = {key: block for key, block in spec.items() if "tolerance" in key and isinstance(block, Mapping)}
        has_recommended = any("recommended" in key or _mentions(block, "recommended") for key, block in blocks.items())

        def walk_recommended(node: Any, path: tuple[str, ...]) -> None:
            if isinstance(node, Mapping):
                for key, value in node.items():
                    walk_recommended(value, (*path, str(key)))
                return
            if not any("recommended" in part for part in path):
                return
            key = path[-1]
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                for kind in found:
                    if key.endswith(kind):
                        found[kind].add(float(node))
            elif isinstance(node, str) and "binary" in key:
                binary.append(node)

        for key, block in blocks.items():
            if has_recommended:
                walk_recommended(block, (key,))
            for name, value in block.items():
                if isinstance(value, Mapping):
                    continue  # recommended / measured / per-tensor measurements
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if not has_recommended:
                        for kind in found:
                            if name.endswith(kind):
                                found[kind].add(float(value))
                    for suffix, criterion in _NUMERIC_CRITERIA.items():
                        if name.endswith(suffix):
                            numbers.setdefault(name[: -len(suffix)], {})[criterion] = float(value)
                            break
                elif isinstance(value, str):
                    if "binary" in name:
                        if not has_recommended:
                            binary.append(value)
                        continue
                    for rule_name, rule in _stated_rules(name, value):
                        if rule_name in texts and texts[rule_name] != rule:
                            raise ValueError(f"case.json gives two mask rules for {rule_name!r}")
                        texts[rule_name] = rule
        for kind, values in found.items():
            if len(values) != 1:
                raise ValueError(f"case.json must recommend exactly one {kind}; found {sorted(values) or 'none'}")
        if len(set(binary)) > 1:
            raise ValueError(f"case.json gives several binary-mask rules: {binary}")
        rules = dict(texts)
        for name, criteria in numbers.items():
            stated = texts.get(name)
            if stated is not None:
                disagree = {k: v for k, v in criteria.items() if stated.criteria().get(k) != v}
                if disagree:
                    raise ValueError(f"case.json: {name}'s numbers {disagree} disagree with its rule {stated.text!r}")
                continue
            rules[name] = BinaryMaskRule(f"{name}: {criteria}", **criteria)
        rule = BinaryMaskRule.parse(binary[0]) if binary else None
        return cls(found["atol"].pop(), found["rtol"].pop(), rule, rules)


def _mentions(node: Any, word: str) -> bool:
    if isinstance(node, Mapping):
        return any(word in str(key) or _mentions(value, word) for key, value in node.items())
    return False


def _stated_rules(key: str, text: str) -> list[tuple[str, BinaryMaskRule]]:
    """``(name, rule)`` stated by the sentence under ``key``: ``name: rule`` clauses, else the whole sentence."""
    clauses = [_CLAUSE.match(part) for part in text.split(";")]
    if len(clauses) > 1 or (clauses and clauses[0] is not None and ":" in text):
        found = []
        for clause in clauses:
            if clause is None:
                continue
            rule = BinaryMaskRule.try_parse(clause["rule"])
            if rule is not None:
                found.append((clause["name"], rule))
        return found
    rule = BinaryMaskRule.try_parse(text)
    return [(key, rule)] if rule is not None else []


# ----------------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Expect:
    """How a step output is compared: ``float`` (atol/rtol), ``binary`` (mask rule) or ``exact``.

    For ``binary`` with a logit-margin rule, ``logits`` names the fixture tensor whose values decide which
    mismatches are allowed; ``rule`` replaces the case-wide mask rule where a case.json states one for this tensor.
    ``tolerance`` replaces the case-wide float tolerance where case.json states a stricter one for this tensor.
    """

    kind: str = "float"
    logits: str | None = None
    rule: BinaryMaskRule | None = None
    tolerance: Tolerance | None = None


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
    mine, theirs = ours.to(torch.bool), expected.to(torch.bool)
    differ = mine != theirs
    count = int(differ.sum())
    if rule is None:
        detail = f"no mask rule in case.json, so exact: {count} differ"
        return Comparison(name, count == 0, float(count > 0), detail, count)
    passed, notes = True, [f"{count}/{differ.numel()} pixels differ"]
    if rule.max_fraction is not None:
        passed &= count <= rule.max_fraction * differ.numel()
    if rule.max_foreground_fraction is not None:
        foreground = int(theirs.sum())
        passed &= count <= rule.max_foreground_fraction * foreground
        share = f"{count / foreground:.4%}" if foreground else ("none" if count == 0 else "all")
        notes.append(f"{share} of upstream's {foreground} foreground pixels")
    if rule.min_dice is not None:
        score = dice(mine, theirs)
        passed &= score >= rule.min_dice
        notes.append(f"Dice {score:.6f}")
    if rule.logit_margin is not None:
        if logits is None:
            raise ValueError(f"{name}: the rule {rule.text!r} needs upstream logits but none were named")
        outside = differ & (logits.abs() >= rule.logit_margin)
        passed &= not bool(outside.any())
        notes.append(f"{int(outside.sum())} of them where |logit| >= {rule.logit_margin:g}")
    return Comparison(name, bool(passed), float(count > 0), "; ".join(notes) + f" ({rule.describe()})", count)


def dice(a: Tensor, b: Tensor) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


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
        if not any(name in self._producers for name in step.inputs):
            return self.chained(step)  # every input is the fixture's either way: the same call, run once
        return self._execute(step, {name: self.case.expected(name) for name in step.inputs})

    def compare(self, step: Step, outputs: Mapping[str, Tensor]) -> list[Comparison]:
        tol = self.case.tolerance
        results = []
        for name, expect in step.outputs.items():
            expected = self.case.expected(name)
            if expect.kind == "float":
                results.append(compare_float(name, outputs[name], expected, expect.tolerance or tol))
            elif expect.kind == "exact":
                results.append(compare_exact(name, outputs[name], expected))
            elif expect.kind == "binary":
                logits = self.case.expected(expect.logits) if expect.logits else None
                results.append(compare_binary(name, outputs[name], expected, expect.rule or tol.rule(name), logits))
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


def window_padded_tokens(grid: int, window: int, dims: int) -> int:
    """Tokens of the whole padded grid of a windowed-attention block: the ``grid`` (per axis) rounded up to a
    multiple of ``window``, to the power ``dims`` (what SAM-style ``window_partition`` attends over in all windows
    together). Not the tokens of one window (``window ** dims``): the two agree only when ``grid <= window``."""
    if grid < 1 or window < 1:
        raise ValueError(f"grid and window must be positive, got {grid} and {window}")
    return (-(-grid // window) * window) ** dims


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
    check_weights_arrived(model, weights)
    return model.eval()


def check_weights_arrived(model: torch.nn.Module, weights: Path) -> None:
    """Every tensor of the authors' file is in the model, unchanged, under its name (after the model's own key
    mapping, ``adapt_official_state_dict``, where the model renames the authors' keys)."""
    stored = load_file(weights)
    adapt = getattr(model, "adapt_official_state_dict", None)
    expected = adapt(stored) if callable(adapt) else stored
    loaded = model.state_dict()
    missing = sorted(set(expected) - set(loaded))
    differ = [key for key, value in expected.items() if key in loaded and not torch.equal(loaded[key].cpu(), value)]
    if missing or differ:
        raise AssertionError(f"{weights}: tensors missing ({missing[:5]}) or changed ({differ[:5]}) on the way in")


def build_zoo_equivalent(case: Case) -> torch.nn.Module:
    """The model a pipeline case's ``constructor.zoo_equivalent`` block names, built the way a user builds it
    (``zoo.create_model(model, **model_overrides)``), with the case's weights loaded through the converter users
    call (``load_official_weights``) and checked to have arrived unchanged.

    The authors' own constructor arguments beside it are not mapped one by one here: the strict load checks every
    width, and the compared intermediates check what shapes cannot (heads, windows, global blocks).
    """
    import zoo
    from zoo.hub import load_official_weights

    block = case.spec.get("constructor", {}).get("zoo_equivalent")
    if not isinstance(block, Mapping) or not isinstance(block.get("model"), str):
        raise ValueError(f"{case.case_id}: case.json has no constructor.zoo_equivalent block with a 'model' name")
    unknown = sorted(set(block) - {"model", "model_overrides"})
    if unknown:
        raise ValueError(f"{case.case_id}: constructor.zoo_equivalent has keys the harness does not know: {unknown}")
    overrides = {name: _as_config_value(value) for name, value in (block.get("model_overrides") or {}).items()}
    model = zoo.create_model(block["model"], **overrides)
    load_official_weights(model, case.weights_path)
    check_weights_arrived(model, case.weights_path)
    return model.eval()


def _as_config_value(value: Any) -> Any:
    """JSON lists as the tuples config dataclasses hold."""
    return tuple(_as_config_value(v) for v in value) if isinstance(value, list) else value
