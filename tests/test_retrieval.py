"""--task retrieval: metric learning with Knowledge Evolution (zero-shot split, embedding layer,
metric losses, Recall@K and NMI)."""
import argparse
import itertools
import json
import signal

import pytest
import torch
import torch.nn as nn
from sklearn.metrics import normalized_mutual_info_score

from configs.base_config import Config
from data.lists import DataSplits
from data.zero_shot import zero_shot_splits
from models.embedding import EmbeddingNet
from models.evolution import extract_slim, split_reinitialize
from models.factory import get_model
from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, assert_one_line_error, run_cli
from trainers import signals
from trainers.tasks import Retrieval
from utils.distributed import World
from utils.retrieval_metrics import RECALL_KS, retrieval_metrics
from utils.schedulers import build_scheduler

RET = ["--task", "retrieval", *SMALL, "--image_size", "32", "--batch_size", "8",
       "--num_threads", "0", "--seed", "0", "--lr", "1e-3", "--num_generations", "1",
       "--epochs", "1"]


# ------------------------------------------------------------------------------ metrics

def brute_force_recall(embeddings, labels, k):
    """Recall@k by hand: each query's k most similar other images, by cosine similarity."""
    hits = 0
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        sims = [float(torch.dot(embeddings[i], embeddings[j]) /
                      (embeddings[i].norm() * embeddings[j].norm())) for j in others]
        nearest = [others[j] for j in sorted(range(len(others)), key=lambda j: -sims[j])[:k]]
        hits += any(labels[j] == labels[i] for j in nearest)
    return 100.0 * hits / len(labels)


def test_recall_at_k_equals_brute_force():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(60, 6, generator=generator)
    labels = torch.arange(60) % 5
    embeddings[labels == 0] += 2.0          # one easier class, so the recalls differ
    found = retrieval_metrics(embeddings, labels)
    expected = {k: brute_force_recall(embeddings, labels.tolist(), k) for k in RECALL_KS}
    for k in RECALL_KS:
        assert found[f"R@{k}"] == pytest.approx(expected[k], abs=1e-9), k
    assert len(set(expected.values())) >= 4     # the values are not all 0 / 100
    assert 0 < expected[1] < 100


def test_nmi_equals_scikit_learn_on_fixed_clusters():
    centres = torch.eye(4, 8) * 10
    generator = torch.Generator().manual_seed(0)
    clusters = torch.arange(48) % 4
    embeddings = centres[clusters] + 0.01 * torch.randn(48, 8, generator=generator)
    labels = clusters.clone()
    labels[:6] = (labels[:6] + 1) % 4       # some images labelled against their cluster
    expected = 100.0 * normalized_mutual_info_score(labels.numpy(), clusters.numpy())
    assert 0 < expected < 100
    assert retrieval_metrics(embeddings, labels)["NMI"] == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------ data

class Images(torch.utils.data.Dataset):
    def __init__(self, targets, tag):
        self.targets, self.tag, self.transform = list(targets), tag, None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return (self.tag, i), self.targets[i]


def test_class_split_follows_the_class_order():
    classes = [3, 7, 11, 20, 21, 40, 41]       # in the dataset's order; floor(7/2) = 3 train
    train, test = Images([0, 6, 3, 2, 1, 5], "trn"), Images([4, 0, 2, 5, 6, 3], "tst")
    splits = DataSplits(train=train, val=test, test=test, classes=classes, val_is_test=True)
    cut = zero_shot_splits(splits, "X")
    assert cut.classes == [3, 7, 11] and cut.num_classes == 3
    # every image of the first three classes, relabelled in order; the rest for the search
    assert [(cut.train[i][0], cut.train.targets[i]) for i in range(len(cut.train))] == [
        (("trn", 0), 0), (("trn", 3), 2), (("trn", 4), 1), (("tst", 1), 0), (("tst", 2), 2)]
    assert sorted(cut.test[i][0] for i in range(len(cut.test))) == sorted(
        [("trn", 1), ("trn", 2), ("trn", 5), ("tst", 0), ("tst", 3), ("tst", 4), ("tst", 5)])
    assert sorted(cut.test.targets) == [0, 0, 1, 2, 2, 3, 3]   # classes 20, 21, 40, 41 -> 0..3
    assert cut.val is cut.test and cut.val_is_test


# ------------------------------------------------------------------------------ training pieces

def tiny_embedding_net():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    return EmbeddingNet(backbone, 4)


def retrieval_cfg(*argv):
    cfg = Config().parse(["--task", "retrieval", "--embedding_size", "4", *argv])
    return argparse.Namespace(**{**vars(cfg), "seed": 0})


