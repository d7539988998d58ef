"""The one training module: every family's step runs, the schedule options do what they say, metrics and
optimiser groups are right."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.training.losses import SegmentationLoss, soft_iou
from zoo.training.metrics import PerClassMean, dice_per_sample
from zoo.training.module import PromptableSegmentationModule
from zoo.training.optim import ParamGroup, apply_lr_scales, param_groups, set_trainable
from zoo.training.schedules import EvaluationProtocol, TrainingPromptSchedule
from run_helpers import TINY_3D
from tiny_models import TINY_LITEMEDSAM

TINY_2D = dict(
    image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=[1],
    prompt_embed_dim=32, decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16,
)
TINY_UNET = dict(
    image_size=64, embed_dim=32, depth=4, num_heads=2, window_size=2, global_attn_indexes=[1, 3],
    conv_injection_blocks=[0, 1, 2, 3], resnet_layers=[1, 1, 1, 1], prompt_embed_dim=32, decoder_mlp_dim=32,
    decoder_num_heads=2,
)


def batch_3d(size: int = 32, batch: int = 2) -> dict:
    target = torch.zeros(batch, 1, size, size, size, dtype=torch.bool)
    target[:, :, 8:20, 10:22, 6:18] = True
    return {"image": torch.randn(batch, 1, size, size, size), "target": target, "class_name": ["liver"] * batch}


def batch_2d(size: int = 64, images: int = 2, per_image: int = 3) -> dict:
    masks = torch.zeros(images, per_image, 1, size, size, dtype=torch.bool)
    masks[:, :, :, 10:40, 12:30] = True
    names = [["liver", "spleen", "liver"][:per_image] for _ in range(images)]
    return {"image": torch.randn(images, 3, size, size), "masks": masks, "class_name": names}


def module(model: str, overrides: dict, **kwargs) -> PromptableSegmentationModule:
    torch.manual_seed(0)
    return PromptableSegmentationModule(model=model, model_overrides=overrides, **kwargs)


@pytest.mark.parametrize(
    ("model", "overrides", "batch", "schedule", "loss"),
    [
        (
            "sam_med3d_turbo", TINY_3D, batch_3d,
            TrainingPromptSchedule(
                iterations=4, zero_mask_first=True, mask_only_iteration_range=[1, 2], mask_only_last=True,
                click_threshold=0.5,
            ),
            SegmentationLoss(dice_ce=1.0),
        ),
        (
            "sam_med2d_b", TINY_2D, batch_2d,
            TrainingPromptSchedule(
                iterations=3, first_prompt="box_or_point", clicks_per_iteration=[1, 3], mask_prompt="sigmoid",
                mask_only_iteration_range=[1, 1], mask_only_last=True, decoder_only_after_first=True,
                multimask_output=True,
            ),
            SegmentationLoss(focal=20.0, dice=1.0, iou_mse=1.0),
        ),
        (
            "sam_unet_r34", TINY_UNET, batch_2d,
            TrainingPromptSchedule(iterations=1, first_prompt="box", mask_prompt="none"),
            SegmentationLoss(focal=1.0, dice=20.0),
        ),
    ],
    ids=["sam_med3d", "sam_med2d", "sam_unet"],
)
def test_every_family_trains_through_the_same_step(model, overrides, batch, schedule, loss):
    lit = module(model, overrides, train_prompts=schedule, loss=loss)
    before = {n: p.detach().clone() for n, p in lit.net.named_parameters()}
    optimizer = torch.optim.Adam(lit.net.parameters(), lr=1e-3)
    value = lit.training_step(batch(), 0)
    assert value.ndim == 0 and math.isfinite(value.item())
    value.backward()
    optimizer.step()
    changed = [n for n, p in lit.net.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("mask_decoder.") for n in changed)
    assert any(n.startswith("image_encoder.") for n in changed)


def test_decoder_only_iterations_give_the_prompt_encoder_no_gradient_from_later_iterations():
    schedule = TrainingPromptSchedule(iterations=2, first_prompt="box", mask_prompt="sigmoid",
                                      mask_only_last=True, decoder_only_after_first=True)
    lit = module("sam_med2d_b", TINY_2D, train_prompts=schedule)
    lit.training_step(batch_2d(), 0).backward()
    # Mask prompts only appear in the decoder-only iteration, so the mask branch never gets a gradient.
    assert all(p.grad is None for p in lit.net.prompt_encoder.mask_downscaling.parameters())
    assert lit.net.prompt_encoder.point_embeddings[2].weight.grad is not None  # box corner, first iteration


def test_training_clicks_replay_for_the_same_step():
    lit = module("sam_med3d_turbo", TINY_3D, train_prompts=TrainingPromptSchedule(iterations=3, zero_mask_first=True))
    batch = batch_3d()
    first = lit.training_step(batch, 0)
    again = lit.training_step(batch, 0)
    assert torch.equal(first, again)


def test_evaluation_reports_dice_per_click_count_and_class():
    lit = module(
        "sam_med2d_b", TINY_2D, eval_prompts=EvaluationProtocol(grid="model", clicks=[1, 3], box=True),
        class_names=["liver", "spleen"],
    )
    lit.setup("validate")
    logged = {}
    lit.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    lit.validation_step(batch_2d(), 0)
    lit.on_validation_epoch_end()
    for key in ("val/dice/1pt", "val/dice/3pt", "val/dice/box", "val/dice/box/liver", "val/dice/box/spleen"):
        assert key in logged and 0.0 <= logged[key] <= 1.0


def record_decodes(net: torch.nn.Module) -> list[dict]:
    """Wrap ``net.decode`` so every call's prompts, mask prompt, multimask flag and output are kept."""
    calls: list[dict] = []
    original = net.decode

    def decode(encoding, points=None, boxes=None, masks=None, multimask_output=False):
        out = original(encoding, points=points, boxes=boxes, masks=masks, multimask_output=multimask_output)
        calls.append(dict(points=points, boxes=boxes, masks=masks, multimask_output=multimask_output, out=out))
        return out

    net.decode = decode
    return calls


