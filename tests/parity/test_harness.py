"""The parity harness itself: it must fail on what it is meant to catch.

Most tests use small synthetic fixtures. The last ones copy a real case (skipped without fixtures) and show that
an unknown tensor, a perturbed weight and an unknown constructor argument each make the parity tests fail,
and that renaming prompt cases needs no code change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from .harness import (
    REPO_ROOT,
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
    window_padded_tokens,
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


# ------------------------------------------------------------------------------------ tolerance blocks of the cases

LITEMEDSAM_TOLERANCE = {
    "tolerance": {
        "float_atol": 0.0001,
        "float_rtol": 0.0001,
        "binary_masks": "<=0.1% pixels may differ",
        "infer3d_segs": "<=0.5% of foreground voxels may differ (box propagation can amplify a boundary pixel)",
    }
}
PIPELINE_TOLERANCE = {
    "tolerance": {
        "final_mask": "Dice >= 0.999 and <= 0.1% of foreground voxels differ",
        "final_mask_min_dice": 0.999,
        "final_mask_max_differing_fraction_of_foreground": 0.001,
        "intermediate_tensors": "model_input, low_res_logits: atol 1e-4 + rtol 1e-4; roi_mask: <= 0.1% of its "
        "foreground; geometry tensors: affines allclose 1e-4 mm, shapes/params exact",
        "recommended": {
            "float_atol": 0.0001,
            "float_rtol": 0.0001,
            "binary_masks": "final mask: Dice >= 0.999 and <= 0.1% of foreground differ",
        },
    }
}


def test_a_tolerance_block_without_recommended_entry_is_read_directly():
    tol = Tolerance.from_spec(LITEMEDSAM_TOLERANCE)
    assert (tol.atol, tol.rtol) == (1e-4, 1e-4)
    assert tol.binary.max_fraction == pytest.approx(0.001) and tol.binary.max_foreground_fraction is None
    segs = tol.rule("infer3d_segs")
    assert segs.max_foreground_fraction == pytest.approx(0.005) and segs.max_fraction is None
    assert tol.rule("pred_box_binary") is tol.binary


def test_pipeline_tolerance_gives_the_final_mask_rule_and_clause_rules():
    tol = Tolerance.from_spec(PIPELINE_TOLERANCE)
    assert (tol.atol, tol.rtol) == (1e-4, 1e-4)
    final = tol.rule("final_mask")
    assert final.min_dice == 0.999 and final.max_foreground_fraction == pytest.approx(0.001)
    assert tol.binary.criteria() == final.criteria()
    assert tol.rule("roi_mask").criteria() == {"max_foreground_fraction": pytest.approx(0.001)}


def test_numbers_that_contradict_a_stated_mask_rule_are_errors():
    spec = json.loads(json.dumps(PIPELINE_TOLERANCE))
    spec["tolerance"]["final_mask_min_dice"] = 0.99
    with pytest.raises(ValueError, match="disagree"):
        Tolerance.from_spec(spec)


def test_numbers_alone_make_a_rule():
    tol = Tolerance.from_spec({"tolerance": {"atol": 1e-4, "rtol": 0.0, "final_mask_min_dice": 0.999}})
    assert tol.rule("final_mask").criteria() == {"min_dice": 0.999}


def test_foreground_rule_counts_against_upstreams_foreground():
    expected = torch.zeros(10_000, dtype=torch.uint8)
    expected[:1000] = 1  # 1000 foreground pixels: 0.5% of them is 5
    rule = BinaryMaskRule.parse("<=0.5% of foreground voxels may differ")
    five, six = expected.clone(), expected.clone()
    five[1000:1005] = 1
    six[1000:1006] = 1
    assert compare_binary("m", five, expected, rule, None).passed
    assert not compare_binary("m", six, expected, rule, None).passed  # 6 <= 0.5% of all 10000 pixels, still fails


def test_an_empty_upstream_mask_allows_no_foreground_difference():
    rule = BinaryMaskRule.parse("<=0.5% of foreground voxels may differ")
    expected = torch.zeros(100, dtype=torch.uint8)
    assert compare_binary("m", expected.clone(), expected, rule, None).passed
    one = expected.clone()
    one[0] = 1
    assert not compare_binary("m", one, expected, rule, None).passed


def test_dice_and_foreground_rules_must_both_hold():
    rule = BinaryMaskRule.parse("Dice >= 0.999 and <= 0.1% of foreground voxels differ")
    expected = torch.zeros(100_000, dtype=torch.uint8)
    expected[:10_000] = 1
    ten_extra = expected.clone()
    ten_extra[10_000:10_010] = 1  # 10 = 0.1% of the foreground; Dice 0.9995
    eleven_missing = expected.clone()
    eleven_missing[:11] = 0  # 11 > 0.1%; Dice 0.99945 still >= 0.999
    assert compare_binary("m", ten_extra, expected, rule, None).passed
    assert not compare_binary("m", eleven_missing, expected, rule, None).passed
    assert BinaryMaskRule.parse("Dice >= 0.9999").min_dice == 0.9999
    dice_only = BinaryMaskRule.parse("Dice >= 0.9999")
    assert not compare_binary("m", ten_extra, expected, dice_only, None).passed


def test_a_stricter_float_tolerance_for_one_output_is_used(tmp_path):
    case = make_case(tmp_path, "fam", {"x": torch.ones(2), "affine": torch.full((2,), 150.0)})
    plan = Plan()
    off = 150.0 + 5e-3  # inside 1e-4 + 1e-4 * 150 = 0.0151, outside an absolute 1e-4
    plan.add("loose", ["x"], {"affine": Expect()}, lambda ctx, v: {"affine": v["x"] * off})
    run = CaseRun(case, plan, build_model=lambda case: torch.nn.Identity())
    assert run.compare(plan.step("loose"), run.chained(plan.step("loose")))[0].passed
    strict = Plan()
    exact_mm = Expect("float", tolerance=Tolerance(atol=1e-4, rtol=0.0))
    strict.add("strict", ["x"], {"affine": exact_mm}, lambda ctx, v: {"affine": v["x"] * off})
    run = CaseRun(case, strict, build_model=lambda case: torch.nn.Identity())
    assert not run.compare(strict.step("strict"), run.chained(strict.step("strict")))[0].passed


# ------------------------------------------------------------------------------------------- derived constructor


def test_window_padded_tokens_count_the_whole_padded_grid():
    # An 8-token grid with 6-token windows pads to 12 per axis: 12^3 tokens, not the 6^3 of one window.
    assert window_padded_tokens(8, 6, 3) == 1728
    assert window_padded_tokens(4, 6, 3) == 216  # grid <= window: the two readings agree
    assert window_padded_tokens(14, 14, 2) == 196


def test_sam_med3d_derived_token_check_reads_the_padded_grid():
    derived = load_runner("sam_med3d").CONSTRUCTOR["derived"]
    config = SimpleNamespace(image_size=128, patch_size=16, window_size=6)  # grid 8 > window 6
    _, checks = map_constructor({"num_tokens_window_padded": 1728}, derived, "derived")
    assert [(path, value, derive(config)) for path, value, derive in checks] == [
        ("derived.num_tokens_window_padded", 1728, 1728)
    ]
    assert checks[0][2](config) != 6**3


# ------------------------------------------------------------------------------------------ roots and CI behaviour


def _run_pytest(args: list[str], env_updates: dict[str, str], ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(env_updates)
    if ci:
        env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-q", "-rfExXs", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_missing_fixture_roots_fail_under_ci_and_skip_elsewhere(tmp_path):
    env = {"ZOO_PARITY_DIR": str(tmp_path / "no_parity"), "ZOO_PARITY_PENDING_DIR": str(tmp_path / "no_pending")}
    targets = [
        "tests/parity/test_parity.py",
        "tests/parity/test_full_keys.py",
        "tests/models/test_sam_unet.py::test_authors_checkpoint_with_a_pickled_optimizer_loads",
    ]
    in_ci_run = _run_pytest(targets, env, ci=True)
    assert in_ci_run.returncode == 1, in_ci_run.stdout[-3000:]
    assert "4 failed" in in_ci_run.stdout, in_ci_run.stdout[-3000:]
    assert "no parity fixtures at" in in_ci_run.stdout
    local_run = _run_pytest(targets, env, ci=False)
    assert local_run.returncode == 0, local_run.stdout[-3000:]
    summary = local_run.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    assert "no parity fixtures at" in local_run.stdout


@pytest.mark.slow
def test_a_pending_case_without_a_runner_is_reported_and_one_with_a_runner_runs(tmp_path):
    parity, pending = tmp_path / "parity", tmp_path / "pending"
    make_case(parity, "sam_med3d_fake_family_without_runner", {"x": torch.ones(1)})
    make_case(pending, "pending_family_without_runner", {"x": torch.ones(1)})
    # A pending case of a family whose runner exists runs, and fails like any other (here: it cannot be planned).
    make_case(pending, "sam_med3d", {"x": torch.ones(1)})
    env = {"ZOO_PARITY_DIR": str(parity), "ZOO_PARITY_PENDING_DIR": str(pending)}
    result = _run_pytest(["tests/parity/test_parity.py"], env, ci=False)
    out = result.stdout
    assert "XFAIL" in out and "no runner yet" in out and "pending_family_without_runner" in out, out[-3000:]
    assert "FAILED tests/parity/test_parity.py::test_case_is_understood[pending/sam_med3d]" in out, out[-3000:]
    # A case without a runner in the parity root itself is a failure, not an expected one.
    assert "FAILED tests/parity/test_parity.py::test_case_is_understood[sam_med3d_fake_family_without_runner]" in out