def test_proxies_and_embedding_layer_get_their_learning_rates():
    cfg = retrieval_cfg("--lr", "0.002")
    task = Retrieval(cfg, 3, torch.device("cpu"), World())
    model, loss = tiny_embedding_net(), task.criterion(0)
    optimizer = task.optimizer(model, loss)
    build_scheduler(optimizer, cfg)              # the schedule keeps the proxies' factor
    groups = [(g["lr"], [p.shape for p in g["params"]]) for g in optimizer.param_groups]
    assert groups == [(0.002, [(6, 12), (6,)]), (0.002, [(4, 6), (4,)]),
                      (pytest.approx(0.2), [(3, 4)])]
    assert optimizer.param_groups[2]["params"][0] is loss.proxies
    assert cfg.optimizer == "adamw" and cfg.lr_policy == "multistep_lr"
    assert (cfg.multistep_lr_adjust, cfg.multistep_lr_gamma) == (10, 0.5)


def test_slim_embedding_network_is_the_dense_one_with_reset_weights_zeroed():
    torch.manual_seed(0)
    cfg = Config().parse(["--task", "retrieval", "-a", "Split_ResNet18", "--embedding_size", "16",
                          "--evolve_mode", "zero"])
    cfg.num_cls = 4
    dense = get_model(cfg)
    for m in dense.modules():               # BatchNorm away from identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 1.5)
    dense.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = dense(x)
    split_reinitialize(cfg, dense)          # the reset hypothesis zeroed
    slim = extract_slim(get_model(cfg, slim=True), dense).eval()
    assert dense.embedding_layer().mask.any(dim=1).all()        # embedding rows: all fit
    assert slim.embedding_layer().out_features == 16
    with torch.no_grad():
        zeroed, slim_out = dense(x), slim(x)
    assert slim_out.shape == (2, 16)
    assert torch.allclose(slim_out.norm(dim=1), torch.ones(2))
    assert float((slim_out - zeroed).abs().max()) < 1e-5
    assert float((slim_out - before).abs().max()) > 1e-2        # the reset part mattered


# ------------------------------------------------------------------------------ runs

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("retrieval")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=4, per_class=(6, 2, 2),
                       size=(32, 32))
    return base / "datasets"


def run(datasets, log_dir, name, *argv):
    return run_cli("--data", datasets, "--log-dir", log_dir, "--name", name, *RET, *argv)


def parameters(path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt["state_dict"]


def test_warm_freezes_the_backbone_for_exactly_e_epochs(datasets, tmp_path):
    result = run(datasets, tmp_path, "warm", "--warm", "2", "--epochs", "3", "--save_every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "warm" / "gen_0" / "checkpoints"
    states = [parameters(folder / "initial.state")] + [
        parameters(folder / f"epoch_{e}.state") for e in range(3)]
    model = get_model(argparse.Namespace(**json.loads((tmp_path / "warm" / "settings.json")
                                                      .read_text())))
    names = [n for n, _ in model.named_parameters()]
    head = {f"network.{n}" for n, m in model.network.named_modules()
            if m is model.embedding_layer() for n in (f"{n}.weight", f"{n}.bias")}
    backbone = [n for n in names if n not in head]
    assert len(head) == 2 and len(backbone) > 50

    def changed(a, b, keys):
        return [k for k in keys if not torch.equal(states[a][k], states[b][k])]
    assert changed(0, 1, backbone) == [] and changed(1, 2, backbone) == []     # epochs 0, 1
    assert sorted(changed(0, 1, head)) == sorted(head)                        # head trains
    assert len(changed(2, 3, backbone)) == len(backbone)                      # epoch 2: all


@pytest.mark.slow      # three runs; the classification resume is tests/test_resume.py's
def test_a_stopped_retrieval_run_resumes_exactly(datasets, tmp_path, monkeypatch):
    argv = ["--num_generations", "1", "--epochs", "2", "--samples_per_class", "2",
            "--batch_size", "4"]       # 2 training classes of 10 images: 5 batches an epoch
    reference = run(datasets, tmp_path, "reference", *argv)
    assert reference.returncode == 0, reference.stderr[-3000:]
    r1 = (tmp_path / "reference" / "reference.csv").read_text().splitlines()[1].split(",")[-6]
    assert f"| 0 | {r1} ± 0.00 |" in reference.stdout            # utils.report's R@1 table
    calls = itertools.count()

    def stop_in_epoch_1(self):      # generation 0, epoch 1, after its 3rd batch
        if next(calls) == 7:
            self.signal_number = signal.SIGTERM
        return self.signal_number is not None
    with monkeypatch.context() as patch:
        patch.setattr(signals.StopRequest, "__call__", stop_in_epoch_1)
        stopped = run(datasets, tmp_path, "stopped", *argv)
    assert stopped.returncode != 0 and "resumable checkpoint" in stopped.stderr
    assert not (tmp_path / "stopped" / "stopped.csv").exists()
    resumed = run_cli("--log-dir", tmp_path, "--name", "stopped", "--data", datasets, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at generation 0 (1 of 1), epoch 1 (2 of 2), after batch 3" in resumed.stdout
    assert "at generation 0 (1 of 1), epoch 1 (2 of 2), after batch 3;" in stopped.stderr
    for g in (0,):
        ckpt = f"gen_{g}/checkpoints/epoch_1.state"
        a = torch.load(tmp_path / "reference" / ckpt, weights_only=True)
        b = torch.load(tmp_path / "stopped" / ckpt, weights_only=True)
        assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k],
                                                               b["state_dict"][k])] == []
        assert torch.equal(a["criterion"]["proxies"], b["criterion"]["proxies"])
    rows = [(tmp_path / n / f"{n}.csv").read_text().splitlines() for n in ("reference", "stopped")]
    assert rows[0][0].endswith(",NMI,R@1,R@2,R@4,R@8,R@16,R@32")
    assert len(rows[0]) == 2                     # header and the dense row (one generation: no slim)
    assert [r.split(",", 2)[2] for r in rows[0][1:]] == [r.split(",", 2)[2] for r in rows[1][1:]]


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("argv, needles", [
    (["--cs_kd"], ["--cs_kd", "--task retrieval"]),
    (["--samples_per_class", "3"], ["--samples_per_class", "divide", "--batch_size 8"]),
    (["--task", "classification", "--warm", "2"], ["--warm", "needs --task retrieval"]),
    (["--set", "CUB200_RET", "--task", "classification"], ["--task", "retrieval setup"]),
])
def test_bad_flag_combinations(argv, needles, tmp_path):
    result = run_cli("--data", tmp_path, "--log-dir", tmp_path / "ckpt", *RET, *argv)
    assert_one_line_error(result, needles)
    assert not (tmp_path / "ckpt").exists()


