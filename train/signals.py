"""Stopping on request: SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) ask the epoch
loop to stop at its next log point, where the ranks agree, save last.pt mid-epoch and exit;
a second Ctrl-C stops at once."""

from __future__ import annotations

import signal

from train.logs import say
from train.loop import Run


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