def evaluate(lit: PromptableSegmentationModule, batch: dict) -> dict:
    lit.setup("validate")
    logged = {}
    lit.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    lit.validation_step(batch, 0)
    lit.on_validation_epoch_end()
    return logged


def test_sam_med2d_evaluation_feeds_the_best_candidate_back_as_probabilities():
    protocol = EvaluationProtocol(grid="model", clicks=[1, 3])
    lit = module("sam_med2d_b", TINY_2D, eval_prompts=protocol, class_names=["liver", "spleen"])
    calls = record_decodes(lit.net)
    evaluate(lit, batch_2d())
    assert [call["points"][0].shape[1] for call in calls] == [1, 2, 3]  # clicks accumulate
    assert all(call["multimask_output"] for call in calls) and calls[0]["masks"] is None
    for previous, call in zip(calls, calls[1:]):
        out = previous["out"]
        best = out.low_res_logits[torch.arange(out.low_res_logits.shape[0]), out.iou_predictions.argmax(dim=1)]
        torch.testing.assert_close(call["masks"], torch.sigmoid(best)[:, None], rtol=0, atol=0)


def test_sam_med3d_evaluation_starts_from_zero_logits_and_feeds_logits_back():
    protocol = EvaluationProtocol(grid="model", clicks=[2])
    lit = module("sam_med3d_turbo", TINY_3D, eval_prompts=protocol, class_names=["liver"])
    calls = record_decodes(lit.net)
    evaluate(lit, batch_3d())
    assert len(calls) == 2 and not any(call["multimask_output"] for call in calls)
    assert calls[0]["masks"].shape == (2, 1, 8, 8, 8) and not calls[0]["masks"].any()
    assert torch.equal(calls[1]["masks"], calls[0]["out"].low_res_logits[:, :1])


