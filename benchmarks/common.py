"""Helpers shared by the benchmark scripts: repository on sys.path, device, timing, summaries."""
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, clock: str = "wall") -> float:
    """Seconds `fn()` takes, waiting for the device before and after.

    clock "wall": elapsed time. clock "cpu": CPU time of this process (all its threads), which on a
    machine shared with other jobs counts the work done rather than the time spent waiting for a
    core; use it with one torch thread (idle OpenMP threads spin and would be counted too).
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
               f"{torch.get_num_threads()} torch threads"
    return f"{what}; torch {torch.__version__}"


def median(values):
    return statistics.median(values)


def interleave(n: int, rounds: int):
    """Order of the contenders in each round: rotated every round, so neither always runs first
    (right after a warm cache or a quiet spell)."""
    for r in range(rounds):
        yield [(r + k) % n for k in range(n)]
