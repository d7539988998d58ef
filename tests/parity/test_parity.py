"""Acceptance test: the zoo models reproduce the upstream fixtures under $ZOO_PARITY_DIR and $ZOO_PARITY_PENDING_DIR.

Each case folder (``<family>/.../case.json`` + ``io.safetensors`` + ``weights.safetensors``) is read by its
family's runner into a plan of call groups. One test per case checks that the plan accounts for every stored
tensor; one test per call group runs it chained (our own upstream results) and isolated (upstream's inputs)
and compares every output under the case's tolerance.

A missing fixture root fails under ``CI=true`` (a clone without fixtures must not go green) and is skipped with
its reason elsewhere; an empty parity root fails, an empty pending root is fine (nothing waits). A pending case whose
runner exists runs like any other; one without a runner is reported as an expected failure ("no runner yet"), never
dropped.
"""

from __future__ import annotations

import traceback

import pytest

from .harness import CaseRun, FixtureRoot, Plan, all_cases, coverage, fixture_roots, in_ci
from .runners import load_runner, runner_exists

ROOTS = fixture_roots()
CASES = all_cases(ROOTS)


def _plan(case) -> tuple[Plan | None, str | None]:
    if case.pending and not runner_exists(case.family):
        return None, None
    try:
        return load_runner(case.family).plan(case), None
    except Exception:  # reported by test_case_is_understood, which fails with this traceback
        return None, traceback.format_exc()


PLANS = {case.case_id: _plan(case) for case in CASES}
STEPS = [
    pytest.param(case, step.name, id=f"{case.case_id}::{step.name}")
    for case in CASES
    for step in (PLANS[case.case_id][0].steps if PLANS[case.case_id][0] else [])
]

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("root", ROOTS, ids=["parity", "pending"])
def test_fixture_root_holds_cases(root: FixtureRoot):
    reason = root.missing_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}; under CI=true the fixtures must be present")
        pytest.skip(reason)
    if root.pending:
        return  # nothing pending is fine: cases join the parity root once they pass
    assert any(case.root == root.path for case in CASES), f"{root.path} exists but holds no */case.json"


@pytest.mark.parametrize("case", CASES, ids=[case.case_id for case in CASES])
def test_case_is_understood(case):
    """The runner reads the case, and every stored tensor is an input or a compared output."""
    plan, error = PLANS[case.case_id]
    if plan is None and error is None:
        pytest.xfail(f"no runner yet: pending case {case.case_id} needs tests/parity/runners/{case.family}.py")
    assert plan is not None, f"cannot plan {case.case_id}:\n{error}"
    ledger = coverage(case, plan)
    assert not ledger.problems(), f"{case.case_id}: " + "; ".join(ledger.problems())
    assert ledger.compared, f"{case.case_id}: the plan compares nothing"


@pytest.fixture(scope="session")
def case_runs():
    return {}


@pytest.mark.parametrize(("case", "step_name"), STEPS)
def test_step_matches_upstream(case, step_name, case_runs, parity_report):
    plan, _ = PLANS[case.case_id]
    if case.case_id not in case_runs:
        case_runs[case.case_id] = CaseRun(case, plan, load_runner(case.family).build_model)
    run = case_runs[case.case_id]
    step = plan.step(step_name)
    chained = run.compare(step, run.chained(step))
    isolated = run.compare(step, run.isolated(step))
    for ours, alone in zip(chained, isolated):
        parity_report.record(case.family, case.case_id, step.name, step.outputs[ours.name].kind, ours, alone)
    lines = [f"chained  {c.line()}" for c in chained] + [f"isolated {c.line()}" for c in isolated]
    assert all(c.passed for c in chained + isolated), f"{case.case_id} {step.name}:\n" + "\n".join(lines)
