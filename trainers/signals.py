"""Stopping a run cleanly: SIGINT/SIGTERM become a flag that the training loop checks after
every batch (under torchrun, where the processes agree on it, every 50 batches and at an
epoch's end: trainers.engine.STOP_CHECK_EVERY); the loop then saves a resumable checkpoint
and raises Interrupted."""
import logging
import os
import signal

log = logging.getLogger("ke")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stop signal arrived; a resumable checkpoint was saved."""

    def __init__(self, signal_number: int, where: str, command: str):
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at {where}; "
                         f"a resumable checkpoint is saved. Resume with:\n  {command}")
        self.signal_number = signal_number


class StopRequest:
    """While entered, a stop signal sets a flag (`stop()` is true) instead of ending the process."""

    def __init__(self):
        self.signal_number = None
        self._previous = {}

    def __enter__(self):
        self._pid = os.getpid()
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self.signal_number is not None:
            return  # stopping: a further signal while the process winds down stops it at once
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signal_number, frame):
        if os.getpid() != self._pid:
            # a forked data-loading worker inherits this handler; a terminal's Ctrl-C reaches
            # it too. The main process decides when to stop and then shuts the workers down.
            return
        if self.signal_number is not None:
            # a second signal: stop at once. Not by raising: the exception could land anywhere,
            # and code such as logging's emit catches and prints it. Checkpoints are written
            # atomically, so the last complete one is intact.
            os.write(2, f"stopped at once by a second {signal.Signals(signal_number).name}; the "
                        f"work since the last saved checkpoint is lost; resume with the same "
                        f"command plus --resume\n".encode())
            os._exit(128 + signal_number)
        self.signal_number = signal_number
        log.warning(f"{signal.Signals(signal_number).name} received: finishing the current batch, "
                    "then saving a checkpoint (signal again to stop at once)")

    def __call__(self) -> bool:
        return self.signal_number is not None
