"""Initialise SAM-UNet for training as upstream does: Meta's SAM ViT-B plus an ImageNet ResNet, from local files.

* SAM (``sam_vit_b_01ec64.pth``, 1024 input) fills the ViT, the prompt encoder and the decoder's two-way
  transformer and ``output_upscaling``; the absolute position table is resized 64x64 -> 16x16 and the global
  blocks' relative tables 127 -> 31 rows (bilinear, :func:`zoo.hub.init_from_sam`); SAM's IoU/mask tokens and
  heads are not used.
* The ImageNet ResNet state dict (torchvision's ``resnet34-b627a593.pth`` / ``resnet50-11ad3fa6.pth``, i.e.
  ``IMAGENET1K_V1`` / ``IMAGENET1K_V2``, or timm's equivalent: same key names) fills ``resnet``; its
  classifier (``fc.*``) is not used.
* Everything else (``adapters_in``, ``adapters_bridge``, ``embedding_encoder``, ``med_token``, ``hf_mlp``,
  ``embedding_maskfeature``) keeps the model's own initialisation. Nothing is downloaded.
"""

from __future__ import annotations

from zoo.models.loading import load_state_dict_strictly
from zoo.hub.sam_init import InitReport, init_from_sam
from zoo.hub.state_dict import CheckpointSource, read_state_dict
from zoo.models.sam_unet import SamUNet

CLASSIFIER_PREFIX = "fc."


def init_sam_unet(model: SamUNet, sam_checkpoint: CheckpointSource, resnet_checkpoint: CheckpointSource) -> InitReport:
    """Load SAM ViT-B and ImageNet ResNet weights into ``model`` (in place) and report what happened to every key.

    Raises:
        zoo.hub.CheckpointError: a file is unreadable, is not SAM / not the model's ResNet, or shapes do not fit.
    """
    report = init_from_sam(model, sam_checkpoint)
    resnet_state, resnet_source = read_state_dict(resnet_checkpoint)
    backbone = {key: value for key, value in resnet_state.items() if not key.startswith(CLASSIFIER_PREFIX)}
    load_state_dict_strictly(model.resnet, backbone, resnet_source)

    loaded = {f"resnet.{key}" for key in backbone}
    report.source = f"{report.source} + {resnet_source}"
    report.copied += sorted(loaded)
    report.kept_at_init = [key for key in report.kept_at_init if key not in loaded]
    report.not_used += [f"{resnet_source}: {key}" for key in resnet_state if key.startswith(CLASSIFIER_PREFIX)]
    return report
