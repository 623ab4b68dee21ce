"""CS-KD (utils/cs_kd.py): the pair batch sampler and the loss."""
import logging
import math
from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from data.loading import make_pair_loader
from data.samplers import SeededSamples
from utils.cs_kd import PairBatchSampler, cs_kd_forward, cs_kd_loss

# 4 classes of sizes 5, 3, 2, 6 in a shuffled order
TARGETS = [0, 1, 3, 0, 2, 3, 3, 0, 1, 0, 3, 2, 3, 0, 1, 3]


def batches(sampler, epoch=0, start=0):
    sampler.set_epoch(epoch, start)
    return list(iter(sampler))


def check_pairs(batch, targets, batch_size):
    assert len(batch) == batch_size
    half = batch_size // 2
    for a, p in zip(batch[:half], batch[half:], strict=True):
        assert targets[a] == targets[p], "partner of another class"
        assert a != p, "partner is the anchor itself"


# ---- sampler ------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [2, 4, 6])
def test_every_batch_is_same_class_pairs_of_distinct_samples(batch_size):
    sampler = PairBatchSampler(TARGETS, batch_size, seed=7)
    for epoch in range(4):
        got = batches(sampler, epoch)
        half = batch_size // 2
        assert len(got) == len(sampler) == len(TARGETS) // half      # last partial batch dropped
        for batch in got:
            check_pairs(batch, TARGETS, batch_size)
        anchors = [i for b in got for i in b[:half]]
        assert len(set(anchors)) == len(anchors)                     # each anchor at most once
        if len(TARGETS) % half == 0:
            assert sorted(anchors) == list(range(len(TARGETS)))      # ... and all of them


def test_partners_are_uniform_over_the_other_class_members():
    targets = [0, 0, 0, 0, 1, 1]
    sampler = PairBatchSampler(targets, 12, seed=0, drop_last=False)
    counts = Counter()
    for epoch in range(300):
        (batch,) = batches(sampler, epoch)
        counts.update((a, p) for a, p in zip(batch[:6], batch[6:], strict=True) if a == 0)
    assert set(counts) == {(0, 1), (0, 2), (0, 3)}
    assert all(80 <= c <= 120 for c in counts.values()), counts


