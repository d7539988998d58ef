"""One LightningModule for promptable segmentation: the papers' interactive training loop and evaluation."""

import hashlib
import random
from dataclasses import dataclass, fields, replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from zoo.processors import (
    ClickState,
    Processor,
    attach_default_processor,
    processor_for,
    select_best_mask,
)
from zoo.prompts.simulate import (
    centre_click,
    first_click_random_foreground,
    next_click_random_error,
    sam_med2d_points,
)
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts
from zoo.prompts.validate import check_kinds
from zoo.training.losses import SegmentationLoss
from zoo.training.metrics import PerClassMean, dice_per_sample, surface_dice_per_sample
from zoo.training.model_source import build_model
from zoo.training.optim import (
    ParamGroup,
    apply_lr_scales,
    param_groups,
    set_trainable,
    train_mode,
)
from zoo.training.schedules import EvaluationProtocol, TrainingPromptSchedule


class PromptableSegmentationModule(L.LightningModule):
    """Trains and evaluates any zoo model with the interactive prompt loop its paper uses.

    Batches come from the zoo DataModules: ``image`` (``B x C x *spatial`` at the model's input size) with either
    ``target`` (``B x 1 x *spatial``, one binary target per image: 3D) or ``masks`` (``B x N x *spatial``, N targets
    per image sharing one image embedding: 2D), and ``class_name`` per target. What differs between papers is
    configuration: the prompt schedule, the loss, the trainable parts and the optimiser groups.
    """

    def __init__(
        self,
        model: str = "sam_med2d_b",
        model_overrides: dict[str, Any] | None = None,
        weights: str | None = None,
        sam_init: str | None = None,
        resnet_init: str | None = None,
        loss: SegmentationLoss | None = None,
        train_prompts: TrainingPromptSchedule | None = None,
        eval_prompts: EvaluationProtocol | None = None,
        freeze: list[str] | None = None,
        unfreeze: list[str] | None = None,
        lr_groups: list[ParamGroup] | None = None,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        seed: int = 0,
        activation_checkpointing: bool = False,
    ) -> None:
        """``activation_checkpointing``: recompute the image encoder's block activations in the backward pass
        (less memory per step, about one more encoder forward; the same losses and gradients)."""
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True); the full
        # configuration (loss, schedules, optimiser) is saved by LightningCLI as config.yaml beside the run.
        self.save_hyperparameters(
            ignore=["loss", "train_prompts", "eval_prompts", "lr_groups", "optimizer", "lr_scheduler"]
        )
        self.net = attach_default_processor(build_model(model, model_overrides, weights, sam_init, resnet_init))
        set_trainable(self.net, freeze or [], unfreeze or [])
        if activation_checkpointing:
            self.net.set_activation_checkpointing(True)
        self.loss = loss if loss is not None else SegmentationLoss(dice=1.0)
        self.train_prompts = train_prompts or TrainingPromptSchedule()
        self.eval_prompts = eval_prompts or EvaluationProtocol()
        self.lr_groups = lr_groups or []
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.seed = seed
        self.class_names = list(class_names or [])
        self.metrics = nn.ModuleDict()
        # SAM-Med2D's per-pass stepping is manual optimisation; the summed losses use Lightning's own loop.
        self.automatic_optimization = self.train_prompts.optimizer_step != "per_pass"

    def setup(self, stage: str) -> None:
        """Take the class list from the DataModule (unless the recipe fixed it) and build the metrics."""
        if not self.class_names:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            self.class_names = list(getattr(datamodule, "class_names", None) or ["foreground"])
        self._check_protocol_kinds()
        keys = self._metric_keys("val") + self._metric_keys("test")
        self.metrics = nn.ModuleDict({key: PerClassMean(len(self.class_names)) for key in keys}).to(self.device)

    # ------------------------------------------------------------------------------------------------ batches
    def _unpack(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """Images, binary targets ``P x 1 x *spatial``, the image of each target (``P``) and its class name."""
        images = batch["image"]
        if "target" in batch:
            targets = batch["target"]
            image_index = torch.arange(images.shape[0], device=images.device)
            names = list(batch.get("class_name") or ["foreground"] * images.shape[0])
        elif "masks" in batch:
            masks = batch["masks"]  # B x N x *spatial, or B x N x 1 x *spatial
            per_image = masks.shape[1]
            spatial = masks.shape[-(images.ndim - 2) :]
            targets = masks.reshape(-1, 1, *spatial)
            image_index = torch.arange(images.shape[0], device=images.device).repeat_interleave(per_image)
            given = batch.get("class_name")
            if not given:
                names = ["foreground"] * targets.shape[0]
            else:  # one name per image (N = 1) or a list of N names per image
                names = [n for sample in given for n in ([sample] if isinstance(sample, str) else sample)]
        else:
            raise KeyError(f"a batch needs 'target' or 'masks' beside 'image'; got keys {sorted(batch)}")
        return images, targets.bool(), image_index, names

    def _class_indices(self, names: list[str]) -> Tensor:
        lookup = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            raise KeyError(f"classes {unknown} are not in the module's class list {self.class_names}")
        return torch.tensor([lookup[n] for n in names], device=self.device)

    # ---------------------------------------------------------------------------------------- image encoding
    #: Most encodings kept when the image side is frozen (decoder-only fine-tuning reuses them across epochs).
    encoding_cache_limit: int = 512

    def _encode(self, images: Tensor) -> Any:
        """``net.encode_image``; while every image-side parameter is frozen, each distinct image is encoded once
        per fit and its encoding reused (keyed on the image's bytes; cleared at the start and end of each fit)."""
        if any(p.requires_grad for p in self.net.image_side_parameters()):
            return self.net.encode_image(images)
        cache = self.__dict__.setdefault("_encodings", {})
        keys = [hashlib.sha1(image.detach().cpu().numpy().tobytes()).hexdigest() for image in images]
        missing = list(dict.fromkeys(key for key in keys if key not in cache))  # each distinct new image once
        if missing and len(cache) + len(missing) > self.encoding_cache_limit:
            with torch.no_grad():  # no room: this batch is encoded without caching
                return self.net.encode_image(images)
        if missing:
            rows = [keys.index(key) for key in missing]
            with torch.no_grad():
                fresh = self.net.encode_image(images[rows])
            for row, key in enumerate(missing):
                cache[key] = _one(fresh, row)
        return _stack([cache[key] for key in keys])

    @staticmethod
    def _per_target(features: Any, image_index: Tensor) -> Any:
        """Image features for each target: a tensor indexed along batch, or a dataclass of such tensors."""
        if isinstance(features, Tensor):
            return features if image_index.numel() == features.shape[0] and bool(
                (image_index == torch.arange(features.shape[0], device=image_index.device)).all()
            ) else features[image_index]
        return replace(features, **{f.name: getattr(features, f.name)[image_index] for f in fields(features)})

    # ----------------------------------------------------------------------------------------------- prompts
    @property
    def processor(self) -> Processor:
        """The network's processor (what its weights were trained with): prompt conversion, decode policy, clicks."""
        if getattr(self, "_processor", None) is None:
            self._processor = processor_for(self.net)
        return self._processor

    @property
    def spatial_dims(self) -> int:
        return self.net.spatial_dims

    def _model_kwargs(
        self, points: PointPrompts | None, boxes: BoxPrompts | None, low_res: Tensor | None, mask_prompt: str
    ) -> dict[str, Any]:
        """The training schedule's prompts as the network's keyword arguments (mask prompt as the schedule says)."""
        masks = None
        if low_res is not None and mask_prompt != "none":
            masks = MaskPrompts(torch.sigmoid(low_res) if mask_prompt == "sigmoid" else low_res)
        return self.processor.model_kwargs(Prompts(points, boxes, masks))

    def _generator(self, stage: str, batch_idx: int) -> torch.Generator:
        """A generator seeded by (seed, stage, step, rank): clicks replay exactly after a resume."""
        # Training: the optimiser step and the batch (so the batches of one accumulation window differ).
        step = f"{self.global_step}/{batch_idx}" if stage == "train" else batch_idx
        key = f"{self.seed}/{stage}/{step}/{self.global_rank}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    @staticmethod
    def _best_mask(low_res: Tensor, iou: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The single mask, or with multimask output the one with the highest predicted IoU."""
        if iou is None or low_res.shape[1] == 1:
            return low_res[:, :1], None if iou is None else iou[:, :1]
        return select_best_mask(low_res, iou)

    # ---------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        self.__dict__.pop("_encodings", None)
        self.__dict__.pop("_window", None)
        if self.train_prompts.optimizer_step == "per_pass" and self.trainer.world_size > 1:
            raise RuntimeError(
                "optimizer_step='per_pass' runs a backward pass per prompt pass, which DDP allows only once per "
                "forward; train on one device (SAM-Med2D's train.py is single-GPU) or use optimizer_step='summed'"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if self.train_prompts.optimizer_step == "per_pass":
            return self._training_step_per_pass(batch, batch_idx)
        rollout = self._start_rollout(batch, batch_idx)
        total = rollout.images.new_zeros(())
        for it in range(self.train_prompts.iterations):
            total = total + self._run_pass(rollout, it)
        # Per step for the progress bar, and the epoch mean ("train/loss_epoch") for schedulers that step on it.
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=rollout.size)
        return total

    def _training_step_per_pass(self, batch: dict[str, Any], batch_idx: int) -> None:
        """SAM-Med2D's ``train.py``: backward and an optimiser step after every pass (manual optimisation); with
        ``accumulate_batches = k`` the passes of ``k`` batches run in lockstep, one step per pass."""
        schedule = self.train_prompts
        scale = 1.0 / schedule.accumulate_batches
        optimizer = self.optimizers()
        rollout = self._start_rollout(batch, batch_idx)
        first = self._run_pass(rollout, 0)
        self.manual_backward(first * scale)
        rollout.features = _detached(rollout.features)  # later passes use the embeddings of the first, detached
        rollout.total = first.detach()
        window = self.__dict__.setdefault("_window", [])
        window.append(rollout)
        closes = (batch_idx + 1) % schedule.accumulate_batches == 0 or bool(self.trainer.is_last_batch)
        if not closes:
            return
        self._optimizer_step(optimizer)
        for it in range(1, schedule.iterations):
            for item in window:
                loss = self._run_pass(item, it)
                self.manual_backward(loss * scale)
                item.total = item.total + loss.detach()
            self._optimizer_step(optimizer)
        total = torch.stack([item.total for item in window]).mean()
        size = sum(item.size for item in window)
        window.clear()
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        return

    def _optimizer_step(self, optimizer: Any) -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=self.train_prompts.zero_grad == "none")

    def on_train_epoch_end(self) -> None:
        """Manual optimisation steps epoch-interval schedulers itself (Lightning does so only automatically)."""
        if self.automatic_optimization or self.scheduler_factory is None:
            return
        scheduler = self.lr_schedulers()
        monitor = getattr(scheduler, "monitor", None)
        if monitor is not None:
            value = self.trainer.callback_metrics.get(monitor)
            if value is not None:
                scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()

    def _start_rollout(self, batch: dict[str, Any], batch_idx: int) -> "_Rollout":
        images, target, image_index, _ = self._unpack(batch)
        schedule = self.train_prompts
        generator = self._generator("train", batch_idx)
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        low_res = None
        if schedule.zero_mask_first:
            low_res = torch.zeros(target.shape[0], 1, *self.net.mask_input_size, device=self.device)
        return _Rollout(
            images=images,
            target=target,
            features=self._per_target(self._encode(images), image_index),
            generator=generator,
            rng=rng,
            mask_only=schedule.mask_only_passes(rng),
            low_res=low_res,
            prediction=torch.zeros_like(target[:, 0]),
            originals=self._originals(batch, image_index),
        )

    def _run_pass(self, rollout: "_Rollout", it: int) -> Tensor:
        """Pass ``it`` of a batch's interactive loop: its prompts, the decoder, its loss; the rollout moves on."""
        schedule = self.train_prompts
        target_mask = rollout.target[:, 0]
        if it == 0:
            rollout.points, rollout.boxes = self._first_training_prompt(
                target_mask, rollout.rng, rollout.generator, rollout.originals
            )
        else:
            clicks = next_click_random_error(
                rollout.prediction, target_mask, rollout.rng.choice(schedule.clicks_per_iteration), rollout.generator
            )
            previous = rollout.points
            rollout.points = previous.cat(clicks) if schedule.accumulate_clicks and previous is not None else clicks
            rollout.boxes = None
        fed_points, fed_boxes = (None, None) if it in rollout.mask_only else (rollout.points, rollout.boxes)
        prompts = self._model_kwargs(fed_points, fed_boxes, rollout.low_res, schedule.mask_prompt)
        if it > 0 and schedule.decoder_only_after_first:
            with torch.no_grad():
                sparse, dense = self.net.embed_prompts(**prompts)
            out = self.net.decode_embeddings(_detached(rollout.features), sparse, dense, schedule.multimask_output)
        else:
            out = self.net.decode(rollout.features, **prompts, multimask_output=schedule.multimask_output)
        step_low_res, iou = self._best_mask(out.low_res_logits, out.iou_predictions)
        logits = self.processor.upsample(step_low_res)
        loss = self.loss(logits, rollout.target.to(logits.dtype), iou)
        rollout.low_res = step_low_res.detach() if schedule.detach_mask_feedback else step_low_res
        rollout.prediction = (logits.detach() > schedule.click_threshold)[:, 0]
        return loss

    def _first_training_prompt(
        self,
        target: Tensor,
        rng: random.Random,
        generator: torch.Generator,
        originals: tuple[list[Any], list[Tensor]] | None = None,
    ) -> tuple[PointPrompts | None, BoxPrompts | None]:
        schedule = self.train_prompts
        use_box = schedule.first_prompt == "box" or (
            schedule.first_prompt == "box_or_point" and rng.random() < schedule.box_probability
        )
        if use_box:
            frames, masks = originals if originals is not None else (None, None)
            boxes = self.processor.target_boxes(target, schedule.box_jitter, generator, frames, masks)
            if bool(boxes.valid.all()):
                return None, boxes
        return first_click_random_foreground(target, generator), None

    @staticmethod
    def _originals(batch: dict[str, Any], image_index: Tensor) -> tuple[list[Any], list[Tensor]] | None:
        """Each target's frame and its mask on the original grid, when the batch carries them (``frame`` and
        ``original_masks``, one entry per image: ``N x *original`` masks in the order of ``_unpack``)."""
        frames, masks = batch.get("frame"), batch.get("original_masks")
        if frames is None or masks is None:
            return None
        per_image = [m.reshape(-1, *m.shape[-len(frames[0].original_shape):]) for m in masks]
        counts = [len(m) for m in per_image]
        flat_frames = [frame for frame, count in zip(frames, counts) for _ in range(count)]
        flat_masks = [mask.bool() for image in per_image for mask in image]
        if len(flat_masks) != image_index.numel():
            raise ValueError(f"the batch has {image_index.numel()} targets but {len(flat_masks)} original masks")
        return flat_frames, flat_masks

    # -------------------------------------------------------------------------------------------- evaluation
    def _check_protocol_kinds(self) -> None:
        """Refuse an evaluation protocol whose prompt kinds the model does not take, before any batch is read."""
        protocol = self.eval_prompts
        kinds = ({"points"} if protocol.clicks or protocol.simultaneous_points else set()) | (
            {"boxes"} if protocol.box else set()
        )
        check_kinds(kinds, self.processor.prompt_kinds, self.processor.model_name)

    def _protocol_names(self) -> list[str]:
        protocol = self.eval_prompts
        names = [f"{n}pt" for n in protocol.clicks] + [f"{n}pt_simultaneous" for n in protocol.simultaneous_points]
        return names + (["box"] if protocol.box else [])

    def _metric_keys(self, stage: str) -> list[str]:
        metrics = ["dice"] + (["nsd"] if self.eval_prompts.nsd_tolerance_mm is not None else [])
        # ModuleDict keys cannot contain dots; slashes read badly
        return [f"{stage}__{metric}__{name}" for metric in metrics for name in self._protocol_names()]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        protocol = self.eval_prompts
        self._check_protocol_kinds()
        images, target, image_index, names = self._unpack(batch)
        target_mask = target[:, 0]
        class_index = self._class_indices(names)
        originals = self._originals(batch, image_index) if protocol.grid == "original" else None
        if protocol.grid == "original" and originals is None:
            raise KeyError(
                "scoring on the original grid needs 'frame' and 'original_masks' in the batch (the zoo DataModules "
                "give them to evaluation batches); set eval_prompts.grid='model' to score on the model grid"
            )
        generator = torch.Generator().manual_seed(protocol.seed + batch_idx)
        features = self._per_target(self._encode(images), image_index)

        def record(name: str, low_res: Tensor) -> None:
            dice, nsd = self._scores(processor, low_res, target, originals)
            self.metrics[f"{stage}__dice__{name}"].update(dice, class_index)
            if nsd is not None:
                self.metrics[f"{stage}__nsd__{name}"].update(nsd, class_index)

        processor = self.processor
        if protocol.multimask_output is not None and protocol.multimask_output != processor.policy.multimask_output:
            policy = replace(processor.policy, multimask_output=protocol.multimask_output)
            processor = type(processor)(replace(processor.config, decode=policy))
        if protocol.clicks:
            state = ClickState()
            if protocol.first_click == "crop_centre":
                points = centre_click(target_mask)
            else:
                points = first_click_random_foreground(target_mask, generator)
            for n in range(1, protocol.clicks[-1] + 1):
                state, decoded = processor.click(
                    self.net, features, state, points, use_mask_feedback=protocol.mask_feedback
                )
                if n in protocol.clicks:
                    record(f"{n}pt", decoded.low_res_logits)
                if n < protocol.clicks[-1]:
                    predicted = processor.binarize(processor.upsample(decoded.low_res_logits))[:, 0]
                    points = next_click_random_error(predicted, target_mask, 1, generator)
        for n in protocol.simultaneous_points:
            decoded = processor.decode(self.net, features, Prompts(points=sam_med2d_points(target_mask, n, generator)))
            record(f"{n}pt_simultaneous", decoded.low_res_logits)
        if protocol.box:
            frames, masks = originals if originals is not None else (None, None)
            boxes = processor.target_boxes(target_mask, "none", None, frames, masks)
            decoded = processor.decode(self.net, features, Prompts(boxes=boxes))
            record("box", decoded.low_res_logits)

    def _scores(
        self,
        processor: Processor,
        low_res: Tensor,
        target: Tensor,
        originals: tuple[list[Any], list[Tensor]] | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Dice (and NSD) of each target's decoded mask: on the model grid, or back on the original grid through
        the processor's inverse (``to_original``), against the original mask."""
        protocol = self.eval_prompts
        tolerance = protocol.nsd_tolerance_mm
        surfels = protocol.nsd_boundary == "surfels"
        if originals is None:
            pred = processor.binarize(processor.upsample(low_res))
            dice = dice_per_sample(pred, target)
            if tolerance is None:
                return dice, None
            return dice, surface_dice_per_sample(pred, target, tolerance, self._model_grid_spacing(), surfels)
        frames, masks = originals
        dice, nsd = [], []
        for row, (frame, truth) in enumerate(zip(frames, masks)):
            pred = processor.to_original(low_res[row : row + 1].float(), frame).mask.reshape(truth.shape)
            pred, truth = pred[None, None].to(truth.device), truth[None, None]
            dice.append(dice_per_sample(pred, truth))
            if tolerance is not None:
                nsd.append(surface_dice_per_sample(pred, truth, tolerance, self._original_spacing(frame), surfels))
        dice_values = torch.cat(dice).to(self.device)
        return dice_values, torch.cat(nsd).to(self.device) if tolerance is not None else None

    def _model_grid_spacing(self) -> list[float]:
        spacing = getattr(self.trainer.datamodule, "spacing", None) if self._trainer is not None else None
        if spacing is None:
            raise ValueError("NSD needs the crop spacing: the DataModule has no 'spacing' attribute")
        return [float(s) for s in spacing]

    def _original_spacing(self, frame: Any) -> list[float]:
        """The original grid's voxel size in mm: the column norms of the file's affine (the NIfTI zooms upstream
        reads); 2D frames without an affine fall back to the DataModule's ``spacing``."""
        affine = frame.meta.get("original_affine")
        if affine is None:
            return self._model_grid_spacing()
        return torch.linalg.norm(torch.as_tensor(affine, dtype=torch.float64)[:3, :3], dim=0).tolist()

    def on_train_epoch_start(self) -> None:
        train_mode(self.net)  # models come from from_pretrained in eval mode; frozen parts stay in eval mode

    def on_fit_end(self) -> None:
        self.__dict__.pop("_encodings", None)
        start = getattr(self.net, "weights_origin", None) or "random initialisation"
        self.net.weights_origin = f"trained by a zoo run from {start}"

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        """Per protocol: the headline (``eval_prompts.headline``), the mean over all masks, the mean of per-class
        means, and each class's mean."""
        headline = self.eval_prompts.headline
        for key, metric in self.metrics.items():
            if not key.startswith(f"{stage}__") or not bool((metric.count > 0).any()):
                continue
            per_class = metric.compute().reshape(-1)
            _, measure, name = key.split("__")
            means = {"class_mean": torch.nanmean(per_class).float(), "mask_mean": metric.mask_mean().float()}
            shown = name in ("1pt", "box")
            self.log(f"{stage}/{measure}/{name}", means[headline], prog_bar=shown)
            for kind, value in means.items():
                self.log(f"{stage}/{measure}_{kind}/{name}", value)
            for class_name, value in zip(self.class_names, per_class):
                if not torch.isnan(value):
                    self.log(f"{stage}/{measure}/{name}/{class_name}", value.float())
            metric.reset()

    # ------------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(param_groups(self.net, self.lr_groups))
        apply_lr_scales(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        monitor = getattr(scheduler, "monitor", None)  # LightningCLI's ReduceLROnPlateau names its metric
        if monitor is None:
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}

    # -------------------------------------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        from zoo.training.prediction import predict_batch

        return predict_batch(self.net, self.processor, batch)


def _one(encoding: Any, row: int) -> Any:
    """Row ``row`` of an encoding (a tensor or a dataclass of tensors), kept as a 1-row batch."""
    if isinstance(encoding, Tensor):
        return encoding[row : row + 1].clone()
    return replace(encoding, **{f.name: getattr(encoding, f.name)[row : row + 1].clone() for f in fields(encoding)})


def _stack(encodings: list[Any]) -> Any:
    """Concatenate 1-row encodings (tensors or dataclasses of tensors) along the batch."""
    first = encodings[0]
    if isinstance(first, Tensor):
        return torch.cat(encodings)
    return replace(first, **{f.name: torch.cat([getattr(e, f.name) for e in encodings]) for f in fields(first)})


@dataclass
class _Rollout:
    """Where one batch's interactive training loop stands between passes."""

    images: Tensor
    target: Tensor
    features: Any
    generator: torch.Generator
    rng: random.Random
    mask_only: set[int]
    low_res: Tensor | None
    prediction: Tensor
    originals: tuple[list[Any], list[Tensor]] | None = None
    points: PointPrompts | None = None
    boxes: BoxPrompts | None = None
    total: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.target.shape[0])


def _detached(features: Any) -> Any:
    """Image features without their graph (a tensor or a dataclass of tensors)."""
    if isinstance(features, Tensor):
        return features.detach()
    return replace(features, **{f.name: getattr(features, f.name).detach() for f in fields(features)})
