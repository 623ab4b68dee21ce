"""What a forgetting method's hook sees at a generation boundary (methods/__init__.py)."""
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from data import loading
from data.samplers import SeededSamples
from trainers.engine import to_device
from utils.performance import memory_format


def method_seed(seed: int, generation: int) -> int:
    """A seed of its own for the method's draws at `generation`, apart from the training's."""
    return int(np.random.SeedSequence([seed, generation, 0x6B65]).generate_state(1)[0])


@dataclass
class ForgetContext:
    """Generation `generation` is about to train: `previous` is generation - 1's trained model
    (on the CPU), `fresh` this generation's own draw (the run's --init, seeded by seed +
    generation); `loss` the task's loss; `save(obj, name)` writes a file into the generation's
    folder (rank 0, waited for). Every random draw of a method comes from `generator`; `batches`
    reads training batches in an order of its own, leaving the training's random stream and data
    order as they are."""
    cfg: object
    generation: int
    previous: nn.Module
    fresh: nn.Module
    device: torch.device
    loss: Callable
    train_set: Dataset
    batch_size: int
    save: Callable[[object, str], None] = field(repr=False)
    folder: str = ""
    crops_later: bool = False

    @property
    def num_generations(self) -> int:
        return self.cfg.num_generations

    @cached_property
    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(method_seed(self.cfg.seed, self.generation))

    def batches(self, count: int) -> Iterator:
        """`count` training batches (images, targets) on the device, augmented and prepared as
        the training's, in an order drawn from `generator` (fewer when the split runs out)."""
        order = torch.randperm(len(self.train_set), generator=self.generator)
        seeds = torch.randint(0, 2**62, (len(self.train_set),), generator=self.generator)
        picked = order[:count * self.batch_size].tolist()
        loader = loading.make_loader(SeededSamples(self.train_set), self.batch_size, 0, train=False,
                                     sampler=[(i, int(seeds[i])) for i in picked],
                                     crops_later=self.crops_later)
        layout = memory_format(self.cfg.channels_last)
        with torch.random.fork_rng(devices=[]):     # a loader's iterator draws its base seed
            for images, targets in loader:
                yield to_device(images, self.device, layout), targets.to(self.device)
