"""One progress bar for a whole training phase (all epochs), instead of Lightning's bar per epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm


class PhaseProgress(Callback):
    """A single ``tqdm`` bar over every training step of a fit, with the running loss; use it with
    ``trainer.enable_progress_bar: false``."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self.bar: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        total = int(trainer.num_training_batches) * int(trainer.max_epochs or 1)
        if trainer.max_steps and trainer.max_steps > 0:
            total = min(total, int(trainer.max_steps))
        self.bar = tqdm(total=total, desc=self.description, unit="step", leave=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.bar.update(1)
        loss = trainer.callback_metrics.get("train/loss_step")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.bar is not None:
            self.bar.close()