def test_last_batch_kept_without_drop_last():
    sampler = PairBatchSampler(TARGETS, 6, seed=1, drop_last=False)    # 16 anchors, 3 per batch
    got = batches(sampler)
    assert len(got) == 6 and [len(b) for b in got] == [6] * 5 + [2]
    check_pairs(got[-1], TARGETS, 2)
    assert sorted(i for b in got for i in b[:len(b) // 2]) == list(range(16))


def test_order_is_fixed_by_seed_and_epoch():
    a, b = PairBatchSampler(TARGETS, 4, seed=3), PairBatchSampler(TARGETS, 4, seed=3)
    assert batches(a, 5) == batches(b, 5)
    assert batches(a, 5) != batches(a, 6)
    assert batches(a, 5) != batches(PairBatchSampler(TARGETS, 4, seed=4), 5)
    whole = batches(a, 2)
    assert batches(a, 2, start=3) == whole[3:] and len(a) == len(whole) - 3


def test_singleton_classes(caplog):
    targets = [0, 1, 0, 2, 0]                  # classes 1 and 2 have one sample each
    with caplog.at_level(logging.WARNING):
        sampler = PairBatchSampler(targets, 2, seed=0)
    assert any("2 class(es) have a single" in r.getMessage() for r in caplog.records)
    got = batches(sampler)
    assert sorted(b[0] for b in got) == [0, 1, 2, 3, 4]
    for a, p in got:
        assert targets[a] == targets[p] and ((a == p) == (a in (1, 3)))
    skip = PairBatchSampler(targets, 2, seed=0, singletons="skip")
    got = batches(skip)
    assert sorted(b[0] for b in got) == [0, 2, 4] and all(a != p for a, p in got)
    with pytest.raises(ValueError, match="two or more"):
        PairBatchSampler([0, 1, 2], 2, seed=0, singletons="skip")


def test_bad_batch_size():
    for bad in (0, 1, 5):
        with pytest.raises(ValueError, match="even batch size"):
            PairBatchSampler(TARGETS, bad, seed=0)


def test_replicas_share_out_whole_batches():
    whole = batches(PairBatchSampler(TARGETS, 4, seed=2))             # 8 batches
    shards = [batches(PairBatchSampler(TARGETS, 4, seed=2, num_replicas=3, rank=r))
              for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]                      # 8 padded to 9
    dealt = [shards[i % 3][i // 3] for i in range(9)]
    assert dealt == whole + whole[:1]


class SeedProbe(Dataset):
    """Item = (index, a draw from torch's RNG): shows the augmentation seed it was made with."""

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return index, torch.rand(()).item()


def test_loader_with_seeds_gives_pairs_and_independent_augmentations():
    targets = [0, 1, 0, 1, 2]                  # 2 is a singleton: paired with itself
    sampler = PairBatchSampler(targets, 2, seed=9, with_seeds=True, drop_last=False)
    sampler.set_epoch(1)
    loader = make_pair_loader(SeededSamples(SeedProbe(targets)), sampler)
    seen = 0
    for (index, draw), entries in zip(loader, sampler, strict=True):
        (a, seed_a), (p, seed_p) = entries
        assert index.tolist() == [a, p] and targets[a] == targets[p]
        for value, seed in zip(draw.tolist(), (seed_a, seed_p), strict=True):
            expected = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
            assert value == pytest.approx(expected)
        assert seed_a != seed_p
        seen += 1
    assert seen == len(targets)


# ---- loss ---------------------------------------------------------------------------------------

FIRST = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
SECOND = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def hand_kd(first, second, t):
    total = 0.0
    for z, zp in zip(first, second, strict=True):
        p, q = softmax(z, t), softmax(zp, t)
        total += sum(qc * (math.log(qc) - math.log(pc)) for pc, qc in zip(p, q, strict=True))
    return total / len(first) * t * t


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_loss_equals_hand_computation(t):
    got = cs_kd_loss(torch.tensor(FIRST), torch.tensor(SECOND), temperature=t)
    assert got.item() == pytest.approx(hand_kd(FIRST, SECOND, t), rel=1e-5)
    assert hand_kd(FIRST, SECOND, t) > 1e-3
    same = cs_kd_loss(torch.tensor(FIRST), torch.tensor(FIRST), temperature=t)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


class Recorder(nn.Module):
    """Returns its input times a learnable 1, recording each call's batch and grad mode."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), torch.is_grad_enabled()))
        return x * self.scale


def test_forward_is_anchor_ce_plus_weighted_kd():
    images = torch.tensor(FIRST + SECOND)                   # the "logits" the model returns
    targets = torch.tensor([1, 2, 1, 2])
    loss, logits, anchor_targets = cs_kd_forward(Recorder(), images, targets,
                                                 nn.CrossEntropyLoss(), weight=3.0,
                                                 temperature=4.0)
    ce = sum(-math.log(softmax(z, 1.0)[y]) for z, y in zip(FIRST, [1, 2], strict=True)) / 2   # anchors only
    assert loss.item() == pytest.approx(ce + 3.0 * hand_kd(FIRST, SECOND, 4.0), rel=1e-5)
    torch.testing.assert_close(logits, torch.tensor(FIRST))
    assert anchor_targets.tolist() == [1, 2]
    with pytest.raises(ValueError, match="even"):
        cs_kd_forward(Recorder(), images[:3], targets[:3], nn.CrossEntropyLoss())


def test_anchors_and_partners_are_two_passes_the_partners_without_gradient():
    model = Recorder()
    images = torch.tensor(FIRST + SECOND, requires_grad=True)
    loss, _, _ = cs_kd_forward(model, images, torch.tensor([1, 2, 1, 2]), nn.CrossEntropyLoss())
    assert [(x.tolist(), grad) for x, grad in model.calls] == [(FIRST, True), (SECOND, False)]
    loss.backward()
    assert torch.all(images.grad[2:] == 0)
    assert torch.all(images.grad[:2].abs().sum(1) > 0)
    assert model.scale.grad is not None and model.scale.grad.abs().item() > 0
    # the KD term alone moves the anchors towards the partners' distribution
    first = torch.tensor(FIRST, requires_grad=True)
    second = torch.tensor(SECOND, requires_grad=True)
    cs_kd_loss(first, second).backward()
    assert second.grad is None or torch.all(second.grad == 0)
    p, q = torch.softmax(first.detach() / 4, 1), torch.softmax(second.detach() / 4, 1)
    torch.testing.assert_close(first.grad, 4.0 * (p - q) / 2)     # d/dz of T^2 * mean KL
