"""Write checkpoints the way the authors' training scripts do, for tests."""

import argparse

import torch


def sam_med3d_official_checkpoint(state_dict):
    """SAM-Med3D's train.py ``save_checkpoint`` layout: weights under ``model_state_dict`` beside training state."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=8e-4)
    return {
        "epoch": 200,
        "model_state_dict": state_dict,
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": {"milestones": {120: 1, 180: 1}, "gamma": 0.1, "last_epoch": 200},
        "losses": [0.9, 0.5],
        "dices": [0.4, 0.8],
        "best_loss": 0.5,
        "best_dice": 0.8,
        "args": argparse.Namespace(task_name="union_train", lr=8e-4, step_size=[120, 180]),
        "used_datas": ["data/train/adrenal/ct_WORD"],
    }


def sam_med2d_official_checkpoint(state_dict):
    """SAM-Med2D's (and SAM-UNet's) train.py layout: weights under ``model`` beside a whole pickled optimizer."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    return {"model": state_dict, "optimizer": optimizer}


def with_prefix(state_dict, prefix="module."):
    return {prefix + key: value for key, value in state_dict.items()}


def identical_state_dicts(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
