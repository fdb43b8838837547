"""Stopping on request: SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) ask the epoch
loop to stop at its next log point, where the ranks agree, save last.pt mid-epoch and exit;
a second Ctrl-C stops at once. The trainer's exit code then says which signal it was."""

from __future__ import annotations

import signal
from dataclasses import replace

import torch

from train.checkpoint import save_training
from train.logs import say
from train.state import Progress, Run


class Interrupted(Exception):
    """A stop was requested (SIGTERM, SIGINT): the epoch stopped after `steps_done`
    optimizer steps; `totals` are every rank's running totals, (world_size, 3)."""

    def __init__(self, steps_done: int, totals: torch.Tensor, seconds: float) -> None:
        super().__init__("interrupted")
        self.steps_done, self.totals, self.seconds = steps_done, totals, seconds


def install_stop_handlers(run: Run) -> None:
    """SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, agree, save, exit."""

    def handler(signum, _frame):
        if run.stop_requested[0]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        run.stop_requested[0] = signal.Signals(signum).name
        say(
            run.d,
            f"{signal.Signals(signum).name} received: saving a checkpoint at the next log point",
        )

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def exit_code(run: Run) -> int:
    """The exit code of a run stopped by a signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + signal.SIGTERM if run.stop_requested[0] == "SIGTERM" else 130


def stopped(run: Run, epoch: int, stop: Interrupted, progress: Progress) -> int:
    """A signal stopped the epoch: save last.pt at the step reached; the exit code. Every
    rank calls it (the feed's state is gathered)."""
    progress = replace(
        progress,
        epoch=epoch,
        steps_done=stop.steps_done,
        totals=stop.totals,
        seconds=stop.seconds,
        feed=run.feed_state(),
    )
    saved = save_training(run, progress, best=False) if run.d.rank == 0 else True
    where = f"saved {run.out / 'last.pt'}" if saved else "could not save it (see above)"
    say(
        run.d,
        f"stopped by a signal at epoch {epoch + 1}, step {stop.steps_done}; {where}: rerun "
        "the same command to resume",
    )
    return exit_code(run)
