"""benchmarks/training_step.py's recipe step, shared with authors_training_step.py, on tiny configs.

SAM-Med2D's recipe steps its optimiser after every prompt pass (manual optimisation, normally driven by a
Trainer); the benchmark runs it outside one, so its step must update the weights itself and return no loss,
while a summed-loss recipe (SAM-UNet) returns the loss the benchmark then backpropagates and steps.
"""

from __future__ import annotations

import json

import pytest
import torch

SCRIPT = "training_step"  # the script fixture (conftest.py) imports benchmarks/training_step.py
TINY = {
    "sam_med2d": dict(
        image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
        prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
    ),
    "sam_unet": dict(image_size=64, embed_dim=32, depth=12, num_heads=2),
}  # fmt: skip


@pytest.mark.parametrize("family, per_pass", [("sam_med2d", True), ("sam_unet", False)])
def test_a_recipe_step_runs_outside_a_trainer(script, tmp_path, family, per_pass):
    torch.manual_seed(0)
    extra = [f"--model.model_overrides={json.dumps(TINY[family])}"]
    module, optimizer, batch = script.build_recipe_step(family, tmp_path, iterations_3d=11, extra=extra)
    assert module.training and (module.train_prompts.optimizer_step == "per_pass") == per_pass
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    loss = script.train_step(module, optimizer, batch)
    assert (loss is None) == per_pass
    if loss is not None:
        assert torch.isfinite(loss)
    moved = [name for name, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert len(moved) > len(before) // 2  # the optimiser stepped
    # and cleared the gradients: to None, or to zeros where the recipe keeps them (SAM-Med2D's zero_grad: zeros)
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())
    assert any(p.grad is not None for p in module.parameters()) == (module.train_prompts.zero_grad == "zeros")
