"""One LightningModule for promptable segmentation: the papers' interactive training loop and evaluation."""

import hashlib
import random
from dataclasses import fields, replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from zoo.processors import ClickState, Processor, attach_default_processor, processor_for, select_best_mask
from zoo.prompts.simulate import first_click_random_foreground, next_click_random_error
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts
from zoo.training.losses import SegmentationLoss
from zoo.training.metrics import PerClassMean, dice_per_sample, surface_dice_per_sample
from zoo.training.model_source import build_model
from zoo.training.optim import ParamGroup, apply_lr_scales, param_groups, set_trainable, train_mode
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
    ) -> None:
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True); the full
        # configuration (loss, schedules, optimiser) is saved by LightningCLI as config.yaml beside the run.
        self.save_hyperparameters(
            ignore=["loss", "train_prompts", "eval_prompts", "lr_groups", "optimizer", "lr_scheduler"]
        )
        self.net = attach_default_processor(build_model(model, model_overrides, weights, sam_init, resnet_init))
        set_trainable(self.net, freeze or [], unfreeze or [])
        self.loss = loss if loss is not None else SegmentationLoss(dice=1.0)
        self.train_prompts = train_prompts or TrainingPromptSchedule()
        self.eval_prompts = eval_prompts or EvaluationProtocol()
        self.lr_groups = lr_groups or []
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.seed = seed
        self.class_names = list(class_names or [])
        self.metrics = nn.ModuleDict()

    def setup(self, stage: str) -> None:
        """Take the class list from the DataModule (unless the recipe fixed it) and build the metrics."""
        if not self.class_names:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            self.class_names = list(getattr(datamodule, "class_names", None) or ["foreground"])
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

    def on_fit_start(self) -> None:
        self.__dict__.pop("_encodings", None)

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
        step = self.global_step if stage == "train" else batch_idx
        key = f"{self.seed}/{stage}/{step}/{self.global_rank}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    @staticmethod
    def _best_mask(low_res: Tensor, iou: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The single mask, or with multimask output the one with the highest predicted IoU."""
        if iou is None or low_res.shape[1] == 1:
            return low_res[:, :1], None if iou is None else iou[:, :1]
        return select_best_mask(low_res, iou)

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images, target, image_index, _ = self._unpack(batch)
        schedule = self.train_prompts
        generator = self._generator("train", batch_idx)
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        target_mask = target[:, 0].bool()
        mask_only = set()
        if schedule.mask_only_iteration_range is not None:
            mask_only.add(rng.randint(*schedule.mask_only_iteration_range))
        if schedule.mask_only_last and schedule.iterations > 1:
            mask_only.add(schedule.iterations - 1)

        features = self._per_target(self._encode(images), image_index)
        low_res = None
        if schedule.zero_mask_first:
            low_res = torch.zeros(target.shape[0], 1, *self.net.mask_input_size, device=self.device)
        points = boxes = None
        prediction = torch.zeros_like(target_mask)
        total = images.new_zeros(())
        for it in range(schedule.iterations):
            if it == 0:
                points, boxes = self._first_training_prompt(target_mask, rng, generator)
            else:
                clicks = next_click_random_error(
                    prediction, target_mask, rng.choice(schedule.clicks_per_iteration), generator
                )
                points = points.cat(clicks) if schedule.accumulate_clicks and points is not None else clicks
                boxes = None
            fed_points, fed_boxes = (None, None) if it in mask_only else (points, boxes)
            prompts = self._model_kwargs(fed_points, fed_boxes, low_res, schedule.mask_prompt)
            if it > 0 and schedule.decoder_only_after_first:
                with torch.no_grad():
                    sparse, dense = self.net.embed_prompts(**prompts)
                detached = features.detach() if isinstance(features, Tensor) else features
                out = self.net.decode_embeddings(detached, sparse, dense, schedule.multimask_output)
            else:
                out = self.net.decode(features, **prompts, multimask_output=schedule.multimask_output)
            step_low_res, iou = self._best_mask(out.low_res_logits, out.iou_predictions)
            logits = self.processor.upsample(step_low_res)
            total = total + self.loss(logits, target.to(logits.dtype), iou)
            low_res = step_low_res.detach()
            prediction = (logits.detach() > schedule.click_threshold)[:, 0]
        # Per step for the progress bar, and the epoch mean ("train/loss_epoch") for schedulers that step on it.
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=target.shape[0])
        return total

    def _first_training_prompt(self, target: Tensor, rng: random.Random, generator: torch.Generator):
        schedule = self.train_prompts
        use_box = schedule.first_prompt == "box" or (
            schedule.first_prompt == "box_or_point" and rng.random() < schedule.box_probability
        )
        if use_box:
            boxes = self.processor.boxes_from_masks(target, jitter=schedule.box_jitter, generator=generator)
            if bool(boxes.valid.all()):
                return None, boxes
        return first_click_random_foreground(target, generator), None

    # -------------------------------------------------------------------------------------------- evaluation
    def _metric_keys(self, stage: str) -> list[str]:
        protocol = self.eval_prompts
        keys = [f"{stage}/dice/{n}pt" for n in protocol.clicks]
        if protocol.box:
            keys.append(f"{stage}/dice/box")
        if protocol.nsd_tolerance_mm is not None:
            keys += [f"{stage}/nsd/{n}pt" for n in protocol.clicks]
            if protocol.box:
                keys.append(f"{stage}/nsd/box")
        return [k.replace("/", "__") for k in keys]  # ModuleDict keys cannot contain dots; slashes read badly

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        protocol = self.eval_prompts
        images, target, image_index, names = self._unpack(batch)
        target_mask = target[:, 0]
        class_index = self._class_indices(names)
        spacing = getattr(self.trainer.datamodule, "spacing", None) if self._trainer is not None else None
        generator = torch.Generator().manual_seed(protocol.seed + batch_idx)
        features = self._per_target(self._encode(images), image_index)

        def record(name: str, logits: Tensor) -> None:
            pred = self.processor.binarize(logits)
            self.metrics[f"{stage}__dice__{name}"].update(dice_per_sample(pred, target), class_index)
            if protocol.nsd_tolerance_mm is not None:
                if spacing is None:
                    raise ValueError("NSD needs the crop spacing: the DataModule has no 'spacing' attribute")
                nsd = surface_dice_per_sample(pred, target, protocol.nsd_tolerance_mm, list(spacing))
                self.metrics[f"{stage}__nsd__{name}"].update(nsd, class_index)

        processor = self.processor
        if protocol.multimask_output is not None and protocol.multimask_output != processor.policy.multimask_output:
            processor = type(processor)(replace(processor.config, decode=replace(processor.policy, multimask_output=protocol.multimask_output)))
        if protocol.clicks:
            state = ClickState()
            points = first_click_random_foreground(target_mask, generator)
            for n in range(1, protocol.clicks[-1] + 1):
                state, decoded = processor.click(
                    self.net, features, state, points, use_mask_feedback=protocol.mask_feedback
                )
                logits = processor.upsample(decoded.low_res_logits)
                if n in protocol.clicks:
                    record(f"{n}pt", logits)
                if n < protocol.clicks[-1]:
                    predicted = processor.binarize(logits)[:, 0]
                    points = next_click_random_error(predicted, target_mask, 1, generator)
        if protocol.box:
            boxes = processor.boxes_from_masks(target_mask, jitter="none")
            decoded = processor.decode(self.net, features, Prompts(boxes=boxes))
            record("box", processor.upsample(decoded.low_res_logits))

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
        for key, metric in self.metrics.items():
            if not key.startswith(f"{stage}__") or not bool((metric.count > 0).any()):
                continue
            per_class = metric.compute().reshape(-1)
            name = key.replace("__", "/")
            self.log(name, torch.nanmean(per_class).float(), prog_bar=name.endswith("/1pt") or name.endswith("/box"))
            for class_name, value in zip(self.class_names, per_class):
                if not torch.isnan(value):
                    self.log(f"{name}/{class_name}", value.float())
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