def test_too_few_classes_and_too_small_classes(datasets, tmp_path):
    small = tmp_path / "three"
    make_lists_dataset(small, "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2),
                       size=(32, 32))
    result = run(small, tmp_path / "ckpt", "three")
    assert_one_line_error(result, ["at least 4 classes", "has 3"])
    result = run(datasets, tmp_path / "ckpt", "m", "--samples_per_class", "4",
                 "--batch_size", "8", "--num_threads", "0")
    assert result.returncode == 0, result.stderr[-2000:]       # 10 images a class: fine
    result = run(datasets, tmp_path / "ckpt", "m12", "--samples_per_class", "12",
                 "--batch_size", "24")
    assert_one_line_error(result, ["--samples_per_class 12", "only 10 image(s)"])
    assert not (tmp_path / "ckpt" / "m12").exists()


def test_checkpoint_of_the_other_task_is_refused_by_evaluate(datasets, tmp_path):
    result = run(datasets, tmp_path, "ret")
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = tmp_path / "ret" / "gen_0" / "checkpoints" / "epoch_0.state"
    assert_one_line_error(run_cli("--evaluate", ckpt, "--data", datasets),
                          ["embedding model", "--task retrieval"])
    evaluated = run_cli("--evaluate", ckpt, "--data", datasets, "--task", "retrieval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "Recall@1" in evaluated.stdout and "NMI" in evaluated.stdout
    classification = run_cli("--data", datasets, "--log-dir", tmp_path, "--name", "cls",
                             "--num_generations", "1", "--epochs", "1", *SMALL, "--image_size",
                             "32", "--batch_size", "8", "--num_threads", "0", "--seed", "0")
    assert classification.returncode == 0, classification.stderr[-2000:]
    assert_one_line_error(run_cli("--evaluate", tmp_path / "cls" / "gen_0" / "checkpoints" /
                                  "epoch_0.state", "--data", datasets, "--task", "retrieval"),
                          ["a classifier", "--task classification"])


def test_embeddings_of_every_rank_are_put_back_in_dataset_order(monkeypatch):
    """Under torchrun each rank embeds its ShardSampler shard (items r, r+W, ...); the gathered
    embeddings must be the whole split in dataset order before recall is computed."""
    from data.samplers import ShardSampler
    from trainers.tasks import gather_in_order
    n, size, dim = 11, 3, 4
    embeddings, labels = torch.arange(n * dim, dtype=torch.float32).view(n, dim), torch.arange(n)
    shards = [(embeddings[list(ShardSampler(n, size, r))], labels[list(ShardSampler(n, size, r))])
              for r in range(size)]

    def all_gather_object(out, mine):
        out[:] = shards
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    gathered, gathered_labels = gather_in_order(*shards[1], World(size, 1, 1))
    assert torch.equal(gathered, embeddings) and torch.equal(gathered_labels, labels)


@pytest.mark.slow      # DNR's saliency and redraw: tests/test_methods.py's quick ones
def test_dnr_scores_weights_through_the_metric_loss(datasets, tmp_path):
    result = run(datasets, tmp_path, "dnr", "--num_generations", "2", "--forget", "dnr",
                 "--dnr_sparsity", "0.5")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    exp = tmp_path / "dnr"
    assert (exp / "gen_1" / "dnr_kept.pt").is_file()
    log = (exp / "train_log.txt").read_text()
    assert "generation 1 (2 of 2): dnr kept" in log and "(50.0%)" in log
    kinds = [row.split(",")[2] for row in (exp / "dnr.csv").read_text().splitlines()[1:]]
    assert kinds.count("kept") == 1
