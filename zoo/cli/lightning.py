"""``zoo fit|validate|test|predict``: LightningCLI over the one training module and any zoo DataModule."""

import sys
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zoo.training.module import PromptableSegmentationModule

RUNS_DIR = "runs"


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's module fixed, the DataModule chosen by ``data.class_path``, CSV logging and
    atomic checkpoint writes by default."""

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


    def before_predict(self) -> None:
        """``zoo predict`` writes masks (MaskWriter) unless the config already has a prediction writer."""
        from lightning.pytorch.callbacks import BasePredictionWriter

        from zoo.training.prediction import MaskWriter

        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(MaskWriter(Path(self.trainer.default_root_dir) / "predictions"))


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
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf"},
            auto_configure_optimizers=False,
        )
