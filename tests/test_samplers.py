"""The resumable training order and per-sample augmentation seeds."""
import torch
from torch.utils.data import DataLoader, Dataset

from data.samplers import EpochShuffleSampler, SeededSamples


def entries(sampler):
    return list(iter(sampler))


def test_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert entries(a) == entries(b)
    assert sorted(i for i, _ in entries(a)) == list(range(50))
    b.set_epoch(5)
    assert [i for i, _ in entries(a)] != [i for i, _ in entries(b)]


def test_starting_part_way_continues_the_same_order():
    sampler = EpochShuffleSampler(23, seed=1)
    sampler.set_epoch(2)
    whole = entries(sampler)
    sampler.set_epoch(2, start=9)
    assert entries(sampler) == whole[9:]
    assert len(sampler) == 14 and sampler.epoch_length == 23


def test_replicas_cover_every_sample_once_padded():
    shards = []
    for rank in range(3):
        sampler = EpochShuffleSampler(10, seed=0, num_replicas=3, rank=rank)
        sampler.set_epoch(1)
        shards.append([i for i, _ in entries(sampler)])
        assert len(sampler) == 4
    merged = [i for shard in shards for i in shard]
    assert len(merged) == 12 and set(merged) == set(range(10))


class RandomValue(Dataset):
    """Each item is a draw from torch's RNG: it shows which seed the item was made with."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return index, torch.rand(()).item()


def test_augmentation_draws_do_not_depend_on_workers():
    sampler = EpochShuffleSampler(12, seed=5)
    sampler.set_epoch(0)
    seeds = dict(entries(sampler))
    results = []
    for workers in (0, 2):
        loader = DataLoader(SeededSamples(RandomValue()), batch_size=4, sampler=sampler,
                            num_workers=workers)
        results.append({int(i): float(v) for idx, val in loader for i, v in zip(idx, val, strict=True)})
    assert results[0] == results[1]
    for index, seed in seeds.items():
        expected = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        assert abs(results[0][index] - expected) < 1e-7


def test_seeded_samples_leave_the_callers_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SeededSamples(RandomValue())[(1, 123)]
    assert torch.equal(torch.rand(3), expected)
    assert SeededSamples(RandomValue())[3][0] == 3
