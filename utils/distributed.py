"""torchrun support: process-group set-up and the few collectives the trainer needs.

Launched by `torchrun`, every process reads RANK, LOCAL_RANK and WORLD_SIZE from the
environment; a plain `python train_KE_cls.py` is a world of one and none of this does anything.
"""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before set-up."""
    return int(os.environ.get("RANK", "0"))


def launcher() -> list:
    """The command that starts this process's world again from any folder: `python -m
    torch.distributed.run` with the same processes per node (and nodes) under torchrun, else
    the interpreter alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or "LOCAL_WORLD_SIZE" not in os.environ:
        return [sys.executable]
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = ["--nnodes", str(size // per_node)] if size > per_node else []
    return [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc_per_node", str(per_node)]


def init_world() -> World:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); a world of one otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(size, launched_rank(), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
    return world


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not active():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def barrier():
    if active():
        dist.barrier()


def shutdown():
    if active():
        dist.destroy_process_group()


def broadcast_buffers(model: torch.nn.Module):
    """Give every rank rank 0's buffers (BatchNorm statistics): DDP syncs them at the start of
    each forward, so after an epoch's last step they differ until synced again."""
    if active():
        for name, buffer in model.named_buffers():
            if not name.endswith("mask"):
                dist.broadcast(buffer, src=0)
