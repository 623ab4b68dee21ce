"""One epoch of training and one pass of evaluation (loss, top-1, top-5)."""
import logging
import sys
import time

import torch
from tqdm import tqdm

log = logging.getLogger("ke")


class Meter:
    """Running sums of loss and correct predictions, kept on the device (no sync per batch)."""

    def __init__(self, num_classes: int):
        self.k = min(5, num_classes)
        self.sums = None  # loss, top-1 hits, top-k hits
        self.count = 0

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor):
        n = target.shape[0]
        hits = output.topk(self.k, dim=1).indices.eq(target.view(-1, 1))
        batch = torch.stack([loss.float() * n, hits[:, 0].sum().float(), hits.any(dim=1).sum().float()])
        self.sums = batch if self.sums is None else self.sums + batch
        self.count += n

    def result(self) -> dict:
        if self.sums is None:
            return {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0}
        loss, correct1, correctk = self.sums.tolist()
        n = self.count
        return {"loss": loss / n, "top1": 100.0 * correct1 / n, "top5": 100.0 * correctk / n,
                "count": n}


def _progress(loader, description: str):
    """tqdm bar on a terminal; the plain iterable otherwise (logs carry the progress)."""
    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def train_one_epoch(model, loader, criterion, optimizer, device, num_classes: int,
                    description: str = "train", print_freq: int = 10000) -> dict:
    model.train()
    meter = Meter(num_classes)
    start = time.perf_counter()
    for step, (images, target) in enumerate(_progress(loader, description)):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.update(loss.detach(), output.detach(), target)
        if (step + 1) % print_freq == 0:
            r = meter.result()
            log.info(f"{description} batch {step + 1}/{len(loader)} loss {r['loss']:.4f} "
                     f"top1 {r['top1']:.2f}")
    result = meter.result()
    result["time"] = time.perf_counter() - start
    return result


@torch.no_grad()
def evaluate(model, loader, criterion, device, num_classes: int, description: str = "eval") -> dict:
    model.eval()
    meter = Meter(num_classes)
    for images, target in _progress(loader, description):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        output = model(images)
        meter.update(criterion(output, target), output, target)
    return meter.result()
