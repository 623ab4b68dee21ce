"""Parameter and operation counts of a model, and the end-of-run generation table.

FLOPs come from PyTorch's own counter (torch.utils.flop_counter.FlopCounterMode), which counts
a multiply-add as two operations (convolutions and matrix products; BatchNorm, ReLU and pooling
are not counted).
"""
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

TABLE_HEADER = ("generation", "dense test top-1", "slim test top-1", "dense GFLOPs",
                "slim GFLOPs", "params")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as masks and BN statistics not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int, device=None) -> int:
    """FLOPs of one forward pass of a 1x3xSxS image (S = image_size), in eval mode.

    `device` is where the input is made; by default the device of the model's parameters.
    The train/eval mode of every submodule is restored afterwards.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    modes = [(m, m.training) for m in model.modules()]
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(image)
    finally:
        for module, training in modes:
            module.training = training
    return int(counter.get_total_flops())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _gflops(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3g}"


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.2f}K"
    return str(int(value))


def format_generation_table(rows: Iterable[dict], metric: str = "test top-1") -> str:
    """A fixed-width text table, one line per generation after a header and a rule.

    Each row: generation, dense_top1, slim_top1, dense_gflops, slim_gflops (the last three may
    be None, shown as "-"), params (dense parameter count) and optionally slim_params (shown as
    "dense / slim").
    """
    lines: list[list[str]] = [[TABLE_HEADER[0], f"dense {metric}", f"slim {metric}",
                               *TABLE_HEADER[3:]]]
    for row in rows:
        params = _count(row.get("params"))
        if row.get("slim_params") is not None:
            params = f"{params} / {_count(row['slim_params'])}"
        lines.append([str(row["generation"]), _percent(row.get("dense_top1")),
                      _percent(row.get("slim_top1")), _gflops(row.get("dense_gflops")),
                      _gflops(row.get("slim_gflops")), params])
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]

    def render(cells):
        return " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) if i < len(cells) - 1
                          else cell for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    header = " | ".join(cell.ljust(w) for cell, w in zip(lines[0], widths, strict=True)).rstrip()
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([header, rule] + [render(cells) for cells in lines[1:]])
