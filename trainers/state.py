"""The resumable state of a generation's training, and the random generators' part of it.

`TrainingState` is the one schema of `resume.state` / `epoch_<e>.state` / `model_best.pth`:
written by `to_checkpoint` and read by `from_checkpoint`, nowhere else. The file keeps the
reference's keys (`epoch`, `arch`, `state_dict`, `optimizer`, `best_acc1`, ...), and everything
is a tensor or a plain value, so that it loads with `torch.load(weights_only=True)`.
"""
import random
from dataclasses import dataclass, field

import numpy as np
import torch

NO_METRICS = {"top1": 0.0, "top5": 0.0}


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator's state as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """Where a generation's training stands after `epoch` (after its first `batch` batches
    when it was stopped part-way; `partial_epoch` then holds those batches' train statistics)."""
    generation: int
    epoch: int
    batch: int | None
    arch: str
    state_dict: dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: dict
    config: dict
    classes: list
    best: dict = field(default_factory=lambda: dict(NO_METRICS))        # validation top-1/5
    current: dict = field(default_factory=lambda: dict(NO_METRICS))
    best_train: dict = field(default_factory=lambda: dict(NO_METRICS))
    best_epoch: int | None = None
    partial_epoch: dict | None = None
    criterion: dict = field(default_factory=dict)   # the loss's parameters (retrieval proxies)
    ema: dict | None = None     # --ema: the moving average's state (utils.ema)

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1 if self.batch is None else self.epoch

    @property
    def next_batch(self) -> int:
        return 0 if self.batch is None else self.batch

    def trained(self, epochs: int) -> bool:
        """Whether every epoch of the generation is done."""
        return self.batch is None and self.epoch == epochs - 1

    def to_checkpoint(self) -> dict:
        extra = {"criterion": self.criterion} if self.criterion else {}
        if self.ema is not None:
            extra["ema"] = self.ema
        return {**extra, "epoch": self.epoch, "batch": self.batch, "generation": self.generation,
                "arch": self.arch, "state_dict": self.state_dict, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.scaler,
                "best_acc1": self.best["top1"], "best_acc5": self.best["top5"],
                "curr_acc1": self.current["top1"], "curr_acc5": self.current["top5"],
                "best_train": dict(self.best_train), "best_epoch": self.best_epoch,
                "rng": self.rng, "config": self.config, "partial_epoch": self.partial_epoch,
                "classes": self.classes}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "TrainingState":
        return cls(generation=ckpt["generation"], epoch=ckpt["epoch"], batch=ckpt["batch"],
                   arch=ckpt["arch"], state_dict=ckpt["state_dict"], optimizer=ckpt["optimizer"],
                   scheduler=ckpt["scheduler"], scaler=ckpt["scaler"], rng=ckpt["rng"],
                   config=ckpt["config"], classes=ckpt["classes"],
                   best={"top1": ckpt["best_acc1"], "top5": ckpt["best_acc5"]},
                   current={"top1": ckpt["curr_acc1"], "top5": ckpt["curr_acc5"]},
                   best_train=dict(ckpt["best_train"]), best_epoch=ckpt["best_epoch"],
                   partial_epoch=ckpt["partial_epoch"], criterion=ckpt.get("criterion") or {},
                   ema=ckpt.get("ema"))
