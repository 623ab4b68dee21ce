"""The training loop's hot path: what it waits for on the device, and what it builds again."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, SMALL, run_main
from trainers import generation, knowledge_evolution
from utils import checkpoint


def torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


# --- no sync per training step under torchrun -------------------------------------------------

@pytest.fixture(scope="module")
def sync_counts(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    out = tmp_path_factory.mktemp("sync") / "counts.json"
    result = torchrun(os.path.join(ROOT, "tests", "dist_sync_worker.py"), "120", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_an_epoch_under_torchrun_syncs_far_less_than_once_a_step(sync_counts):
    for rank in sync_counts:
        steps, plain = rank["steps"], rank["plain"]
        assert steps == 120 and plain["stopped_after"] is None and plain["count"] == 480
        # the stop agreed after batches 50, 100 and 120, then the end-of-epoch sums and check
        assert plain["collectives"] / steps <= 0.05, plain["which"]
        assert plain["reads"] / steps <= 0.1, plain["which"]


def test_the_print_freq_line_reads_the_device_only_when_due(sync_counts):
    for rank in sync_counts:
        steps, plain, printed = rank["steps"], rank["plain"], rank["print_every_10"]
        assert printed["collectives"] == plain["collectives"]
        assert plain["reads"] < printed["reads"] <= plain["reads"] + steps // 10, printed["which"]


def test_a_stop_asked_on_one_rank_stops_every_rank_at_the_same_batch(sync_counts):
    for rank in sync_counts:
        stop = rank["stop"]
        assert stop["stopped_after"] == rank["check_every"] == 50
        assert stop["count"] == 50 * 2 * 2          # both ranks' batches of 2, summed


# --- one training loader per run, the previous generation's weights in memory -------------------

THREE_GENERATIONS = ["--num_generations", "3", "--epochs", "1", "--image_size", "32",
                     "--batch_size", "4", "--num_threads", "1", "--lr", "0.05",
                     "--warmup_length", "0", "--test_interval", "1", "--seed", "5",
                     "--lr_policy", "long_cosine_lr", "--forget", "none", "--distill_previous",
                     *SMALL]


@pytest.fixture(scope="module")
def tiny_flowers(tmp_path_factory):
    from tests.datagen import make_lists_dataset
    base = tmp_path_factory.mktemp("flowers")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(5, 2, 2),
                       size=(36, 36))
    return base


def last_weights(folder, generation: int) -> dict:
    return torch.load(folder / f"gen_{generation}" / "checkpoints" / "epoch_0.state",
                      weights_only=True)["state_dict"]


class LoaderPerGeneration(generation.TrainInput):
    """The way before: a new loader (and new workers) for every generation."""

    def for_generation(self, g):
        fresh = object.__new__(LoaderPerGeneration)
        fresh.__dict__.update(self.__dict__)
        generation.TrainInput.__init__(fresh, *self.made_with)
        return generation.TrainInput.for_generation(fresh, g)

    def __init__(self, *args):
        self.made_with = args
        super().__init__(*args)


def test_the_training_loader_and_its_workers_serve_every_generation_and_no_checkpoint_is_reread(
        tiny_flowers, monkeypatch):
    epochs, reads = [], []
    train_one_epoch = generation.train_one_epoch

    def recorded(model, loader, *args, **kwargs):
        result = train_one_epoch(model, loader, *args, **kwargs)
        workers = [w.pid for w in loader._iterator._workers]
        epochs.append((id(loader), tuple(workers), loader.sampler.seed))
        return result

    def load_checkpoint(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return checkpoint.load_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr(generation, "train_one_epoch", recorded)
    for module in (generation, knowledge_evolution):
        monkeypatch.setattr(module, "load_checkpoint", load_checkpoint)
    result = run_main("--data", tiny_flowers / "datasets", "--log-dir", tiny_flowers / "ckpt",
                      "--name", "kept", *THREE_GENERATIONS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(epochs) == 3
    assert len({(loader, workers) for loader, workers, _ in epochs}) == 1   # one loader, one worker
    assert [seed for _, _, seed in epochs] == [5, 6, 7]
    # only the rows' reads of each generation's own last epoch and best weights remain
    assert "epoch_0.state" in reads and all(name in ("epoch_0.state", "model_best.pth")
                                            for name in reads), reads
    assert len(reads) == 6, reads

    monkeypatch.setattr(knowledge_evolution, "TrainInput", LoaderPerGeneration)
    monkeypatch.setattr(knowledge_evolution.PreviousGeneration, "of", lambda trainer: None)
    epochs.clear()
    result = run_main("--data", tiny_flowers / "datasets", "--log-dir", tiny_flowers / "ckpt",
                      "--name", "rebuilt", *THREE_GENERATIONS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len({loader for loader, _, _ in epochs}) == 3
    kept, rebuilt = tiny_flowers / "ckpt" / "kept", tiny_flowers / "ckpt" / "rebuilt"
    for g in range(3):
        a, b = last_weights(kept, g), last_weights(rebuilt, g)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), g
    rows = [[line.split(",")[2:] for line in (folder / f"{folder.name}.csv").read_text().splitlines()]
            for folder in (kept, rebuilt)]        # past the date and the name
    assert len(rows[0]) == 4 and rows[0] == rows[1]


# --- a cached batch built at once in one buffer (data.batches) ---------------------------------

@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """A tiny cached dataset whose training images come in three sizes (padding, crops that
    reach the edges)."""
    from PIL import Image

    from configs.base_config import Config
    from data import loading
    from tests.datagen import make_lists_dataset
    root = tmp_path_factory.mktemp("mixed")
    folder = make_lists_dataset(root, "Flower102Pytorch", num_classes=3, per_class=(5, 2, 2),
                                size=(48, 40), seed=2)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for k, path in enumerate(files[::3]):
        with Image.open(path) as image:
            image.convert("RGB").resize((40 + 9 * k % 27, 33 + 5 * k % 19)).save(path)
    cfg = Config().parse(["--data", str(root), "--set", "Flower102Pytorch", "--image_size", "32",
                          "--cache_images"])
    return loading.get_data(cfg)


def collated_epoch(dataset, keys, batch_size, crops_later):
    """The batches the way before data.batches: item by item, then collated."""
    from torch.utils.data import default_collate

    from data.batched_crops import collate_uncropped
    from data.cache import uint8_items
    dataset = uint8_items(dataset, crops_later)
    collate = collate_uncropped if crops_later else default_collate
    return [collate([dataset[key] for key in keys[i:i + batch_size]])
            for i in range(0, len(keys), batch_size)]


@pytest.mark.parametrize("crops_later", [False, True])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_cached_training_batch_is_built_at_once_with_the_per_sample_draws(mixed_sizes, workers,
                                                                            crops_later):
    from data import loading
    from data.batched_crops import UncroppedBatch
    from data.samplers import EpochShuffleSampler, SeededSamples
    train = mixed_sizes.train
    sampler = EpochShuffleSampler(len(train), seed=4)
    sampler.set_epoch(3)
    loader = loading.make_loader(SeededSamples(train), 4, workers, train=True, sampler=sampler,
                                 crops_later=crops_later)
    built = list(loader)
    expected = collated_epoch(SeededSamples(train), list(sampler), 4, crops_later)
    assert len(built) == len(expected) == 4
    for (images, target), (want, want_target) in zip(built, expected, strict=True):
        assert torch.equal(target, want_target) and target.dtype == torch.int64
        if crops_later:
            assert isinstance(images, UncroppedBatch) and images.size == want.size == 32
            for got, wanted in zip(images[:3], want[:3], strict=True):
                assert got.dtype == wanted.dtype and torch.equal(got, wanted)
            assert images.images.stride() == want.images.stride()
            images = images.images
        else:
            assert images.dtype == torch.uint8 and torch.equal(images, want)
            assert images.stride() == want.stride()
        if not workers:      # one buffer for the whole batch (a worker's: see the ring's test)
            assert images.untyped_storage().data_ptr() == target.untyped_storage().data_ptr()


def test_cached_evaluation_batches_are_built_at_once_too(mixed_sizes):
    from data import loading
    from data.samplers import ShardSampler
    val = mixed_sizes.val
    loader = loading.make_loader(val, 4, 1, train=False, sampler=ShardSampler(len(val)))
    expected = collated_epoch(val, list(range(len(val))), 4, False)
    built = list(loader)
    assert len(built) == len(expected) == 2
    for (images, target), (want, want_target) in zip(built, expected, strict=True):
        assert torch.equal(images, want) and torch.equal(target, want_target)


@pytest.mark.parametrize("crops_later", [False, True])
def test_a_worker_reuses_its_shared_buffer_only_once_the_received_batch_is_released(
        mixed_sizes, monkeypatch, crops_later):
    """In a worker, a batch is one shared buffer; on the CPU it arrives as views of that buffer,
    and the worker writes the buffer again only once every tensor of the received batch (and
    every alias of them) is gone: until then, the next batches go to other buffers."""
    import gc
    import io
    from multiprocessing.reduction import ForkingPickler

    from data import batches
    from data.cache import uint8_items
    from data.samplers import SeededSamples
    monkeypatch.setattr(batches, "get_worker_info", lambda: object())       # as in a worker
    monkeypatch.setattr(batches, "_RING", batches._Ring())
    dataset = uint8_items(SeededSamples(mixed_sizes.train), crops_later)
    collate = batches.collate_with(None)

    def keys(r):
        return [(i, 100 + 7 * i + r) for i in range(4)]

    def send(built) -> bytes:
        sent = io.BytesIO()
        ForkingPickler(sent).dump(collate(built))
        return sent.getvalue()

    def storage(built):
        slot = built.tensors[0].untyped_storage()
        assert slot.is_shared() and all(t.untyped_storage().data_ptr() == slot.data_ptr()
                                        for t in built.tensors)
        return slot.data_ptr()

    first = dataset.__getitems__(keys(0))
    in_flight = send(first)
    second = dataset.__getitems__(keys(1))       # the first is not received yet: another buffer
    assert storage(second) != storage(first)
    images, target = ForkingPickler.loads(in_flight)
    if crops_later:
        images = images.images
    alias = images.detach().to("cpu")            # an alias that is no view of `images`
    del images
    gc.collect()
    third = dataset.__getitems__(keys(2))        # the first batch is still held: another buffer
    assert storage(third) not in (storage(first), storage(second))
    for tensor in third.tensors:
        tensor.zero_()
    want, want_target = collated_epoch(SeededSamples(mixed_sizes.train), keys(0), 4, crops_later)[0]
    assert torch.equal(target, want_target)
    assert torch.equal(alias, want.images if crops_later else want) and alias.sum() > 0
    del alias, target
    gc.collect()
    fourth = dataset.__getitems__(keys(3))       # released: the first's buffer again
    assert storage(fourth) == storage(first)
