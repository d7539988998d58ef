"""The parity harness itself: it must fail on what it is meant to catch.

Most tests use small synthetic fixtures. The last ones copy a real case (skipped without fixtures) and show that
an unknown tensor, a perturbed weight and an unknown constructor argument each make the parity tests fail,
and that renaming prompt cases needs no code change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .harness import (
    Arg,
    BinaryMaskRule,
    Case,
    Comparison,
    CaseRun,
    Expect,
    Plan,
    Tolerance,
    compare_binary,
    compare_exact,
    compare_float,
    coverage,
    discover_cases,
    map_constructor,
    parity_root,
)
from .report import ParityReport
from .runners import load_runner

TOL = Tolerance(atol=1e-4, rtol=1e-4)


def make_case(root: Path, family: str, tensors: dict[str, torch.Tensor], spec: dict | None = None) -> Case:
    folder = root / family
    folder.mkdir(parents=True)
    (folder / "case.json").write_text(json.dumps(spec or {"tolerance": {"recommended": {"atol": 1e-4, "rtol": 1e-4}}}))
    save_file(tensors, folder / "io.safetensors")
    save_file({"w": torch.zeros(1)}, folder / "weights.safetensors")
    return Case(root, folder)


# ------------------------------------------------------------------------------------------------------ discovery


def test_cases_are_found_in_family_folders_and_below(tmp_path):
    for folder in ("fam_a", "fam_b/bigger", "fam_b/bigger/nested"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "case.json").write_text("{}")
    found = [(case.family, case.case_id) for case in discover_cases(tmp_path)]
    assert found == [("fam_a", "fam_a"), ("fam_b", "fam_b/bigger"), ("fam_b", "fam_b/bigger/nested")]


def test_fixture_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_PARITY_DIR", str(tmp_path))
    assert parity_root() == tmp_path.resolve()


def test_unknown_family_names_the_module_to_add():
    with pytest.raises(LookupError, match="tests/parity/runners/no_such_family.py"):
        load_runner("no_such_family")


# ------------------------------------------------------------------------------------------------------ tolerance


@pytest.mark.parametrize(
    "spec",
    [
        {"tolerance": {"recommended": {"atol": 1e-4, "rtol": 2e-4}}},
        {"tolerance": {"measured": {"atol": 9.0}, "recommended": {"float_atol": 1e-4, "float_rtol": 2e-4}}},
        {"recommended_tolerance": {"float_tensors": {"atol": 1e-4, "rtol": 2e-4}}},
    ],
)
def test_tolerance_is_read_from_each_spelling(spec):
    tol = Tolerance.from_spec(spec)
    assert (tol.atol, tol.rtol) == (1e-4, 2e-4)


def test_conflicting_or_missing_tolerances_are_errors():
    with pytest.raises(ValueError, match="exactly one atol"):
        Tolerance.from_spec({"tolerance": {"recommended": {"atol": 1e-4, "float_atol": 1e-3, "rtol": 0.0}}})
    with pytest.raises(ValueError, match="exactly one rtol"):
        Tolerance.from_spec({"tolerance": {"recommended": {"atol": 1e-4}}})


def test_binary_mask_rules_are_parsed_or_refused():
    assert BinaryMaskRule.parse("<=0.1% pixels may differ").max_fraction == pytest.approx(0.001)
    assert BinaryMaskRule.parse("allow mismatches only where |upsampled_logit| < 1e-3").logit_margin == 1e-3
    with pytest.raises(ValueError, match="cannot interpret"):
        BinaryMaskRule.parse("be reasonable")


# ----------------------------------------------------------------------------------------------------- comparison


def test_float_comparison_reports_the_largest_error_and_fails_beyond_tolerance():
    expected = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    close = compare_float("t", expected + 5e-5, expected, TOL)
    far = compare_float("t", expected + torch.tensor([0.0, 1e-3, 0.0]), expected, TOL)
    assert close.passed and close.max_abs_err == pytest.approx(5e-5, rel=1e-3)
    assert not far.passed and far.max_abs_err == pytest.approx(1e-3, rel=1e-3) and "(1,)" in far.detail


def test_float_comparison_fails_on_shape_and_nan():
    assert not compare_float("t", torch.zeros(2, 3), torch.zeros(3, 2), TOL).passed
    assert not compare_float("t", torch.tensor([float("nan")]), torch.zeros(1), TOL).passed


def test_binary_fraction_rule_counts_pixels():
    expected = torch.zeros(1000, dtype=torch.uint8)
    one_off, two_off = expected.clone(), expected.clone()
    one_off[0] = 1
    two_off[:2] = 1
    rule = BinaryMaskRule.parse("<=0.1% pixels may differ")
    assert compare_binary("m", one_off, expected, rule, None).passed
    assert not compare_binary("m", two_off, expected, rule, None).passed


def test_binary_margin_rule_allows_flips_only_near_the_threshold():
    expected = torch.tensor([0, 0], dtype=torch.uint8)
    logits = torch.tensor([1e-4, -0.5])
    rule = BinaryMaskRule.parse("|logit| < 1e-3")
    assert compare_binary("m", torch.tensor([True, False]), expected, rule, logits).passed
    assert not compare_binary("m", torch.tensor([False, True]), expected, rule, logits).passed


def test_exact_comparison_counts_differing_values():
    expected = torch.tensor([1, 2, 3], dtype=torch.int64)
    assert compare_exact("t", torch.tensor([1, 2, 3]), expected).passed
    result = compare_exact("t", torch.tensor([1, 2, 4]), expected)
    assert not result.passed and result.mismatches == 1


# --------------------------------------------------------------------------------------------- coverage and steps


def test_a_tensor_no_step_explains_fails_coverage(tmp_path):
    case = make_case(tmp_path, "fam", {"x": torch.ones(2), "y": torch.ones(2), "mystery": torch.ones(1)})
    plan = Plan()
    plan.add("double", ["x"], {"y": Expect()}, lambda ctx, v: {"y": 2 * v["x"]})
    ledger = coverage(case, plan)
    assert ledger.inputs == {"x"} and ledger.compared == {"y"}
    assert ledger.unaccounted == ["mystery"]


def test_a_step_that_needs_a_missing_tensor_fails_coverage(tmp_path):
    case = make_case(tmp_path, "fam", {"y": torch.ones(2)})
    plan = Plan()
    plan.add("double", ["x"], {"y": Expect()}, lambda ctx, v: {"y": 2 * v["x"]})
    assert coverage(case, plan).missing == ["x"]


def test_chained_steps_use_our_outputs_and_isolated_steps_use_the_fixture(tmp_path):
    # The stored "y" is off by 1e-3: chained "z" inherits our exact y, isolated "z" starts from the stored one.
    case = make_case(tmp_path, "fam", {"x": torch.ones(2), "y": torch.full((2,), 2.001), "z": torch.full((2,), 4.0)})
    plan = Plan()
    plan.add("double", ["x"], {"y": Expect()}, lambda ctx, v: {"y": 2 * v["x"]})
    plan.add("double_again", ["y"], {"z": Expect()}, lambda ctx, v: {"z": 2 * v["y"]})
    run = CaseRun(case, plan, build_model=lambda case: torch.nn.Identity())
    step = plan.step("double_again")
    assert run.compare(step, run.chained(step))[0].passed
    assert not run.compare(step, run.isolated(step))[0].passed


def test_a_step_must_read_every_input_it_declares(tmp_path):
    case = make_case(tmp_path, "fam", {"x": torch.ones(2), "labels": torch.ones(2), "y": torch.ones(2)})
    plan = Plan()
    plan.add("ignores_labels", ["x", "labels"], {"y": Expect()}, lambda ctx, v: {"y": v["x"]})
    run = CaseRun(case, plan, build_model=lambda case: torch.nn.Identity())
    with pytest.raises(AssertionError, match="never read"):
        run.chained(plan.step("ignores_labels"))


# ---------------------------------------------------------------------------------------------- constructor mapping


SPEC = {
    "Encoder": {"img_size": Arg(field="image_size"), "act": Arg(text=r"^GELU$"), "init": Arg(ignore="init only")},
    "Decoder": {"dim": Arg(field="width"), "grid": Arg(check=lambda c: c.image_size // 16)},
    "Prompt": {"dim": Arg(field="width")},
}


def test_constructor_arguments_map_to_fields_and_checks():
    overrides, checks = map_constructor(
        {"Encoder": {"img_size": 64, "act": "GELU", "init": True}, "Decoder": {"dim": 8, "grid": 4}}, SPEC
    )
    assert overrides == {"image_size": 64, "width": 8}
    assert [(path, value) for path, value, _ in checks] == [("constructor.Decoder.grid", 4)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"Encoder": {"img_size": 64, "dropout": 0.1}}, r"does not know how to map: \['dropout'\]"),
        ({"Encoder": {"act": "ReLU"}}, "is not supported"),
        ({"Decoder": {"dim": 8}, "Prompt": {"dim": 16}}, "already 8"),
        ({"Mystery": {}}, r"\['Mystery'\]"),
    ],
)
def test_constructor_arguments_the_mapping_cannot_honour_fail(args, message):
    with pytest.raises(ValueError, match=message):
        map_constructor(args, SPEC)


# --------------------------------------------------------------------------------- mutations of a real fixture case


def real_case_copy(tmp_path: Path, family: str) -> Case:
    source = parity_root() / family
    if not (source / "case.json").is_file():
        pytest.skip(f"no {family} parity fixture at {source} (set ZOO_PARITY_DIR)")
    shutil.copytree(source, tmp_path / family)
    return Case(tmp_path, tmp_path / family)


@pytest.mark.parity
@pytest.mark.parametrize("family", ["sam_med3d", "sam_med2d"])
def test_an_extra_tensor_in_a_real_case_fails_coverage(tmp_path, family):
    case = real_case_copy(tmp_path, family)
    tensors = load_file(case.path / "io.safetensors")
    tensors["unexplained_extra"] = torch.zeros(1)
    save_file(tensors, case.path / "io.safetensors")
    assert coverage(case, load_runner(family).plan(case)).unaccounted == ["unexplained_extra"]


@pytest.mark.parity
def test_a_perturbed_weight_fails_the_decoder_steps(tmp_path):
    case = real_case_copy(tmp_path, "sam_med3d")
    weights = load_file(case.weights_path)
    name = next(key for key in weights if key.startswith("mask_decoder.iou_prediction_head") and key.endswith("bias"))
    weights[name] = weights[name] + 1e-2
    save_file(weights, case.weights_path)
    runner = load_runner("sam_med3d")
    plan = runner.plan(case)
    run = CaseRun(case, plan, runner.build_model)
    step = next(step for step in plan.steps if step.name.endswith("/decoder_single"))
    failed = [c for c in run.compare(step, run.isolated(step)) if not c.passed]
    assert [c.name for c in failed] == [name for name in step.outputs if name.endswith("iou_predictions")]


@pytest.mark.parity
def test_an_unknown_constructor_argument_fails_the_build(tmp_path):
    case = real_case_copy(tmp_path, "sam_med3d")
    spec = json.loads((case.path / "case.json").read_text())
    spec["constructors"]["image_encoder"]["drop_path_rate"] = 0.1
    (case.path / "case.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="drop_path_rate"):
        load_runner("sam_med3d").build_model(case)


@pytest.mark.parity
def test_renamed_prompt_cases_need_no_code_change(tmp_path):
    case = real_case_copy(tmp_path, "sam_med3d")
    spec = json.loads((case.path / "case.json").read_text())
    renames = {old: f"renamed_{i}" for i, old in enumerate(spec["cases"])}

    def rename(text: str) -> str:
        head, _, tail = text.partition(".")
        return f"{renames[head]}.{tail}" if head in renames and tail else text

    def rename_source(source: str | None) -> str | None:
        if source is None:
            return None
        how, _, name = source.rpartition(" ")
        return f"{how} {rename(name)}"

    spec["cases"] = {
        renames[old]: {**entry, "mask": rename_source(entry["mask"])} for old, entry in spec["cases"].items()
    }
    spec["not_stored_empty_tensors"] = {rename(k): v for k, v in spec.get("not_stored_empty_tensors", {}).items()}
    (case.path / "case.json").write_text(json.dumps(spec))
    save_file({rename(k): v for k, v in load_file(case.path / "io.safetensors").items()}, case.path / "io.safetensors")

    runner = load_runner("sam_med3d")
    plan = runner.plan(case)
    assert not coverage(case, plan).problems()
    run = CaseRun(case, plan, runner.build_model)
    for step in plan.steps:
        if step.name.startswith("renamed_") and "image_encoder" not in step.name:
            assert all(c.passed for c in run.compare(step, run.isolated(step))), step.name


# ------------------------------------------------------------------------------------------------------- summary


def test_summary_lists_every_tensor_and_the_largest_error_per_case(tmp_path):
    report = ParityReport()
    float_result = (Comparison("a", True, 2e-6, ""), Comparison("a", True, 1e-6, ""))
    mask_result = (Comparison("m", True, 1.0, "", 3), Comparison("m", True, 0.0, "", 0))
    report.record("fam", "fam/big", "decoder", "float", *float_result)
    report.record("fam", "fam/big", "post", "binary", *mask_result)
    report.write(tmp_path / "summary.json")
    rows = json.loads((tmp_path / "summary.json").read_text())
    summary = [(row["tensor"], row["chained_max_abs_err"], row["differ"]) for row in rows]
    assert summary == [("a", 2e-6, None), ("m", 1.0, 3)]
    assert report.table()[-1] == (
        "fam/big: 2 tensors, 0 failing; largest abs error 2.000e-06 (a); mask pixels differing: 3 over 1 masks"
    )
