"""Class-wise self-knowledge distillation (CS-KD, `--cs_kd`): its batches and its loss.

Yun et al., "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020.
Training runs on batches of pairs: an anchor sample and another sample of the same class.

Batches (`PairBatchSampler`) are laid out in HALVES, not interleaved:

    [a_1, a_2, ..., a_h, p_1, p_2, ..., p_h]        h = batch_size // 2

where a_k are anchors and p_k is a partner of a_k: a sample of a_k's class other than a_k,
drawn uniformly. Every epoch the anchors are the whole training set in a random order (each
sample is an anchor exactly once per epoch, so the anchors' cross-entropy sees the data as plain
training does); the partners are extra draws. A sample whose class has no other sample cannot
have a distinct partner: with `singletons="self"` (default) it is paired with itself (the two
copies get independent augmentations, so the KL term still compares two views; the original
code's partner draw can produce this too), with `singletons="skip"` it is never an anchor (nor
a partner), so it is not trained on at all. The sampler logs a warning with the count either way.
Order and partners depend only on (seed, epoch); `set_epoch(epoch, start_batch)` starts an epoch
part-way for a resumed run. With `with_seeds=True` every entry is an (index, augmentation seed)
pair for data.samplers.SeededSamples, so augmentations are reproducible too. Under torchrun
(`num_replicas` > 1) the epoch's batches are dealt out whole: rank r takes batches r,
r + num_replicas, ... (padded with the first batches to a multiple of num_replicas), so every
process gets complete pairs and `batch_size` is the PER-PROCESS batch.

The loss: for a pair (x, x') the network's softened prediction on x is pulled towards its own
(fixed) softened prediction on x':

    p = softmax(z / T),   q = softmax(stopgrad(z') / T)          z, z' logits of x, x'
    L_cls = T^2 * (1/P) * sum_pairs sum_c q_c * (log q_c - log p_c)    = T^2 * mean KL(q || p)

(summed over the classes, averaged over the P pairs, scaled by T^2 so that its gradient keeps its
size as T changes), and the training objective is L = CE(z, y) + weight * L_cls with the
cross-entropy over the ANCHORS only, as in the paper and the original implementation: the
partners serve only as distillation targets (adding their CE would weight some samples twice per
epoch). `cs_kd_forward` runs it as the reference does: anchors with gradients, then partners in
a second pass without.
"""
import logging
import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

SINGLETON_MODES = ("self", "skip")


