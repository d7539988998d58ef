"""``zoo fit|validate|test|predict``: LightningCLI over the one training module and any zoo DataModule."""

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zoo.training.module import PromptableSegmentationModule


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's module fixed and the DataModule chosen by ``data.class_path``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.default_root_dir": "runs"})


def cli_main(args: Sequence[str] | None = None) -> ZooCLI:
    """Run LightningCLI with ``args`` (e.g. ``["fit", "--config", "recipes/sam_med2d/demo.yaml"]``)."""
    return ZooCLI(
        PromptableSegmentationModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )
