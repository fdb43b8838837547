"""TensorBoard on rank 0 (a no-op elsewhere): the curves a run draws, per step and per epoch,
and its hyperparameters with the results at the end."""

from __future__ import annotations

from pathlib import Path


class Board:
    """TensorBoard on rank 0 (a no-op elsewhere). purge_step drops the events a killed run
    wrote after its last checkpoint, so that a resumed run's curves have no doubles."""

    def __init__(self, out: Path, enabled: bool, purge_step: int | None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                if value is not None:
                    self.writer.add_scalar(tag, value, step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer is not None:
            clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(
                clean, {k: v for k, v in metrics.items() if v is not None}, run_name="."
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
