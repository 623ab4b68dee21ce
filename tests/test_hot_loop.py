"""The training loop's hot path: what it waits for on the device, and what it builds again."""
import json
import os
import subprocess
import sys

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
