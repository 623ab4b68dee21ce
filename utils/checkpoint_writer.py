"""Checkpoints written off the training thread: one background writer, one write at a time.

`snapshot(obj)` copies every tensor of a checkpoint (to CPU memory; on the CPU a copy too, since
training updates the weights and optimizer buffers in place), so the next epoch can train while
`CheckpointWriter` writes the copy. The writes themselves are utils.checkpoint's atomic ones,
so a kill at any moment leaves the previous files intact.

An error of a background write (a full disk: the one-line UserError with the resume command) is
raised in the training thread at the next `submit` or `wait`, as it was raised in the writer.
"""
import threading
from collections.abc import Callable

import torch


def snapshot(obj):
    """`obj` with every tensor replaced by a CPU copy of it; dicts (with a state_dict's
    `_metadata`), lists and tuples rebuilt around them, other values shared."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        copied = type(obj)((key, snapshot(value)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(value) for value in obj)
    return obj


class CheckpointWriter:
    """Runs one write at a time in a background thread: `submit` waits for the previous one."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, write: Callable[[], None]):
        try:
            write()
        except BaseException as error:   # handed to the training thread by wait()
            self._error = error

    def submit(self, write: Callable[[], None]):
        """Start `write()` in the background once the previous write is done."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write,), name="checkpoint-writer",
                                        daemon=True)
        self._thread.start()

    def wait(self, reraise: bool = True):
        """Block until no write is in flight; raise the error of the last one (unless
        `reraise` is False: another error is already on its way)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and reraise:
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
