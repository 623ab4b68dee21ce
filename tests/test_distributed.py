"""torchrun with two CPU processes (gloo): the same results as the README promises."""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch

from configs.base_config import Config
from models import factory
from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL
from trainers.engine import evaluate

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this PyTorch build has no torch.distributed")


def torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


@pytest.mark.parametrize("num_samples", [pytest.param(10, marks=pytest.mark.slow), 11])
def test_evaluation_counts_every_sample_once(tmp_path, num_samples):
    out = tmp_path / "eval.json"
    result = torchrun(os.path.join(ROOT, "tests", "dist_eval_worker.py"), str(num_samples), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["local"] for r in ranks] == [(num_samples + 1) // 2, num_samples // 2]
    expected_top1 = 100.0 * len(range(0, num_samples, 3)) / num_samples
    for r in ranks:
        assert r["count"] == num_samples
        assert abs(r["top1"] - expected_top1) < 1e-9


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(8, 3, 5),
                       size=(36, 36))
    result = torchrun(os.path.join(ROOT, "train_KE_cls.py"), "--data", str(base / "datasets"),
                      "--log-dir", str(base / "ckpt"), "--name", "ddp", "--num_generations", "2",
                      "--epochs", "2", "--image_size", "32", "--batch_size", "8", "--num_threads",
                      "0", "--lr", "0.05", "--warmup_length", "1", "--test_interval", "1",
                      "--seed", "3", *SMALL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, result


def test_csv_has_each_row_once(distributed_run):
    base, _ = distributed_run
    table = pd.read_csv(base / "ckpt" / "ddp" / "ddp.csv")
    assert table["Generation"].tolist() == [0, 0, 1, 1]
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "slim", "0.5", "slim"]


def test_every_rank_ends_with_identical_weights(distributed_run):
    base, _ = distributed_run
    log = (base / "ckpt" / "ddp" / "train_log.txt").read_text()
    digests = re.search(r"final weights sha256 by rank: ([0-9a-f ]+)", log).group(1).split()
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "differ between ranks" not in log


def test_reported_test_accuracy_matches_a_single_process_evaluation(distributed_run):
    base, _ = distributed_run
    from data.loading import get_data, make_loader
    cfg = Config().parse(["--data", str(base / "datasets"), "--image_size", "32",
                          "--batch_size", "4", "--num_threads", "0", *SMALL])
    splits = get_data(cfg)
    cfg.num_cls = splits.num_classes
    model = factory.get_model(cfg)
    ckpt = torch.load(base / "ckpt" / "ddp" / "gen_1" / "checkpoints" / "epoch_1.state",
                      weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    loader = make_loader(splits.test, cfg.batch_size, cfg.num_threads, train=False)
    result = evaluate(model, loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"), splits.num_classes)
    assert result["count"] == 15
    reported = pd.read_csv(base / "ckpt" / "ddp" / "ddp.csv").iloc[2]["Current Tst Top 1"]
    assert round(result["top1"], 2) == reported


@pytest.mark.slow
def test_retrieval_under_torchrun_scores_every_test_image_once(tmp_path):
    """Two ranks embed their shards of the test classes and gather them before recall: the
    reported R@1 is a single process's evaluation of the same checkpoint."""
    import argparse

    from data.loading import get_data, make_loader
    from trainers.tasks import Retrieval
    from utils.distributed import World
    from utils.performance import Precision
    make_lists_dataset(tmp_path / "datasets", "Flower102Pytorch", num_classes=4,
                       per_class=(6, 2, 3), size=(32, 32))
    result = torchrun(os.path.join(ROOT, "train_KE_cls.py"), "--data", str(tmp_path / "datasets"),
                      "--log-dir", str(tmp_path / "ckpt"), "--name", "two", "--task", "retrieval",
                      "--embedding_size", "16", "--num_generations", "2", "--epochs", "1",
                      "--image_size", "32", "--batch_size", "8", "--num_threads", "0", "--lr",
                      "0.001", "--seed", "3", *SMALL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exp = tmp_path / "ckpt" / "two"
    rows = pd.read_csv(exp / "two.csv")
    assert rows["Generation"].tolist() == [0, 0, 1, 1] and "R@32" in rows.columns
    log = (exp / "train_log.txt").read_text()
    digests = re.search(r"final weights sha256 by rank: ([0-9a-f ]+)", log).group(1).split()
    assert len(digests) == 2 and digests[0] == digests[1]

    cfg = argparse.Namespace(**json.loads((exp / "settings.json").read_text()))
    cfg.batch_size = 3                  # another batching: the metrics must not depend on it
    splits = get_data(cfg)
    model = factory.get_model(cfg)
    model.load_state_dict(torch.load(exp / "gen_1" / "checkpoints" / "epoch_0.state",
                                     weights_only=True)["state_dict"])
    device = torch.device("cpu")
    metrics = Retrieval(cfg, splits.num_classes, device, World()).evaluate(
        model, make_loader(splits.test, 3, 0, train=False), None, "test",
        Precision("none", device), False)
    assert metrics["count"] == 2 * (6 + 2 + 3)          # every image of the 2 test classes
    assert round(metrics["R@1"], 2) == rows.iloc[2]["R@1"]
