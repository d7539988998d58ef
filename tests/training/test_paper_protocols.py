"""The authors' training and evaluation protocols, each checked against an independent computation of what the
authors' code does: per-pass optimiser steps (SAM-Med2D ``train.py``), un-detached mask feedback (SAM-Med3D
``train.py``), scores on the original grid, the mask-only pass index, SAM-UNet's boxes and the aggregations."""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from run_helpers import TINY_3D

import zoo.training.module as module_file
from zoo.data.sa_med2d import collate_2d, sample_dict_2d
from zoo.processors import (
    SamUNetProcessor,
    SamUNetProcessorConfig,
    processor_for,
    select_best_mask,
)
from zoo.prompts.simulate import boxes_from_masks, next_click_error_interior
from zoo.prompts.types import MaskPrompts, Prompts
from zoo.training.losses import SegmentationLoss
from zoo.training.metrics import PerClassMean
from zoo.training.module import PromptableSegmentationModule
from zoo.training.schedules import (
    CyclicMultiStepLR,
    EvaluationProtocol,
    TrainingPromptSchedule,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import mark_whole_input, write_volume

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY_2D = dict(
    image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=[1],
    prompt_embed_dim=32, decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16,
)


def batch_2d(images: int = 2, per_image: int = 2) -> dict:
    masks = torch.zeros(images, per_image, 1, 64, 64, dtype=torch.bool)
    masks[:, 0, :, 10:40, 12:30] = True
    masks[:, 1, :, 20:50, 30:60] = True
    return {"image": torch.randn(images, 3, 64, 64, generator=torch.Generator().manual_seed(1)), "masks": masks,
            "class_name": [["liver", "spleen"][:per_image] for _ in range(images)]}


def deterministic_clicks(monkeypatch) -> None:
    """Error clicks without randomness (the deepest error voxel), so a hand-written loop can replay them."""
    def click(prediction, target, num_points, generator=None):
        return next_click_error_interior(prediction, target)

    monkeypatch.setattr(module_file, "next_click_random_error", click)


def fit_one_batch(lit: PromptableSegmentationModule, batches: list[dict]) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(lit, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


# ---------------------------------------------------------------------------------------- 1. per-pass steps
PER_PASS = dict(
    iterations=4, first_prompt="box", box_jitter="none", clicks_per_iteration=[1], mask_prompt="sigmoid",
    mask_only_iteration_range=[2, 2], mask_only_last=True, decoder_only_after_first=True, multimask_output=True,
    zero_grad="zeros",
)


def per_pass_module(step: str) -> PromptableSegmentationModule:
    torch.manual_seed(0)
    return PromptableSegmentationModule(
        model="sam_med2d_b", model_overrides=TINY_2D,
        train_prompts=TrainingPromptSchedule(**PER_PASS, optimizer_step=step),
        loss=SegmentationLoss(focal=20.0, dice=1.0, iou_mse=1.0), freeze=["image_encoder.*"],
        unfreeze=["image_encoder.blocks.*.Adapter.*"], optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
    )


def authors_loop(net: torch.nn.Module, batch: dict) -> None:
    """SAM-Med2D's train.py for one batch, written out: a step after the first pass, then decoder-only passes on
    the detached embeddings with the prompt encoder under no_grad, a step after each; torch 1.13's zero_grad."""
    processor = processor_for(net)
    loss_fn = SegmentationLoss(focal=20.0, dice=1.0, iou_mse=1.0)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    targets = batch["masks"].reshape(-1, 1, 64, 64)
    rows = torch.arange(batch["image"].shape[0]).repeat_interleave(batch["masks"].shape[1])
    net.train()
    embeddings = net.encode_image(batch["image"])[rows]
    boxes = boxes_from_masks(targets[:, 0])
    out = net.decode(embeddings, **processor.model_kwargs(Prompts(boxes=boxes)), multimask_output=True)
    low_res, iou = select_best_mask(out.low_res_logits, out.iou_predictions)
    logits = processor.upsample(low_res)
    loss_fn(logits, targets.float(), iou).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    embeddings = embeddings.detach()
    for it in range(1, PER_PASS["iterations"]):
        points = next_click_error_interior((logits.detach() > 0)[:, 0], targets[:, 0])
        fed = None if it in (2, PER_PASS["iterations"] - 1) else points
        prompts = Prompts(points=fed, masks=MaskPrompts(torch.sigmoid(low_res.detach())))
        with torch.no_grad():
            sparse, dense = net.embed_prompts(**processor.model_kwargs(prompts))
        out = net.decode_embeddings(embeddings, sparse, dense, True)
        low_res, iou = select_best_mask(out.low_res_logits, out.iou_predictions)
        logits = processor.upsample(low_res)
        loss_fn(logits, targets.float(), iou).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)


def test_per_pass_steps_give_the_parameters_of_the_authors_loop(monkeypatch):
    deterministic_clicks(monkeypatch)
    lit = per_pass_module("per_pass")
    reference = copy.deepcopy(lit.net)
    batch = batch_2d()
    trainer = fit_one_batch(lit, [batch])
    authors_loop(reference, batch)
    assert trainer.global_step == PER_PASS["iterations"]  # one optimiser step per pass
    for (name, trained), expected in zip(lit.net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, rtol=0, atol=1e-6, msg=name)


def test_the_summed_variant_is_not_the_authors_loop(monkeypatch):
    deterministic_clicks(monkeypatch)
    lit = per_pass_module("summed")
    reference = copy.deepcopy(lit.net)
    batch = batch_2d()
    trainer = fit_one_batch(lit, [batch])
    authors_loop(reference, batch)
    assert trainer.global_step == 1
    decoder = "mask_decoder.output_upscaling.0.weight"
    assert not torch.allclose(dict(lit.net.named_parameters())[decoder], dict(reference.named_parameters())[decoder])


def test_per_pass_accumulation_steps_once_per_pass_for_the_window(monkeypatch):
    deterministic_clicks(monkeypatch)
    torch.manual_seed(0)
    lit = PromptableSegmentationModule(
        model="sam_med2d_b", model_overrides=TINY_2D,
        train_prompts=TrainingPromptSchedule(**PER_PASS, optimizer_step="per_pass", accumulate_batches=2),
        loss=SegmentationLoss(focal=20.0, dice=1.0, iou_mse=1.0),
    )
    trainer = fit_one_batch(lit, [batch_2d(), batch_2d(), batch_2d()])
    # Batches 1-2 form one window (4 steps), batch 3 closes the epoch alone (4 more).
    assert trainer.global_step == 2 * PER_PASS["iterations"]


def test_per_pass_needs_decoder_only_later_passes():
    with pytest.raises(ValueError, match="decoder_only_after_first"):
        TrainingPromptSchedule(iterations=3, optimizer_step="per_pass")


# ------------------------------------------------------------------------------- 4. un-detached feedback
def record_decodes(net: torch.nn.Module) -> list:
    calls = []
    original = net.decode

    def decode(encoding, points=None, boxes=None, masks=None, multimask_output=False):
        out = original(encoding, points=points, boxes=boxes, masks=masks, multimask_output=multimask_output)
        calls.append(dict(masks=masks, out=out))
        return out

    net.decode = decode
    return calls


def batch_3d() -> dict:
    target = torch.zeros(2, 1, 32, 32, 32, dtype=torch.bool)
    target[:, :, 8:20, 10:22, 6:18] = True
    return {"image": torch.randn(2, 1, 32, 32, 32), "target": target, "class_name": ["liver"] * 2}


@pytest.mark.parametrize("detach", [False, True])
def test_undetached_feedback_carries_the_last_pass_gradient_to_the_first_pass(detach):
    torch.manual_seed(0)
    schedule = TrainingPromptSchedule(
        iterations=3, zero_mask_first=True, click_threshold=0.5, detach_mask_feedback=detach
    )
    lit = PromptableSegmentationModule(model="sam_med3d_turbo", model_overrides=TINY_3D, train_prompts=schedule)
    calls = record_decodes(lit.net)
    lit.training_step(batch_3d(), 0)
    first, last = calls[0]["out"].low_res_logits, calls[-1]["out"].low_res_logits
    (gradient,) = torch.autograd.grad(last.sum(), first, allow_unused=True)
    if detach:
        assert gradient is None
    else:
        assert gradient is not None and gradient.abs().sum() > 0


# ------------------------------------------------------------------------------ 2. the original grid
def evaluate(lit: PromptableSegmentationModule, batch: dict) -> dict:
    lit.setup("validate")
    logged = {}
    lit.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    lit.validation_step(batch, 0)
    lit.on_validation_epoch_end()
    return logged


def test_2d_scores_are_computed_on_the_original_image():
    torch.manual_seed(0)
    lit = PromptableSegmentationModule(
        model="sam_med2d_b", model_overrides=TINY_2D, class_names=["liver"],
        eval_prompts=EvaluationProtocol(clicks=[1], box=True, grid="original", headline="mask_mean"),
    )
    mark_whole_input(lit.net)  # every decoded logit positive: the mask is the whole model input
    processor = lit.processor
    height, width = 40, 50  # both below 64: test.py's centred padding
    mask = np.zeros((height, width), dtype=bool)
    mask[10:30, 12:40] = True
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame, masks = processor.prepare_with_masks(image, [mask])
    sample = sample_dict_2d(frame, masks, "image.png", ["mask.png"])
    sample.update(original_masks=torch.from_numpy(mask[None]), class_name="liver")
    logged = evaluate(lit, collate_2d([sample]))
    expected = 2 * mask.sum() / (height * width + mask.sum())  # the whole original image against the mask
    on_model_grid = 2 * mask.sum() / (64 * 64 + mask.sum())
    assert logged["val/dice/box"] == pytest.approx(expected, abs=1e-6)
    assert logged["val/dice/1pt"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected - on_model_grid) > 0.1


def nnunet_case(root: Path, label: np.ndarray, spacing: float = 1.5) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = write_volume(root / "imagesTr" / "case_0000.nii.gz", shape=label.shape, spacing=spacing)
    affine = nib.load(str(image)).affine
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / "labelsTr" / "case.nii.gz"))
    meta = {"labels": {"background": 0, "liver": 1, "cyst": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_3d_scores_count_target_voxels_outside_the_crop_as_misses(tmp_path):
    label = np.zeros((48, 40, 36), dtype=np.uint8)
    label[4:44, 3:38, 6:30] = 1  # 40 x 35 x 24 voxels: larger than the 32^3 crop along two axes
    root = nnunet_case(tmp_path / "data", label)
    from zoo.data import NiftiDataModule3D

    torch.manual_seed(0)
    lit = PromptableSegmentationModule(
        model="sam_med3d_turbo", model_overrides=TINY_3D, class_names=["liver"],
        eval_prompts=EvaluationProtocol(clicks=[1], grid="original"),
    )
    mark_whole_input(lit.net)
    data = NiftiDataModule3D(root, processor=lit.processor, val_fraction=0.0, val_root=root)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    logged = evaluate(lit, batch)
    # Independently: torchio centres the 32^3 window on the label box ((lo + hi) / 2 - 16, floored); the whole
    # window is predicted; it is the original grid too (1.5 mm RAS file, no resampling).
    window = np.zeros_like(label, dtype=bool)
    starts = [int(np.floor((lo + hi) / 2 - 16)) for lo, hi in ((4, 44), (3, 38), (6, 30))]
    window[tuple(slice(max(s, 0), s + 32) for s in starts)] = True
    target = label.astype(bool)
    expected = 2 * (window & target).sum() / (window.sum() + target.sum())
    assert logged["val/dice/1pt"] == pytest.approx(expected, abs=1e-6)
    assert expected < 0.9  # voxels outside the crop are misses (on the crop it would be close to 1)


# ------------------------------------------------------------------------------ 13. the mask-only pass
def recipe_schedule(family: str) -> TrainingPromptSchedule:
    prompts = yaml.safe_load((RECIPES / family / "paper.yaml").read_text())["model"]["train_prompts"]
    return TrainingPromptSchedule(**prompts)


def test_sam_med2d_mask_only_pass_falls_where_the_authors_indexing_puts_it():
    schedule = recipe_schedule("sam_med2d")
    iter_point = 8  # train.py:35
    rng = np.random.default_rng(0)
    # train.py:175-178: inner pass i (0-based, after the first prompt) is overall pass i + 1.
    authors = {int(rng.integers(1, iter_point - 1)) + 1 for _ in range(2000)}
    ours = [schedule.mask_only_passes(random.Random(seed)) for seed in range(2000)]
    assert all(iter_point in passes for passes in ours)  # the last inner pass, overall pass 8
    assert {min(passes) for passes in ours} == authors == set(range(2, 8))


def test_sam_med3d_mask_only_pass_falls_where_the_authors_indexing_puts_it():
    schedule = recipe_schedule("sam_med3d")
    rng = np.random.default_rng(0)
    authors = {int(rng.integers(2, 9)) for _ in range(2000)}  # train.py:273 randint(2, 9), num_click from 0
    ours = [schedule.mask_only_passes(random.Random(seed)) for seed in range(2000)]
    assert all(10 in passes for passes in ours)
    assert {min(passes) for passes in ours} == authors == set(range(2, 9))


# ---------------------------------------------------------------------------------- 5. SAM-UNet boxes
def test_sam_unet_boxes_are_jittered_on_the_original_mask_then_scaled():
    processor = SamUNetProcessor(SamUNetProcessorConfig(image_size=64))
    mask = np.zeros((120, 160), dtype=bool)
    mask[30:90, 40:100] = True
    frame, masks = processor.prepare_with_masks(np.zeros((120, 160, 3), dtype=np.uint8), [mask])
    original = torch.from_numpy(mask)
    boxes = processor.target_boxes(masks[:, 0], "sam_med2d", torch.Generator().manual_seed(3), [frame], [original])
    jittered = boxes_from_masks(original[None], "sam_med2d", torch.Generator().manual_seed(3))
    scale = 64 / 160  # the resize of the longer side; upstream dataset.py:164 apply_boxes_torch
    torch.testing.assert_close(boxes.lo, jittered.lo * scale)
    torch.testing.assert_close(boxes.hi, jittered.hi * scale)
    assert boxes.spatial_shape == (64, 64)


# ---------------------------------------------------------------------- 6 and 11. aggregation, points
def test_the_mask_mean_and_the_class_mean_are_both_reported():
    metric = PerClassMean(2)
    metric.update(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0, 0, 0, 1]))
    assert metric.mask_mean().item() == pytest.approx(0.75)
    assert torch.nanmean(metric.compute()).item() == pytest.approx(0.5)


