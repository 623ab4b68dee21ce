"""One epoch of training and one pass of evaluation (loss, top-1, top-5)."""
import logging
import sys
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from data.batched_crops import UncroppedBatch
from data.transforms import normalize_batch
from utils import distributed
from utils.performance import Precision, memory_format

log = logging.getLogger("ke")


class Meter:
    """Running sums of loss and correct predictions, kept on the device (no sync per batch).

    It also remembers the first batch whose loss was not finite, again without a sync.
    """

    def __init__(self, num_classes: int):
        self.k = min(5, num_classes)
        self.sums = None  # loss, top-1 hits, top-k hits, samples
        self.first_nonfinite = None
        self.count = 0
        self.batches = 0

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor):
        n = target.shape[0]
        hits = output.topk(self.k, dim=1).indices.eq(target.view(-1, 1))
        # the count is filled in on the device: torch.tensor(n, device=cuda) would be a copy
        # from the host that waits for the device every batch
        batch = torch.stack([loss.float() * n, hits[:, 0].sum().float(), hits.any(dim=1).sum().float(),
                             loss.new_full((), n, dtype=torch.float32)])
        self.sums = batch if self.sums is None else self.sums + batch
        bad = torch.where(torch.isfinite(loss), -1, self.batches)
        self.first_nonfinite = bad if self.first_nonfinite is None else torch.where(
            self.first_nonfinite >= 0, self.first_nonfinite, bad)
        self.count += n
        self.batches += 1

    def nonfinite_batch(self) -> int | None:
        """Index of the first batch with a NaN/inf loss, or None."""
        if self.first_nonfinite is None or int(self.first_nonfinite) < 0:
            return None
        return int(self.first_nonfinite)

    def result(self, device=None) -> dict:
        """Averages over every sample seen, summed across all processes under torchrun
        (every rank must call it)."""
        sums = self.sums if self.sums is not None else torch.zeros(4, device=device)
        loss, correct1, correctk, n = distributed.all_reduce_sum(sums.clone()).tolist()
        if n == 0:
            return {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0}
        return {"loss": loss / n, "top1": 100.0 * correct1 / n, "top5": 100.0 * correctk / n,
                "count": int(n)}


class NonFiniteLoss(Exception):
    def __init__(self, batch: int):
        super().__init__(f"non-finite loss at batch {batch}")
        self.batch = batch


# Under torchrun the ranks agree on a stop (an all-reduce, read on the host) every this many
# batches and after an epoch's last one, never once a batch: a read on the host waits for the
# device, so a read per batch would keep the host from queueing the next batch's work.
STOP_CHECK_EVERY = 50


def stop_check_due(step: int, steps: int) -> bool:
    """Whether the ranks agree on a stop after batch `step` (0-based) of an epoch of `steps`."""
    return (step + 1) % STOP_CHECK_EVERY == 0 or step + 1 == steps


class ProgressLine:
    """The --print_freq line, read from the device without waiting for it: the running sums are
    copied as the line is due, and the line is logged at a later batch, once the copy is done
    (at once on the CPU), or at the latest at the next line or the epoch's end."""

    def __init__(self, description: str, steps: int):
        self.description, self.steps = description, steps
        self.pending = None      # (batch, samples, sums on the host, CUDA event or None)

    def due(self, step: int, meter: "Meter"):
        self.flush(wait=True)
        sums = meter.sums[:2]
        event = None
        if sums.is_cuda:
            sums = sums.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.pending = (step + 1, meter.count, sums, event)

    def flush(self, wait: bool):
        if self.pending is None:
            return
        batch, count, sums, event = self.pending
        if event is not None and not wait and not event.query():
            return
        if event is not None:
            event.synchronize()
        self.pending = None
        loss_sum, correct1 = sums.tolist()
        log.info(f"{self.description} batch {batch}/{self.steps} loss {loss_sum / count:.4f} "
                 f"top1 {100.0 * correct1 / count:.2f}")


def _progress(loader, description: str):
    """tqdm bar on a terminal; the plain iterable otherwise (logs carry the progress)."""
    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty() or distributed.launched_rank() != 0)


