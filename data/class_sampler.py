"""Batches of M images per class (--samples_per_class) that a resumed run reproduces exactly.

pytorch-metric-learning's MPerClassSampler draws from numpy's global generator. Here each epoch
runs it under a numpy state seeded by (seed, epoch) and restores the global state afterwards,
so the epoch's order depends on nothing else, and a run resumed mid-epoch skips the batches it
had done. Every index carries its own augmentation seed (data.samplers.SeededSamples).
"""
import math

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import Sampler


class SeededMPerClassSampler(Sampler):
    """(index, augmentation seed) pairs: ceil(N / batch) batches of `batch_size` images, M of
    each of batch_size / M classes, in an order fixed by (seed, epoch).

    Under torchrun each of the `num_replicas` processes takes its contiguous share of every
    batch (batch_size / num_replicas images: whole classes when M divides it).
    """

    def __init__(self, labels, m: int, batch_size: int, seed: int, num_replicas: int = 1,
                 rank: int = 0):
        self.batches = max(1, math.ceil(len(labels) / batch_size))
        self.sampler = MPerClassSampler(list(labels), m, batch_size=batch_size,
                                        length_before_new_iter=self.batches * batch_size)
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.share = batch_size // num_replicas
        self.epoch_length = self.batches * self.share       # per replica, whole epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def _epoch_order(self) -> list:
        # the sampler shuffles its class list in place: start every epoch from the same list
        self.sampler.labels = sorted(self.sampler.labels_to_indices)
        saved = np.random.get_state()
        np.random.seed((self.seed * 100_003 + self.epoch) % 2**32)
        try:
            return list(iter(self.sampler))
        finally:
            np.random.set_state(saved)

    def __iter__(self):
        order = torch.tensor(self._epoch_order()).view(self.batches, self.batch_size)
        mine = order[:, self.rank * self.share:(self.rank + 1) * self.share].reshape(-1)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        sample_seeds = torch.randint(0, 2**62, (len(order.view(-1)),), generator=generator)
        seeds = sample_seeds.view(self.batches, self.batch_size)[
            :, self.rank * self.share:(self.rank + 1) * self.share].reshape(-1)
        return iter(zip(mine[self.start:].tolist(), seeds[self.start:].tolist(), strict=True))

    def __len__(self) -> int:
        return self.epoch_length - self.start