@pytest.mark.parametrize(
    ("model", "overrides", "batch"), [("sam_med2d_b", TINY_2D, batch_2d), ("sam_med3d_turbo", TINY_3D, batch_3d)]
)
def test_evaluation_without_mask_feedback_gives_no_click_a_mask_prompt(model, overrides, batch):
    protocol = EvaluationProtocol(grid="model", clicks=[3], mask_feedback=False)
    lit = module(model, overrides, eval_prompts=protocol, class_names=["liver", "spleen"])
    calls = record_decodes(lit.net)
    evaluate(lit, batch())
    assert len(calls) == 3 and all(call["masks"] is None for call in calls)


def test_the_protocol_can_override_the_processors_multimask_choice():
    protocol = EvaluationProtocol(grid="model", clicks=[1], multimask_output=False)
    lit = module("sam_med2d_b", TINY_2D, eval_prompts=protocol, class_names=["liver", "spleen"])
    calls = record_decodes(lit.net)
    evaluate(lit, batch_2d())
    assert [call["multimask_output"] for call in calls] == [False]
    assert lit.processor.policy.multimask_output  # the model's own processor is unchanged


def test_the_box_protocol_boxes_each_target_as_sam_med2d_does():
    protocol = EvaluationProtocol(grid="model", clicks=[], box=True)
    lit = module("sam_med2d_b", TINY_2D, eval_prompts=protocol, class_names=["liver", "spleen"])
    calls = record_decodes(lit.net)
    logged = evaluate(lit, batch_2d())
    # Targets cover rows 10..39 and columns 12..29: (x0, y0, x1, y1) = (12, 10, 30, 40), one past the last index.
    assert len(calls) == 1 and calls[0]["boxes"].tolist() == [[12.0, 10.0, 30.0, 40.0]] * 6
    assert 0.0 <= logged["val/dice/box"] <= 1.0


def test_nsd_needs_the_crop_spacing():
    lit = module(
        "sam_med3d_turbo", TINY_3D, eval_prompts=EvaluationProtocol(grid="model", clicks=[1], nsd_tolerance_mm=1.5),
        class_names=["liver"],
    )
    lit.setup("validate")
    with pytest.raises(ValueError, match="spacing"):
        lit.validation_step(batch_3d(), 0)


def test_unknown_class_in_a_batch_is_an_error_naming_it():
    protocol = EvaluationProtocol(grid="model", clicks=[1])
    lit = module("sam_med3d_turbo", TINY_3D, eval_prompts=protocol, class_names=["spleen"])
    lit.setup("validate")
    with pytest.raises(KeyError, match="liver"):
        lit.validation_step(batch_3d(), 0)


def test_per_class_mean_averages_within_each_class_and_skips_nan():
    metric = PerClassMean(3)
    metric.update(torch.tensor([1.0, 0.0, 0.5, float("nan")]), torch.tensor([0, 0, 2, 1]))
    result = metric.compute()
    assert result[0] == 0.5 and result[2] == 0.5 and torch.isnan(result[1])


def test_dice_of_identical_masks_is_one_and_of_disjoint_masks_zero():
    a = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    a[0, 0, :4] = True
    a[1, 0, 4:] = True
    b = a.clone()
    b[1] = ~a[1]
    assert dice_per_sample(a, b).tolist() == [1.0, 0.0]