@pytest.mark.parametrize("headline", ["mask_mean", "class_mean"])
def test_the_headline_is_the_protocols_choice(headline):
    torch.manual_seed(0)
    lit = PromptableSegmentationModule(
        model="sam_med2d_b", model_overrides=TINY_2D, class_names=["liver", "spleen"],
        eval_prompts=EvaluationProtocol(clicks=[], box=True, grid="model", headline=headline),
    )
    logged = evaluate(lit, batch_2d(images=1, per_image=2))
    assert logged["val/dice/box"] == logged[f"val/dice_{headline}/box"]
    assert {"val/dice_mask_mean/box", "val/dice_class_mean/box"} <= set(logged)


def test_simultaneous_points_are_half_foreground_given_at_once():
    torch.manual_seed(0)
    lit = PromptableSegmentationModule(
        model="sam_med2d_b", model_overrides=TINY_2D, class_names=["liver", "spleen"],
        eval_prompts=EvaluationProtocol(clicks=[], simultaneous_points=[5], grid="model"),
    )
    calls = []
    original = lit.net.decode
    lit.net.decode = lambda encoding, **kw: calls.append(kw) or original(encoding, **kw)
    logged = evaluate(lit, batch_2d(images=1, per_image=2))
    assert len(calls) == 1 and calls[0]["masks"] is None
    coords, labels = calls[0]["points"]
    assert coords.shape == (2, 5, 2) and (labels == 1).sum(dim=1).tolist() == [2, 2]
    assert "val/dice/5pt_simultaneous" in logged


# --------------------------------------------------------------------------- the paper's LR schedule
def test_the_paper_schedule_divides_by_ten_at_120_160_190_and_restarts_each_cycle():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=8e-4)
    scheduler = CyclicMultiStepLR(optimizer, cycle_length=200, milestones=[120, 160, 190], gamma=0.1)
    lrs = []
    for _ in range(1000):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for cycle in range(5):
        start = 200 * cycle
        assert lrs[start] == pytest.approx(8e-4) and lrs[start + 119] == pytest.approx(8e-4)
        assert lrs[start + 120] == pytest.approx(8e-5) and lrs[start + 160] == pytest.approx(8e-6)
        assert lrs[start + 190] == pytest.approx(8e-7) and lrs[start + 199] == pytest.approx(8e-7)
