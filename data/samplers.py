"""Sampling that a resumed (or distributed) run reproduces exactly.

The training order of an epoch depends only on (seed, epoch), and every sample carries its own
augmentation seed. The random crops and flips a sample gets therefore do not depend on the
number of data-loading workers, on whether they persist across epochs, or on where a run was
stopped and resumed.
"""
import math

import torch
from torch.utils.data import Dataset, Sampler


class EpochShuffleSampler(Sampler):
    """Yields (index, augmentation seed) pairs in an order fixed by (seed, epoch).

    `set_epoch(epoch, start)` picks the epoch's permutation and skips its first `start`
    entries (of this replica), so a run resumed mid-epoch sees the rest in the same order.
    With `num_replicas` > 1 each rank takes every num_replicas-th entry of the permutation,
    padded to a multiple of num_replicas, as DistributedSampler does.
    """

    def __init__(self, num_samples: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch_length = math.ceil(num_samples / num_replicas)  # per replica, whole epoch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        sample_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        padding = self.epoch_length * self.num_replicas - self.num_samples
        if padding:
            order = torch.cat([order, order[:padding]])
        mine = order[self.rank::self.num_replicas][self.start:]
        return iter(zip(mine.tolist(), sample_seeds[mine].tolist(), strict=True))

    def __len__(self) -> int:
        return self.epoch_length - self.start


class SeededSamples(Dataset):
    """Wraps a dataset so that `ds[(index, seed)]` draws its augmentations from `seed`.

    Plain integer indices pass through unchanged.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys):
        """The items `keys` as one batch when the dataset builds batches (data.batches:
        data.cache.CachedImages.build_batch, with the same draws), else as a list."""
        build = getattr(self.dataset, "build_batch", None)
        if build is not None:
            pairs = [key for key in keys if not isinstance(key, int)]
            if not pairs:
                batch = build(list(keys))
            elif len(pairs) == len(keys):
                batch = build([index for index, _ in keys], [seed for _, seed in keys])
            else:
                batch = None
            if batch is not None:
                return batch
        return [self[key] for key in keys]

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        # Only the CPU generator, which the transforms draw from: torch.manual_seed would also
        # seed every accelerator's generators, ~0.3 ms per item, a fifth of a cached item's cost.
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(saved)


class ShardSampler(Sampler):
    """Evaluation order for one of `num_replicas` processes: every `num_replicas`-th index.

    No padding, so the shards together hold each sample exactly once (their sizes differ by at
    most one); metrics summed across processes are therefore exact.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, num_samples, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