def test_soft_iou_loss_term_matches_a_hand_computed_value():
    logits = torch.tensor([[[[0.0, 100.0], [-100.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # probabilities 0.5, 1, 0, 0.5: intersection 1.5, union 2 + 2 - 1.5 = 2.5
    assert soft_iou(logits, target).item() == pytest.approx(0.6)
    loss = SegmentationLoss(iou_mse=1.0)
    assert loss(logits, target, torch.tensor([[0.6]])).item() == pytest.approx(0.0, abs=1e-6)


def test_iou_term_refuses_a_model_without_iou_head():
    with pytest.raises(ValueError, match="IoU head"):
        SegmentationLoss(iou_mse=1.0)(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), None)


def test_lr_groups_scale_the_base_learning_rate_per_pattern():
    lit = module("sam_med3d_turbo", TINY_3D)
    groups = param_groups(lit.net, [ParamGroup("prompt_encoder.*", 0.1), ParamGroup("mask_decoder.*", 0.1)])
    optimizer = torch.optim.AdamW(groups, lr=8e-4)
    apply_lr_scales(optimizer)
    by_lr = {round(g["lr"], 12): sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    encoder = sum(p.numel() for p in lit.net.image_encoder.parameters())
    prompt_and_decoder = sum(p.numel() for p in lit.net.parameters()) - encoder
    assert by_lr == {8e-4: encoder, 8e-5: prompt_and_decoder}


def test_freeze_patterns_leave_only_adapters_trainable_in_the_encoder():
    lit = module("sam_med2d_b", TINY_2D, freeze=["image_encoder.*"], unfreeze=["image_encoder.blocks.*.Adapter.*"])
    trainable = [n for n, p in lit.net.named_parameters() if p.requires_grad and n.startswith("image_encoder.")]
    assert trainable and all(".Adapter." in n for n in trainable)


def test_a_pattern_that_matches_nothing_is_an_error():
    lit = module("sam_med3d_turbo", TINY_3D)
    with pytest.raises(ValueError, match="matches no parameter"):
        set_trainable(lit.net, ["image_encoder.blocks.*.Adapter.*"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(iterations=0), dict(iterations=3, mask_only_iteration_range=[0, 1]),
     dict(iterations=3, mask_only_iteration_range=[1, 2], mask_prompt="none"), dict(clicks_per_iteration=[0])],
)
def test_impossible_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TrainingPromptSchedule(**kwargs)


@pytest.mark.parametrize(
    ("model", "overrides", "batch"),
    [("sam_med3d_turbo", TINY_3D, batch_3d), ("sam_unet_r34", TINY_UNET, batch_2d)],
    ids=["sam_med3d", "sam_unet"],
)
def test_activation_checkpointing_recomputes_the_encoder_blocks_with_the_same_loss_and_gradients(
    model, overrides, batch
):
    schedule = TrainingPromptSchedule(iterations=3, zero_mask_first=True, click_threshold=0.5)
    if model == "sam_unet_r34":
        schedule = TrainingPromptSchedule(iterations=1, first_prompt="box", mask_prompt="none")
    plain = module(model, overrides, train_prompts=schedule)
    recomputing = module(model, overrides, train_prompts=schedule, activation_checkpointing=True)
    assert recomputing.hparams.activation_checkpointing
    recomputing.net.load_state_dict(plain.net.state_dict())
    block_calls = []
    recomputing.net.image_encoder.blocks[0].register_forward_pre_hook(lambda *_: block_calls.append(1))

    data = batch()
    losses = []
    for lit in (plain, recomputing):
        loss = lit.training_step(data, 0)
        loss.backward()
        losses.append(loss.detach())
    assert block_calls == [1, 1], "the first block ran once forward and once more in the backward pass"
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-6)
    for (name, expected), (_, found) in zip(plain.net.named_parameters(), recomputing.net.named_parameters()):
        assert (expected.grad is None) == (found.grad is None), name
        if expected.grad is not None:
            torch.testing.assert_close(found.grad, expected.grad, rtol=1e-5, atol=1e-7, msg=name)

    block_calls.clear()
    with torch.no_grad():
        recomputing.net.encode_image(data["image"])
    assert block_calls == [1], "no recomputation where nothing is recorded"


def test_activation_checkpointing_is_refused_for_an_encoder_without_it():
    with pytest.raises(ValueError, match="LiteMedSAM's image encoder has no activation checkpointing"):
        module("litemedsam", dict(TINY_LITEMEDSAM), activation_checkpointing=True)
