"""``zoo fit|validate|test|predict``: LightningCLI over the one training module and any zoo DataModule.

``ckpt_path`` (a Lightning checkpoint of this module):

* It is read only through the zoo's safe loader (``torch.load(weights_only=True)`` with an explicit allow-list, see
  :mod:`zoo.training.checkpoint_io`); ``--weights_only false`` is refused.
* An ``http(s)://`` URL is downloaded into a private temporary folder that is removed when the command ends, then
  read like a local file; nothing is cached. Other remote schemes are refused.
* The configured model (recipe and command line; ``model.model`` defaults to ``sam_med2d_b``) decides the
  architecture: unlike plain LightningCLI, the checkpoint's saved hyper-parameters never replace it. Before any
  weights are loaded the checkpoint is checked against it: another family's checkpoint, or one of the same family
  whose weights have other shapes, is refused with the file, both families or the differing config fields, and the
  first mismatching weights.

``zoo predict`` has no logger and saves no ``config.yaml``: it writes the masks and nothing else.

The DataModule's ``processor`` is linked to the model (``model.model``, ``model.model_overrides``, ``model.weights``):
the weights choose how images and prompts are prepared, and no data flag has to agree with them.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from zoo.errors import CheckpointError
from zoo.training.checkpoint_io import check_checkpoint_fits, download_checkpoint, is_url, read_lightning_checkpoint
from zoo.training.model_source import model_processor_source, model_skeleton
from zoo.training.module import PromptableSegmentationModule

RUNS_DIR = "runs"
#: ``ckpt_path`` values that Lightning resolves itself (to local files, read through the zoo's checkpoint plugin).
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc")


class SaveConfigExceptPredict(SaveConfigCallback):
    """Saves ``config.yaml`` beside fit/validate/test runs; a prediction writes only its masks."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            super().setup(trainer, pl_module, stage)


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's module fixed, the DataModule chosen by ``data.class_path``, CSV logging, atomic
    checkpoint writes, safe and checked checkpoint reads (module docstring), and a log-free ``predict``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._downloads: tempfile.TemporaryDirectory | None = None
        self._local_ckpt_path: str | None = None
        self._given_checkpoint: tuple[str, dict[str, Any], Any] | None = None
        try:
            super().__init__(*args, **kwargs)  # with run=True this also runs the subcommand
        finally:
            self._given_checkpoint = None
            if self._downloads is not None:
                self._downloads.cleanup()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "trainer.default_root_dir": RUNS_DIR,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": RUNS_DIR},
                },
                "trainer.plugins": [{"class_path": "zoo.training.checkpoint_io.AtomicCheckpointIO"}],
            }
        )
        parser.link_arguments(
            ("model.model", "model.model_overrides", "model.weights"),
            "data.init_args.processor",
            compute_fn=linked_processor,
        )

    # ------------------------------------------------------------------------------------------ checkpoints
    def _parse_ckpt_path(self) -> None:
        """Read ``ckpt_path`` safely (downloading a URL) and check it fits the configured model.

        Replaces LightningCLI's version, which reads with plain ``torch.load``, skips URLs (Lightning then unpickles
        them with ``weights_only=False``) and replaces the configured model with the checkpoint's hyper-parameters.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        given = section.get("ckpt_path")
        if section.get("weights_only") is False:
            raise CheckpointError(
                str(given or "ckpt_path"), "--weights_only false is not supported: zoo reads checkpoints only with its safe loader"
            )
        section["weights_only"] = True  # also for a trainer plugin other than the zoo's
        if not given or str(given) in LIGHTNING_CKPT_ALIASES or str(given).startswith("registry"):
            return
        source = str(given)
        local = self._download(source) if is_url(source) else Path(source)
        self._local_ckpt_path = str(local)  # the trainer reads this file; config.yaml keeps what the user gave
        checkpoint = read_lightning_checkpoint(local, source)
        hparams = checkpoint.get("hyper_parameters") or {}
        checkpoint_net = None
        if isinstance(hparams.get("model"), str):
            checkpoint_net = model_skeleton(hparams["model"], hparams.get("model_overrides"), hparams.get("weights"))
        model = _plain(section["model"])
        configured = model_skeleton(model["model"], model.get("model_overrides"), model.get("weights"))
        if configured is not None:  # otherwise the real model is checked once it is built
            check_checkpoint_fits(source, checkpoint, configured, model["model"], checkpoint_net)
        self._given_checkpoint = (source, checkpoint, checkpoint_net)

    def _download(self, url: str) -> Path:
        """Download ``url`` into this run's private temporary folder (removed when the command ends)."""
        if self._downloads is None:
            self._downloads = tempfile.TemporaryDirectory(prefix="zoo-checkpoint-", ignore_cleanup_errors=True)
        return download_checkpoint(url, Path(self._downloads.name))

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """The trainer method's arguments, with ``ckpt_path`` pointing at the local (possibly downloaded) file."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if self._local_ckpt_path is not None:
            kwargs["ckpt_path"] = self._local_ckpt_path
        return kwargs

    def after_instantiate_classes(self) -> None:
        """Check the given checkpoint against the model as built (covers models without a meta-device skeleton)."""
        if self._given_checkpoint is not None and self.model is not None:
            source, checkpoint, checkpoint_net = self._given_checkpoint
            self._given_checkpoint = None
            check_checkpoint_fits(source, checkpoint, self.model.net, self.model.hparams["model"], checkpoint_net)

    # ----------------------------------------------------------------------------------------------- predict
    def before_instantiate_classes(self) -> None:
        """A prediction logs no metrics, so it gets no logger (one would only leave empty version folders)."""
        if self.config.get("subcommand") == "predict":
            self.config["predict"]["trainer"]["logger"] = False

    def before_predict(self) -> None:
        """``zoo predict`` writes masks (MaskWriter) unless the config already has a prediction writer."""
        from lightning.pytorch.callbacks import BasePredictionWriter

        from zoo.training.prediction import MaskWriter

        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(MaskWriter(Path(self.trainer.default_root_dir) / "predictions"))


def linked_processor(name: str, overrides: dict[str, Any] | None, weights: str | None) -> dict[str, Any]:
    """The processor config of the model a run will build (what ``data.processor`` is linked to)."""
    from zoo.processors import processor_for

    return processor_for(model_processor_source(name, overrides, weights)).to_dict()


def _plain(value: Any) -> dict[str, Any]:
    """A config section as a plain dict (jsonargparse gives Namespaces)."""
    return value.as_dict() if isinstance(value, Namespace) else dict(value or {})


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> ZooCLI:
    """Run LightningCLI with ``args`` (e.g. ``["fit", "--config", "recipes/sam_med2d/demo.yaml"]``)."""
    argv = [sys.argv[0]] if args is not None else sys.argv
    with mock.patch.object(sys, "argv", argv):  # args replace the process's own command line
        return ZooCLI(
            PromptableSegmentationModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=list(args) if args is not None else None,
            run=run,
            save_config_callback=SaveConfigExceptPredict,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf"},
            auto_configure_optimizers=False,
        )