class PairBatchSampler(Sampler):
    """Batches of `batch_size` indices: `batch_size // 2` anchors, then one partner per anchor.

    targets: the class index of every sample of the dataset (e.g. `dataset.targets`).
    batch_size: even, >= 2; samples per batch of this process (anchors + partners).
    drop_last: drop the epoch's last incomplete batch when there is at least one full one.
    drop_single: (with drop_last=False) drop the last batch only when it holds a single anchor
        and there is at least one full batch: both CS-KD passes would run BatchNorm on one
        image (an error where a feature map is 1x1), as data.loading.make_loader drops a one-image batch.
    """

    def __init__(self, targets: Sequence[int], batch_size: int, seed: int, *,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True,
                 singletons: str = "self", with_seeds: bool = False, drop_single: bool = False):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"CS-KD needs an even batch size >= 2 (anchors + partners), got "
                             f"{batch_size}")
        if singletons not in SINGLETON_MODES:
            raise ValueError(f"singletons must be one of {SINGLETON_MODES}, got {singletons!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.targets = [int(t) for t in targets]
        self.batch_size, self.half = batch_size, batch_size // 2
        self.seed = int(seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.with_seeds = with_seeds
        self.singletons = singletons

        members = defaultdict(list)
        for index, target in enumerate(self.targets):
            members[target].append(index)
        lonely = [m[0] for m in members.values() if len(m) == 1]
        if lonely:
            what = ("paired with itself" if singletons == "self"
                    else "never used (no pair can be formed)")
            log.warning("CS-KD: %d class(es) have a single training sample; those samples are %s",
                        len(lonely), what)
        anchors = [i for i in range(len(self.targets))
                   if singletons == "self" or len(members[self.targets[i]]) > 1]
        if not anchors:
            raise ValueError("CS-KD needs at least one class with two or more training samples")
        self._anchors = torch.tensor(anchors, dtype=torch.long)
        self._members = dict(members)
        self._position = [0] * len(self.targets)        # each sample's slot in its class list
        for group in members.values():
            for position, index in enumerate(group):
                self._position[index] = position
        full, rest = divmod(len(anchors), self.half)
        drop = full > 0 and (drop_last or (drop_single and rest == 1))
        self.batches_per_epoch = full if drop else full + (rest > 0)
        self.epoch_length = math.ceil(self.batches_per_epoch / num_replicas)   # per replica
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        """Use epoch `epoch`'s order, skipping this replica's first `start_batch` batches."""
        if not 0 <= start_batch <= self.epoch_length:
            raise ValueError(f"start_batch must be in [0, {self.epoch_length}], got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def _partners(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniform draw among each anchor's other class members (itself if it has none)."""
        partners = anchors.tolist()
        draws = torch.rand(len(anchors), generator=generator)   # one per anchor, fixed order
        for k, (anchor, u) in enumerate(zip(anchors.tolist(), draws.tolist(), strict=True)):
            group = self._members[self.targets[anchor]]
            others = len(group) - 1
            if others == 0:
                continue                                # singleton: paired with itself
            r = min(int(u * others), others - 1)
            # skip the anchor's own slot: draws at or after it move up by one
            partners[k] = group[r + (r >= self._position[anchor])]
        return torch.tensor(partners, dtype=torch.long)

    def _epoch_batches(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        anchors = self._anchors[torch.randperm(len(self._anchors), generator=generator)]
        anchors = anchors[:self.batches_per_epoch * self.half]
        partners = self._partners(anchors, generator)
        seeds = torch.randint(0, 2**62, (2 * len(anchors),), generator=generator)
        batches = []
        for b in range(self.batches_per_epoch):
            part = slice(b * self.half, (b + 1) * self.half)
            indices = torch.cat([anchors[part], partners[part]]).tolist()
            if self.with_seeds:
                s = torch.cat([seeds[part], seeds[len(anchors):][part]]).tolist()
                indices = list(zip(indices, s, strict=False))   # a short last batch: s is cut
            batches.append(indices)
        padding = self.epoch_length * self.num_replicas - len(batches)
        batches += batches[:padding]
        return batches[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(self._epoch_batches()[self.start_batch:])

    def __len__(self) -> int:
        return self.epoch_length - self.start_batch


DEFAULT_WEIGHT = 3.0
DEFAULT_TEMPERATURE = 4.0


def cs_kd_loss(logits_first: torch.Tensor, logits_second: torch.Tensor,
               temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """T^2 * mean over pairs of KL(softmax(second/T) || softmax(first/T)); `second` is detached.

    logits_first, logits_second: [P, K] logits of the two samples of P same-class pairs.
    """
    if logits_first.shape != logits_second.shape or logits_first.dim() != 2:
        raise ValueError(f"need two [pairs, classes] logit tensors of one shape, got "
                         f"{tuple(logits_first.shape)} and {tuple(logits_second.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p = F.log_softmax(logits_first.float() / t, dim=1)
    log_q = F.log_softmax(logits_second.detach().float() / t, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)          # one KL per pair
    return kl.mean() * (t * t)


def cs_kd_forward(model, images: torch.Tensor, targets: torch.Tensor, criterion,
                  weight: float = DEFAULT_WEIGHT, temperature: float = DEFAULT_TEMPERATURE):
    """One CS-KD training step's forward, as the CS-KD authors' code and the reference run it:
    the anchors (first half of a PairBatchSampler batch) with gradients, then the partners in a
    second pass under `torch.no_grad()`, so BatchNorm sees two half-batches.

    Returns (loss, anchor logits, anchor targets): CE(anchors) + weight * cs_kd_loss(anchors,
    partners), and what the training statistics are computed on.
    """
    n = images.shape[0]
    if n % 2 or n == 0:
        raise ValueError(f"a CS-KD batch holds anchors and partners, so its size must be even; "
                         f"got {n} (use PairBatchSampler)")
    half = n // 2
    logits = model(images[:half])
    with torch.no_grad():
        partner_logits = model(images[half:])
    loss = criterion(logits, targets[:half]) + weight * cs_kd_loss(logits, partner_logits,
                                                                   temperature)
    return loss, logits, targets[:half]