def to_device(images, device, layout) -> torch.Tensor:
    """A batch on the training device in `layout`; uint8 pixels (the decoded cache) are
    converted and normalised there, as a whole batch, and an UncroppedBatch is cropped there."""
    if isinstance(images, UncroppedBatch):
        return images.on_device(device, layout)
    images = images.to(device, non_blocking=True, memory_format=layout)
    return normalize_batch(images) if images.dtype == torch.uint8 else images


def train_one_epoch(model, loader, criterion, optimizer, device, num_classes: int,
                    description: str = "train", print_freq: int = 10000,
                    should_stop: Callable[[], bool] | None = None, precision=None,
                    channels_last: bool = False, forward: Callable | None = None,
                    after_step: Callable[[], None] | None = None) -> dict:
    """Train over `loader` once. Stops early, after a whole batch, when `should_stop()` says so
    (then `stopped_after` holds the number of batches done): in a world of one after the batch
    during which it became true; under torchrun, where the ranks must agree on it, at the next
    batch that `stop_check_due` names (at most STOP_CHECK_EVERY batches later, or the epoch's
    last). Raises NonFiniteLoss (checked at the end, so the hot loop never waits for the device)
    if any batch's loss was NaN/inf. The loop reads nothing from the device per batch: the
    --print_freq line is read as ProgressLine says.

    `precision` (utils.performance.Precision) runs the forward pass under autocast and does
    the optimizer step (gradient scaling for fp16); `channels_last` moves the images to the
    device in channels-last memory format (for a model prepared the same way). `forward(model,
    images, target, criterion)` -> (loss, logits, their targets) replaces the plain
    `criterion(model(images), target)` step (CS-KD runs two passes). `after_step()` runs after
    every optimizer step (--ema's update)."""
    model.train()
    precision = precision or Precision("none", device)
    layout = memory_format(channels_last)
    meter = Meter(num_classes)
    start = time.perf_counter()
    stopped_after = None
    steps = len(loader)
    progress = ProgressLine(description, steps)
    agree = distributed.active()
    for step, (images, target) in enumerate(_progress(loader, description)):
        images = to_device(images, device, layout)
        target = target.to(device, non_blocking=True)
        with precision.autocast():
            if forward is None:
                output = model(images)
                loss = criterion(output, target)
            else:
                loss, output, target = forward(model, images, target, criterion)
        precision.step(loss, optimizer)
        if after_step is not None:
            after_step()
        meter.update(loss.detach(), output.detach(), target)
        progress.flush(wait=False)
        if (step + 1) % print_freq == 0:
            progress.due(step, meter)
        if should_stop is not None and (not agree or stop_check_due(step, steps)) \
                and distributed.any_rank(should_stop(), device):
            stopped_after = step + 1
            break
    progress.flush(wait=True)
    bad = meter.nonfinite_batch()
    if distributed.any_rank(bad is not None, device):
        raise NonFiniteLoss(-1 if bad is None else bad)
    result = meter.result(device)
    result["time"] = time.perf_counter() - start
    result["stopped_after"] = stopped_after
    return result


@torch.no_grad()
def evaluate(model, loader, criterion, device, num_classes: int, description: str = "eval",
             precision=None, channels_last: bool = False) -> dict:
    """Loss, top-1 and top-5 of `model` over `loader` (autocast and memory format as in
    train_one_epoch)."""
    model.eval()
    meter = Meter(num_classes)
    precision = precision or Precision("none", device)
    layout = memory_format(channels_last)
    for images, target in _progress(loader, description):
        images = to_device(images, device, layout)
        target = target.to(device, non_blocking=True)
        with precision.autocast():
            output = model(images)
            loss = criterion(output, target)
        meter.update(loss, output, target)
    return meter.result(device)


@torch.no_grad()
def embed(model, loader, device, description: str = "embed", precision=None,
          channels_last: bool = False):
    """(outputs, targets) of `model` over `loader`, concatenated on the CPU in loader order."""
    model.eval()
    precision = precision or Precision("none", device)
    layout = memory_format(channels_last)
    outputs, targets = [], []
    for images, target in _progress(loader, description):
        images = to_device(images, device, layout)
        with precision.autocast():
            outputs.append(model(images).float().cpu())
        targets.append(torch.as_tensor(target))
    if not outputs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(targets)
