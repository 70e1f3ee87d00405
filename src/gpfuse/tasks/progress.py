"""Progress of training, evaluation and prediction, on a terminal and where the output is not one.

On a terminal: Lightning's rich progress bar, with epochs counted from 1 (``Epoch 5/5`` for the last of five
epochs; Lightning's own bar says ``Epoch 4/4``). Where stdout is a file or a pipe (``nohup``, ``tee``, SLURM
logs) a live bar prints nothing until the end, so :class:`PlainProgress` prints one plain line at a steady
interval instead: the stage, epoch, step of steps, elapsed time, the ETA and the last training loss. Lightning
has no such printer (its TQDM bar writes carriage returns into the file); this one is written here.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from typing_extensions import override

from gpfuse.utils.progress import duration

__all__ = ["EpochBar", "PlainProgress", "progress_callback"]


class EpochBar(RichProgressBar):
    """Lightning's rich bar with epochs counted from 1, as ``max_epochs`` counts them."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return (
            super()
            ._get_train_description(current_epoch)
            .replace(
                f"Epoch {current_epoch}/{self.trainer.max_epochs - 1}"
                if self.trainer.max_epochs is not None
                else f"Epoch {current_epoch}",
                f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else ""),
                1,
            )
        )


class PlainProgress(ProgressBar):
    """One line per ``interval`` seconds (and at the end of every epoch and evaluation), e.g.
    ``train epoch 2/5 step 120/400 (30%) elapsed 1m02s eta 6m40s loss 0.8341`` (the last step's loss; at the end
    of an epoch the epoch's mean); rank 0 only. The training ETA is
    that of the whole run at the speed so far (an early stop ends it sooner); evaluation ETAs are of the stage."""

    def __init__(self, interval: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.stream = stream
        self._enabled = True
        self._start = self._last = 0.0
        self._fit_start = 0.0
        self._steps_done = 0  # training steps of this fit so far (all epochs)
        self._step_loss: float | None = None  # the last training step's loss (this process's batch)

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Lightning's ``LightningModule.print`` asks this of the progress bar before handing it a message."""
        return self._enabled

    @override
    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """A task's ``self.print(...)``: on its own line among the progress lines."""
        print(*args, sep=sep, file=self.stream or sys.stdout, flush=True)

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _due(self, now: float) -> bool:
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False

    # training
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._last = time.monotonic()
        self._steps_done = 0

    def _train_line(self, trainer: L.Trainer, step: int) -> str:
        total = self.total_train_batches
        elapsed = time.monotonic() - self._fit_start
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        line = f"train epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        if total != float("inf"):
            line += f" step {step}/{int(total)} ({100 * step / max(int(total), 1):.0f}%)"
        line += f" elapsed {duration(elapsed)}"
        if epochs and total != float("inf") and self._steps_done:
            remaining = (epochs - trainer.current_epoch) * int(total) - step
            line += f" eta {duration(elapsed / self._steps_done * remaining)}"
        return line

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._steps_done += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._step_loss = float(loss) if loss is not None else None
        if self._due(time.monotonic()):
            last = f" loss {self._step_loss:.4f}" if self._step_loss is not None else ""
            self._print(self._train_line(trainer, batch_idx + 1) + last)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.monotonic()
        total = self.total_train_batches
        loss = trainer.callback_metrics.get("train/loss")
        mean = f" epoch loss {float(loss):.4f}" if loss is not None else ""
        self._print(self._train_line(trainer, int(total) if total != float("inf") else self._steps_done) + mean)

    # validation, test, predict: one count per dataloader (re-identification evaluates a query and a gallery)
    def _eval_start(self) -> None:
        self.reset_dataloader_idx_tracker()
        self._start = time.monotonic()

    def _eval_batch_start(self, dataloader_idx: int) -> None:
        if self.has_dataloader_changed(dataloader_idx):  # Lightning's tracker of the current dataloader
            self._start = time.monotonic()

    def _eval_line(self, stage: str, step: int, total: float) -> None:
        now = time.monotonic()
        if not self._due(now):
            return
        elapsed = now - self._start
        loader = self._current_eval_dataloader_idx or 0
        line = f"{stage}{f' (dataloader {loader + 1})' if loader else ''} step {step}"
        line += f"/{int(total)}" if total != float("inf") else ""
        line += f" elapsed {duration(elapsed)}"
        if total != float("inf"):
            line += f" eta {duration(elapsed / step * (int(total) - step))}"
        self._print(line)

    def _eval_end(self, stage: str) -> None:
        self._last = time.monotonic()
        self._print(f"{stage} done in {duration(self._last - self._start)}")

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    @override
    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(dataloader_idx)

    @override
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: int
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_line("validation", batch_idx + 1, self.total_val_batches_current_dataloader)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_end("validation")

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    @override
    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(dataloader_idx)

    @override
    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: int
    ) -> None:
        self._eval_line("test", batch_idx + 1, self.total_test_batches_current_dataloader)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("test")

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    @override
    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(dataloader_idx)

    @override
    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: int
    ) -> None:
        self._eval_line("predict", batch_idx + 1, self.total_predict_batches_current_dataloader)


def progress_callback(stream: TextIO | None = None) -> ProgressBar:
    """The progress display for ``stream`` (default stdout): :class:`EpochBar` on a terminal, else
    :class:`PlainProgress`."""
    return EpochBar() if (stream or sys.stdout).isatty() else PlainProgress(stream=stream)
