"""Speed settings that leave the algorithm alone: backends, memory format, compilation, precision.

    configure_backends(device)            once, before the first model is built
    model = prepare_model(model, cfg, device)   device and (--channels_last) memory format
    forward = compiled(model, cfg)        what to call for the forward pass (--compile); save
                                          `model.state_dict()`, never `forward`'s
    precision = Precision(cfg.amp, device)
    with precision.autocast(): loss = criterion(forward(x), y)
    precision.step(loss, optimizer)       zero_grad, backward (scaled for fp16), optimizer step

`--amp bf16` runs the forward pass under bfloat16 autocast (CPU and CUDA); `--amp fp16` under
float16 autocast with a gradient scaler (CUDA only). Weights, gradients and optimizer state stay
float32 either way; only activations and matrix products are in reduced precision.
"""
import contextlib
import logging
import shutil

import torch
import torch.nn as nn

from errors import UserError
from utils import AMP_MODES

log = logging.getLogger("ke")



def configure_backends(device: torch.device):
    """cuDNN picks the fastest convolution algorithms for the (fixed) input shapes on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def prepare_model(model: nn.Module, cfg, device) -> nn.Module:
    """`model` on `device`, in channels-last memory format when `cfg.channels_last` is set.

    Call it before the optimizer is built. Parameters keep their identity and their shapes, so
    state_dicts load and save as usual (a tensor's memory format is not part of its value).
    """
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _has_cpp_compiler() -> bool:
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def compiled(model: nn.Module, cfg) -> nn.Module:
    """The module to call for the forward pass: `torch.compile(model)` with `--compile`, else `model`.

    The compiled wrapper shares its parameters with `model`; its own state_dict has prefixed keys,
    so checkpoints must keep being taken from `model`.
    """
    if not cfg.compile:
        return model
    device = next(model.parameters()).device
    if device.type == "cpu" and not _has_cpp_compiler():
        raise UserError("--compile on the CPU needs a C++ compiler (c++, g++ or clang++ on PATH); "
                        "install one or run without --compile")
    return torch.compile(model)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.preserve_format


class Precision:
    """Autocast and the optimizer step for `--amp {none,bf16,fp16}` on `device`.

    `none` is plain float32: `autocast()` does nothing and `step()` is zero_grad / backward / step.
    """

    def __init__(self, amp: str | None, device):
        amp = amp or "none"
        if amp not in AMP_MODES:
            raise UserError(f"--amp {amp}: choose one of {', '.join(AMP_MODES)}")
        self.amp = amp
        self.device = torch.device(device)
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = None
        kind = self.device.type
        if amp == "fp16":
            if kind != "cuda":
                raise UserError(f"--amp fp16 needs a CUDA device (this run uses the {kind}); "
                                f"use --amp bf16 or --amp none")
            self.scaler = torch.amp.GradScaler("cuda")
        elif amp == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--amp bf16: {torch.cuda.get_device_name(self.device)} has no "
                            f"bfloat16 support; use --amp fp16 or --amp none")

    def autocast(self):
        """Context manager for the forward pass and the loss."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer):
        """zero_grad, backward and optimizer step (through the gradient scaler for fp16, which
        skips the step when a gradient overflowed and adapts its scale)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly (the fp16 loss scale and its counters)."""
        return {"amp": self.amp, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict):
        """Restore `state_dict()`; one saved under another --amp is ignored (the scaler then
        starts afresh, as in a new run)."""
        if self.scaler is None:
            return
        if state["amp"] == self.amp and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self):
        return f"Precision({self.amp!r}, {self.device})"
