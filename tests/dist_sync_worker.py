"""Run under torchrun by tests/test_hot_loop.py: train_one_epoch on 2 CPU processes (gloo) with
every collective of torch.distributed and every host read of a tensor value counted."""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from data.samplers import EpochShuffleSampler
from trainers import engine
from utils import distributed

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "barrier", "reduce",
               "broadcast_object_list", "gather", "scatter", "reduce_scatter", "all_to_all")
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class Counter:
    """Counts calls of the wrapped functions while `on`."""

    def __init__(self):
        self.on, self.counts = False, {}

    def wrap(self, owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if self.on:
                self.counts[name] = self.counts.get(name, 0) + 1
            return original(*args, **kwargs)
        setattr(owner, name, counted)

    def total(self) -> int:
        return sum(self.counts.values())


def main(steps: int, out_path: str):
    world = distributed.init_world()
    torch.manual_seed(0)
    batch = 2
    n = steps * batch * world.size
    images = torch.randn(n, 3, 8, 8)
    targets = torch.arange(n) % 3
    sampler = EpochShuffleSampler(n, seed=0, num_replicas=world.size, rank=world.rank)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch,
                        sampler=[i for i, _ in sampler])
    model = DistributedDataParallel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                  nn.Linear(4, 3)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    collectives, reads = Counter(), Counter()
    for name in COLLECTIVES:
        collectives.wrap(dist, name)
    for name in READS:
        reads.wrap(torch.Tensor, name)
    report = {"steps": len(loader), "check_every": getattr(engine, "STOP_CHECK_EVERY", None)}

    def epoch(key, print_freq=10000, should_stop=None):
        collectives.counts, reads.counts = {}, {}
        collectives.on = reads.on = True
        result = engine.train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer,
                                        torch.device("cpu"), 3, print_freq=print_freq,
                                        should_stop=should_stop or (lambda: False))
        collectives.on = reads.on = False
        report[key] = {"collectives": collectives.total(), "reads": reads.total(),
                       "which": {**collectives.counts, **reads.counts},
                       "stopped_after": result["stopped_after"], "count": result["count"]}

    epoch("plain")
    epoch("print_every_10", print_freq=10)
    epoch("stop", should_stop=lambda: world.rank == 1)   # only rank 1 is asked to stop
    gathered = [None] * world.size
    dist.all_gather_object(gathered, report)
    if world.is_main:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    # rank 1 leaving the group while rank 0 still writes can abort it at exit (gloo's threads)
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
