"""Preemption: SIGTERM (a SLURM preemption, a Kubernetes eviction) or SIGINT (Ctrl-C) asks a run to stop.

While ``StopSignals`` is active the signals only set a flag; the training loop looks at it after each optimizer
step (and the validation due then), writes a checkpoint in the format of ``train.save_every``'s, and raises
``Preempted``. ``medsum train`` then exits with ``128 + the signal's number`` (143 after SIGTERM, 130 after SIGINT),
the code a shell gives a process the signal killed; the same command resumes from that checkpoint. Under several
processes (``--nproc``) every rank learns of a signal any rank received at the same step (``stop_agreed``), so all
of them checkpoint and stop together. Repeated signals are ignored: the checkpoint being written must not be cut
short; ``kill -9`` still ends a run at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by ``signum`` (the shell's 128 + N): 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


class Preempted(Exception):  # noqa: N818 (an event, not an error: the run stopped as asked and can resume)
    """A stop signal arrived: the run wrote ``checkpoint`` after optimizer step ``step`` and stopped."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step} with a checkpoint in {checkpoint}; the same "
                         f"command resumes from it")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class StopSignals:
    """A context in which SIGTERM and SIGINT set ``received`` (the first signal's number) instead of ending the
    process. Signal handlers belong to the main thread: elsewhere (a worker thread) it changes nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def stop_agreed(accelerator, stop: StopSignals) -> int | None:
    """The signal to stop on, the same on every process: a signal any rank received stops every rank at this step
    (one small all-gather per step, only with several processes)."""
    if accelerator.num_processes == 1:
        return stop.received
    import torch

    mine = torch.tensor([stop.received or 0], device=accelerator.device)
    signals = [int(s) for s in accelerator.gather(mine).tolist() if int(s)]
    return max(signals) if signals else None
